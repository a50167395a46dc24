//! The crate's one error type.

use std::path::PathBuf;

use thiserror::Error;

use crate::cuda::signature::Mismatch;

/// Everything that can go wrong loading a bundle or launching one of its kernels.
#[derive(Debug, Error)]
pub enum CudaError {
    /// `libcuda.so` could not be opened: this is not a GPU machine.
    #[error(
        "no CUDA driver found (libcuda.so); kvq-runtime's CUDA backend needs an NVIDIA GPU machine"
    )]
    NoDriver,
    /// A bundle file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `manifest.json` is not valid JSON or not in the format `kvq compile` writes.
    #[error("corrupt manifest {path}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest describes kernels that are not PTX (e.g. `--emit llvm` or `--target host`).
    #[error("bundle {path} holds {emit} for target {target}, not PTX")]
    NotPtx {
        /// The manifest file.
        path: PathBuf,
        /// The manifest's `emit`.
        emit: String,
        /// The manifest's `target`.
        target: String,
    },
    /// Two kernels of a bundle share a name.
    #[error("bundle {path} names kernel {kernel} twice")]
    DuplicateKernel {
        /// The manifest file.
        path: PathBuf,
        /// The repeated name.
        kernel: String,
    },
    /// No kernel of that name in the bundle.
    #[error("kernel {kernel} is not in bundle {dir}")]
    UnknownKernel {
        /// The requested name.
        kernel: String,
        /// The bundle directory.
        dir: PathBuf,
    },
    /// A launch passes the wrong number of arguments.
    #[error("kernel {kernel}: {got} arguments given, its signature has {expected}")]
    ArgCount {
        /// The kernel.
        kernel: String,
        /// Parameters in the signature.
        expected: usize,
        /// Arguments given.
        got: usize,
    },
    /// One argument does not fit its parameter.
    #[error("kernel {kernel}: argument {index} ({param}): {mismatch}")]
    Arg {
        /// The kernel.
        kernel: String,
        /// Position of the argument.
        index: usize,
        /// Name of the parameter.
        param: String,
        /// What is wrong.
        mismatch: Mismatch,
    },
    /// The stated grid is one the driver cannot launch (or an empty one).
    #[error("kernel {kernel}: a grid of {blocks} blocks is out of range (1..2^31)")]
    Grid {
        /// The kernel.
        kernel: String,
        /// Blocks the signature states for these sizes.
        blocks: u64,
    },
    /// A buffer is shorter, or the grid larger, than the kernel's stated sizes allow, or the
    /// kernel states none.
    #[error(transparent)]
    Size(#[from] kvq_ir::ir::SizeError),
    /// A download or copy asked for a different element type than the buffer holds.
    #[error("a buffer of {got} was used as {expected}")]
    Download {
        /// The type asked for.
        expected: crate::cuda::signature::Elem,
        /// The buffer's.
        got: crate::cuda::signature::Elem,
    },
    /// A kernel parameter has no argument of that name, or a written one is shared.
    #[error("kernel {kernel}: {why} for parameter {param}")]
    NamedArg {
        /// The kernel.
        kernel: String,
        /// The parameter.
        param: String,
        /// "no argument", "a read-only buffer", ...
        why: &'static str,
    },
    /// A bundle does not hold the kernels a cache needs.
    #[error("bundle: {0}")]
    BundleMismatch(String),
    /// A copy would run past a buffer's end.
    #[error("{n} elements at {at} overrun a device buffer of {len}")]
    Range {
        /// First element.
        at: usize,
        /// Elements.
        n: usize,
        /// The buffer's length.
        len: usize,
    },
    /// A driver call failed outside any kernel (context, allocation, copy).
    #[error("cuda driver: {op} failed")]
    Driver {
        /// What was being done.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// The driver refused a kernel's PTX module; `log` is its JIT compiler's error log (lines
    /// joined with "; ", empty when the driver gave none).
    #[error("kernel {kernel}: loading the PTX module failed; JIT log: {log}")]
    ModuleLoad {
        /// The kernel.
        kernel: String,
        /// The JIT's error log.
        log: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// A driver call failed for one kernel (module load, launch, timing).
    #[error("kernel {kernel}: {op} failed")]
    Kernel {
        /// The kernel.
        kernel: String,
        /// What was being done.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
}
