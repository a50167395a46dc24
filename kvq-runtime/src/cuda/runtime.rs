//! The CUDA context, device buffers and the one checked launch.

use std::sync::Arc;

use cudarc::driver::sys::{self, CUevent_flags, CUfunction_attribute, CUjit_option, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use half::{bf16, f16};

use crate::cuda::error::CudaError;
use crate::cuda::manifest::{Bundle, LaunchRule, Role};
use crate::cuda::signature::{check, ArgDesc, Elem, KernelSignature, ParamSpec};

/// Device memory of one of the element types kernels take.
#[derive(Debug)]
pub enum DeviceBuffer {
    /// `u8`.
    U8(CudaSlice<u8>),
    /// `u32`.
    U32(CudaSlice<u32>),
    /// `f16`.
    F16(CudaSlice<f16>),
    /// `bf16`.
    Bf16(CudaSlice<bf16>),
    /// `f32`.
    F32(CudaSlice<f32>),
}

impl DeviceBuffer {
    /// Element type.
    pub fn elem(&self) -> Elem {
        match self {
            DeviceBuffer::U8(_) => Elem::U8,
            DeviceBuffer::U32(_) => Elem::U32,
            DeviceBuffer::F16(_) => Elem::F16,
            DeviceBuffer::Bf16(_) => Elem::Bf16,
            DeviceBuffer::F32(_) => Elem::F32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            DeviceBuffer::U8(s) => s.len(),
            DeviceBuffer::U32(s) => s.len(),
            DeviceBuffer::F16(s) => s.len(),
            DeviceBuffer::Bf16(s) => s.len(),
            DeviceBuffer::F32(s) => s.len(),
        }
    }

    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// A host type with a [`DeviceBuffer`] variant.
pub trait DeviceElem: DeviceRepr + ValidAsZeroBits + Copy + sealed::Sealed {
    /// The manifest's name for it.
    const ELEM: Elem;
    /// Wraps a typed slice.
    fn wrap(slice: CudaSlice<Self>) -> DeviceBuffer;
    /// The typed slice, if `buffer` holds this type.
    fn slice(buffer: &DeviceBuffer) -> Option<&CudaSlice<Self>>;
}

macro_rules! device_elem {
    ($t:ty, $variant:ident) => {
        impl DeviceElem for $t {
            const ELEM: Elem = Elem::$variant;
            fn wrap(slice: CudaSlice<Self>) -> DeviceBuffer {
                DeviceBuffer::$variant(slice)
            }
            fn slice(buffer: &DeviceBuffer) -> Option<&CudaSlice<Self>> {
                match buffer {
                    DeviceBuffer::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
device_elem!(u8, U8);
device_elem!(u32, U32);
device_elem!(f16, F16);
device_elem!(bf16, Bf16);
device_elem!(f32, F32);

/// One launch argument.
#[derive(Debug)]
pub enum LaunchArg<'a> {
    /// A buffer the kernel only reads.
    Buffer(&'a DeviceBuffer),
    /// A buffer the kernel may write.
    BufferMut(&'a mut DeviceBuffer),
    /// A `u32` scalar.
    U32(u32),
    /// An `f32` scalar.
    F32(f32),
}

impl LaunchArg<'_> {
    /// What [`check`] compares.
    pub fn desc(&self) -> ArgDesc {
        match self {
            LaunchArg::Buffer(b) => ArgDesc::Buffer {
                elem: b.elem(),
                len: b.len(),
                writable: false,
            },
            LaunchArg::BufferMut(b) => ArgDesc::Buffer {
                elem: b.elem(),
                len: b.len(),
                writable: true,
            },
            LaunchArg::U32(_) => ArgDesc::U32,
            LaunchArg::F32(_) => ArgDesc::F32,
        }
    }
}

/// A kernel loaded into the context, with what the manifest says about launching it.
#[derive(Debug)]
pub struct Kernel {
    /// Name and parameters.
    pub signature: KernelSignature,
    /// Which kernel of the pair.
    pub role: Role,
    /// Grid rule.
    pub launch: LaunchRule,
    /// Threads per block.
    pub block_size: u32,
    /// Dynamic shared memory each block receives, in bytes.
    pub dynamic_shared_bytes: u32,
    func: CudaFunction,
}

impl Kernel {
    /// The launch configuration for the size scalars among `args` that the launch rule reads.
    fn config(&self, args: &[LaunchArg<'_>]) -> Result<LaunchConfig, CudaError> {
        let [a, b] = self.launch.sizes();
        let sizes = [(a, self.size_arg(args, a)?), (b, self.size_arg(args, b)?)];
        let blocks = self.launch.grid(sizes[0].1, sizes[1].1, self.block_size);
        let grid = u32::try_from(blocks)
            .ok()
            .filter(|&b| b > 0 && b < (1 << 31));
        let Some(grid) = grid else {
            return Err(CudaError::Grid {
                kernel: self.signature.name.clone(),
                blocks,
                sizes,
            });
        };
        Ok(LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (self.block_size, 1, 1),
            // Static shared arrays are declared in the PTX; above 48 KiB they live in dynamic
            // shared memory of the manifest's size (the function attribute is set at load).
            shared_mem_bytes: self.dynamic_shared_bytes,
        })
    }

    fn size_arg(&self, args: &[LaunchArg<'_>], name: &'static str) -> Result<u32, CudaError> {
        let index =
            self.signature.params.iter().position(
                |p| matches!(p, ParamSpec::Scalar { name: n, ty: Elem::U32 } if n == name),
            );
        match index.and_then(|i| args.get(i)) {
            Some(LaunchArg::U32(v)) => Ok(*v),
            _ => Err(CudaError::MissingSize {
                kernel: self.signature.name.clone(),
                name,
            }),
        }
    }
}

/// A CUDA context on one device and its default stream.
#[derive(Debug)]
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl CudaRuntime {
    /// Opens device `device_index`. Returns [`CudaError::NoDriver`] when `libcuda.so` is absent.
    pub fn new(device_index: usize) -> Result<CudaRuntime, CudaError> {
        // SAFETY: only tries to dlopen libcuda under its usual names and drops the handle; no
        // driver function is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(device_index).map_err(|source| CudaError::Driver {
            op: "creating the context",
            source,
        })?;
        let stream = ctx.default_stream();
        Ok(CudaRuntime { ctx, stream })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> Result<String, CudaError> {
        self.ctx.name().map_err(|source| CudaError::Driver {
            op: "reading the device name",
            source,
        })
    }

    /// Loads kernel `name` of `bundle` from its PTX text.
    pub fn load(&self, bundle: &Bundle, name: &str) -> Result<Kernel, CudaError> {
        let (entry, ptx) = bundle.kernel(name)?;
        let err = |op| {
            move |source| CudaError::Kernel {
                kernel: name.to_string(),
                op,
                source,
            }
        };
        let module =
            self.ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(|source| CudaError::ModuleLoad {
                    kernel: name.to_string(),
                    log: jit_error_log(&self.ctx, ptx),
                    source,
                })?;
        let func = module
            .load_function(name)
            .map_err(err("finding the entry in the module"))?;
        let dynamic = entry.entry.dynamic_shared_bytes;
        if dynamic > 0 {
            let bytes = i32::try_from(dynamic).unwrap_or(i32::MAX);
            let attribute = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            func.set_attribute(attribute, bytes)
                .map_err(err("allowing its dynamic shared memory"))?;
        }
        Ok(Kernel {
            signature: entry.signature(),
            role: entry.role,
            launch: entry.launch,
            block_size: entry.entry.block_size,
            dynamic_shared_bytes: dynamic,
            func,
        })
    }

    /// Copies `data` to a new device buffer.
    pub fn upload<T: DeviceElem>(&self, data: &[T]) -> Result<DeviceBuffer, CudaError> {
        let slice = self
            .stream
            .clone_htod(data)
            .map_err(|source| CudaError::Driver {
                op: "copying to the device",
                source,
            })?;
        Ok(T::wrap(slice))
    }

    /// A new device buffer of `len` zeros.
    pub fn zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer, CudaError> {
        let slice = self
            .stream
            .alloc_zeros::<T>(len)
            .map_err(|source| CudaError::Driver {
                op: "allocating device memory",
                source,
            })?;
        Ok(T::wrap(slice))
    }

    /// Copies a device buffer back (waits for the stream).
    pub fn download<T: DeviceElem>(&self, buffer: &DeviceBuffer) -> Result<Vec<T>, CudaError> {
        let slice = T::slice(buffer).ok_or(CudaError::Download {
            expected: T::ELEM,
            got: buffer.elem(),
        })?;
        self.stream
            .clone_dtoh(slice)
            .map_err(|source| CudaError::Driver {
                op: "copying to the host",
                source,
            })
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(|source| CudaError::Driver {
                op: "synchronizing the stream",
                source,
            })
    }

    /// Checks `args` against the kernel's signature, derives the grid from its launch rule and
    /// the size arguments it names (`heads`/`tokens`, or the attention kernels' `chunks`,
    /// `batch` and `kv_heads`), and queues the launch.
    pub fn launch(&self, kernel: &Kernel, args: &mut [LaunchArg<'_>]) -> Result<(), CudaError> {
        let descs: Vec<ArgDesc> = args.iter().map(LaunchArg::desc).collect();
        check(&kernel.signature, &descs)?;
        let cfg = kernel.config(args)?;
        let mut builder = self.stream.launch_builder(&kernel.func);
        for arg in args.iter_mut() {
            match arg {
                LaunchArg::Buffer(b) => match b {
                    DeviceBuffer::U8(s) => builder.arg(s),
                    DeviceBuffer::U32(s) => builder.arg(s),
                    DeviceBuffer::F16(s) => builder.arg(s),
                    DeviceBuffer::Bf16(s) => builder.arg(s),
                    DeviceBuffer::F32(s) => builder.arg(s),
                },
                LaunchArg::BufferMut(b) => match &mut **b {
                    DeviceBuffer::U8(s) => builder.arg(s),
                    DeviceBuffer::U32(s) => builder.arg(s),
                    DeviceBuffer::F16(s) => builder.arg(s),
                    DeviceBuffer::Bf16(s) => builder.arg(s),
                    DeviceBuffer::F32(s) => builder.arg(s),
                },
                LaunchArg::U32(v) => builder.arg(&*v),
                LaunchArg::F32(v) => builder.arg(&*v),
            };
        }
        // SAFETY: `check` matched every argument to the manifest's signature of this PTX entry:
        // the count, buffer vs scalar, element and scalar types, and that buffers the kernel
        // stores to are passed mutably (so no other borrow of them is alive). The grid comes
        // from the entry's launch rule with the same heads/tokens the kernel receives, so the
        // kernel's own bounds guards keep it inside buffers sized for that shape; the caller
        // sizes buffers for the launch: heads x tokens for the quantize kernels, the batch plan
        // (`kvq_ir::lower::attention::plan`) for the attention kernels (see `kvq-gpu-check`).
        unsafe { builder.launch(cfg) }.map_err(|source| CudaError::Kernel {
            kernel: kernel.signature.name.clone(),
            op: "launching",
            source,
        })?;
        Ok(())
    }

    /// [`CudaRuntime::launch`] between two timing events; returns the kernel's time in ms.
    pub fn launch_timed(
        &self,
        kernel: &Kernel,
        args: &mut [LaunchArg<'_>],
    ) -> Result<f32, CudaError> {
        self.time(&kernel.signature.name, || self.launch(kernel, args))
    }

    /// Milliseconds the stream spends on what `work` enqueues, by a CUDA event before and one
    /// after it (so several launches in `work` are timed back to back, their launch overheads
    /// overlapping the previous kernels as in a decode loop); `label` names the work in errors.
    pub fn time(
        &self,
        label: &str,
        work: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<f32, CudaError> {
        let err = |op| {
            move |source| CudaError::Kernel {
                kernel: label.to_string(),
                op,
                source,
            }
        };
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(flags)
            .map_err(err("recording the start event"))?;
        work()?;
        let end = self
            .stream
            .record_event(flags)
            .map_err(err("recording the end event"))?;
        start
            .elapsed_ms(&end)
            .map_err(err("reading the timing events"))
    }
}

/// Bytes of the JIT error log kept.
const JIT_LOG_BYTES: usize = 16 * 1024;

/// The JIT compiler's error log for `ptx` (the driver's words on why it refuses the module), from
/// a second load with an error-log buffer; lines joined with "; ", empty when there is none.
fn jit_error_log(ctx: &Arc<CudaContext>, ptx: &str) -> String {
    let Ok(src) = std::ffi::CString::new(ptx) else {
        return "the PTX text holds a NUL byte".to_string();
    };
    if ctx.bind_to_thread().is_err() {
        return String::new();
    }
    let mut log = vec![0u8; JIT_LOG_BYTES];
    let mut options = [
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    // The size goes by value in its pointer-sized slot, as the driver API specifies.
    let mut values: [*mut std::ffi::c_void; 2] = [log.as_mut_ptr().cast(), JIT_LOG_BYTES as _];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `src` is a NUL-terminated PTX image alive for the call; `options` and `values` are
    // two matching entries, a writable buffer of JIT_LOG_BYTES bytes alive for the call and that
    // size; the context was bound to this thread above; `module` is a valid out-pointer.
    let result = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            src.as_ptr().cast(),
            2,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if result == CUresult::CUDA_SUCCESS && !module.is_null() {
        // SAFETY: `module` was loaded just above in this thread's context and nothing else
        // holds it.
        unsafe { sys::cuModuleUnload(module) };
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    String::from_utf8_lossy(&log[..end])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        // SAFETY: as in `CudaRuntime::new`: a dlopen probe only.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        match CudaRuntime::new(0) {
            Err(CudaError::NoDriver) => {
                assert!(!present);
                assert_eq!(
                    CudaError::NoDriver.to_string(),
                    "no CUDA driver found (libcuda.so); kvq-runtime's CUDA backend needs an NVIDIA GPU machine"
                );
            }
            // On a GPU machine this test only asks that nothing panicked.
            Ok(_) | Err(_) => assert!(present),
        }
    }

    #[test]
    fn a_refused_module_names_the_kernel_and_carries_the_jit_log_on_one_line() {
        let e = CudaError::ModuleLoad {
            kernel: "kvq_attend_partial_blocks".into(),
            log: "ptxas application ptx input, line 12; error   : Unknown symbol 'x'".into(),
            source: cudarc::driver::DriverError(CUresult::CUDA_ERROR_INVALID_PTX),
        };
        let text = e.to_string();
        assert!(text.starts_with("kernel kvq_attend_partial_blocks: loading the PTX module failed"));
        assert!(text.ends_with(
            "JIT log: ptxas application ptx input, line 12; error   : Unknown symbol 'x'"
        ));
        assert_eq!(text.lines().count(), 1);
    }
}
