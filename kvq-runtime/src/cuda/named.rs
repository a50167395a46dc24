//! Launching a kernel with its arguments found by parameter name. The manifest's signature is
//! the one statement of a kernel's argument order; callers name buffers and scalars, never
//! positions.

use std::collections::HashMap;

use kvq_ir::ir::PlanSizes;

use crate::cuda::error::CudaError;
use crate::cuda::runtime::{CudaRuntime, DeviceBuffer, Kernel, LaunchArg};
use crate::cuda::signature::{Elem, ParamSpec};

/// A named buffer: one the caller lends read-only, or one the map owns (and kernels may write).
#[derive(Debug)]
pub enum NamedBuffer<'a> {
    /// Borrowed: only parameters the kernel reads may take it.
    Shared(&'a DeviceBuffer),
    /// Owned by the map.
    Owned(DeviceBuffer),
}

impl NamedBuffer<'_> {
    /// The buffer.
    pub fn get(&self) -> &DeviceBuffer {
        match self {
            NamedBuffer::Shared(b) => b,
            NamedBuffer::Owned(b) => b,
        }
    }
}

/// Buffers and `u32` scalars by parameter name.
#[derive(Debug, Default)]
pub struct NamedArgs<'a> {
    /// Buffers by name.
    pub buffers: HashMap<String, NamedBuffer<'a>>,
    /// Scalars by name.
    pub scalars: HashMap<String, u32>,
}

impl<'a> NamedArgs<'a> {
    /// Adds an owned buffer.
    pub fn own(&mut self, name: &str, buffer: DeviceBuffer) {
        self.buffers
            .insert(name.to_string(), NamedBuffer::Owned(buffer));
    }

    /// Lends a read-only buffer.
    pub fn share(&mut self, name: &str, buffer: &'a DeviceBuffer) {
        self.buffers
            .insert(name.to_string(), NamedBuffer::Shared(buffer));
    }

    /// Sets a scalar.
    pub fn scalar(&mut self, name: &str, value: u32) {
        self.scalars.insert(name.to_string(), value);
    }

    /// The buffer `name`, if any.
    pub fn buffer(&self, name: &str) -> Option<&DeviceBuffer> {
        self.buffers.get(name).map(NamedBuffer::get)
    }

    /// Launches `kernel` with its parameters taken by name (see [`CudaRuntime::launch`]).
    pub fn launch(&mut self, rt: &CudaRuntime, kernel: &Kernel) -> Result<(), CudaError> {
        self.with_args(kernel, |args| rt.launch(kernel, args))
    }

    /// Launches `kernel` with its parameters taken by name, sized for `plan`.
    ///
    /// # Safety
    /// As [`CudaRuntime::launch_planned`]: the `seqs` and `work_seq` buffers hold `plan`'s own
    /// tables.
    pub unsafe fn launch_planned(
        &mut self,
        rt: &CudaRuntime,
        kernel: &Kernel,
        plan: &dyn PlanSizes,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller's contract on `seqs` and `work_seq`.
        self.with_args(kernel, |args| unsafe {
            rt.launch_planned(kernel, args, plan)
        })
    }

    /// Builds `kernel`'s positional argument list from the names and runs `f` on it; buffers
    /// are taken out of the map for the call and put back afterwards, whatever `f` returns.
    fn with_args<R>(
        &mut self,
        kernel: &Kernel,
        f: impl FnOnce(&mut [LaunchArg<'_>]) -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let params = &kernel.signature.params;
        let missing = |param: &str, why| CudaError::NamedArg {
            kernel: kernel.signature.name.clone(),
            param: param.to_string(),
            why,
        };
        let mut taken = Vec::new();
        let mut failed = None;
        for p in params {
            if let ParamSpec::Buffer { name, .. } = p {
                match self.buffers.remove(name) {
                    Some(b) => taken.push((name.clone(), b)),
                    None => {
                        failed = Some(missing(name, "no buffer"));
                        break;
                    }
                }
            }
        }
        let result = match failed {
            Some(e) => Err(e),
            None => {
                let mut slots = taken.iter_mut();
                let mut args = Vec::with_capacity(params.len());
                let mut bad = None;
                for p in params {
                    match p {
                        ParamSpec::Buffer { name, access, .. } => {
                            let Some((_, b)) = slots.next() else {
                                bad = Some(missing(name, "no buffer"));
                                break;
                            };
                            match (b, access.writes()) {
                                (NamedBuffer::Owned(b), true) => args.push(LaunchArg::BufferMut(b)),
                                (b, false) => args.push(LaunchArg::Buffer(b.get())),
                                (NamedBuffer::Shared(_), true) => {
                                    bad = Some(missing(name, "a read-only buffer"));
                                    break;
                                }
                            }
                        }
                        ParamSpec::Scalar {
                            name,
                            ty: Elem::U32,
                        } => match self.scalars.get(name) {
                            Some(v) => args.push(LaunchArg::U32(*v)),
                            None => {
                                bad = Some(missing(name, "no u32 scalar"));
                                break;
                            }
                        },
                        ParamSpec::Scalar { name, .. } => {
                            bad = Some(missing(name, "an unsupported scalar type"));
                            break;
                        }
                    }
                }
                match bad {
                    Some(e) => Err(e),
                    None => f(&mut args),
                }
            }
        };
        for (name, b) in taken {
            self.buffers.insert(name, b);
        }
        result
    }
}
