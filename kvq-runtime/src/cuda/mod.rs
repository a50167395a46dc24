//! Loads the PTX bundles that `kvq compile --target sm_XX` writes and launches their kernels with
//! the CUDA driver API (through cudarc, loaded dynamically).
//!
//! This module never links LLVM or CUDA at build time (cudarc opens libcuda.so when it runs),
//! so the `kvq-gpu-check` binary can be copied to a bare GPU machine. Everything it knows about a kernel
//! comes from the bundle's `manifest.json`:
//!
//! - [`Bundle::load`] reads the manifest and every PTX file it names;
//! - [`KernelSignature`] is a kernel's parameter list, and [`check`] validates a launch's
//!   arguments against it (count, kind, element type, access) before the one `unsafe` launch;
//! - each buffer parameter states its length and each kernel its grid over the scalar
//!   parameters (`kvq_ir::ir::Len`, written by the lowering): the launch checks every length
//!   and launches the stated grid;
//! - [`CudaRuntime`] owns the context and stream, uploads and downloads buffers and launches.
//!
//! Without a driver, [`CudaRuntime::new`] returns [`CudaError::NoDriver`]; it never panics.

mod error;
mod manifest;
mod named;
mod runtime;
mod signature;

pub use error::CudaError;
pub use manifest::{Bundle, Entry, KernelEntry, Manifest, PtxasResources, Role};
pub use named::{NamedArgs, NamedBuffer};
pub use runtime::{CudaRuntime, DeviceBuffer, DeviceElem, Kernel, LaunchArg};
pub use signature::{check, Access, ArgDesc, Elem, KernelSignature, Mismatch, ParamSpec};
