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
use kvq_ir::ir::PlanSizes;

use crate::cuda::manifest::{Bundle, Role};
use crate::cuda::signature::{ArgDesc, Elem, KernelSignature};

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
    /// The typed slice, mutably, if `buffer` holds this type.
    fn slice_mut(buffer: &mut DeviceBuffer) -> Option<&mut CudaSlice<Self>>;
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
            fn slice_mut(buffer: &mut DeviceBuffer) -> Option<&mut CudaSlice<Self>> {
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
            LaunchArg::U32(v) => ArgDesc::U32(*v),
            LaunchArg::F32(_) => ArgDesc::F32,
        }
    }
}

/// A kernel loaded into the context, with what the manifest says about launching it.
#[derive(Debug)]
pub struct Kernel {
    /// Name, parameters and grid bound.
    pub signature: KernelSignature,
    /// Which kernel of the pair.
    pub role: Role,
    /// Threads per block.
    pub block_size: u32,
    /// Dynamic shared memory each block receives, in bytes.
    pub dynamic_shared_bytes: u32,
    func: CudaFunction,
}

impl Kernel {
    /// The launch configuration after [`KernelSignature::launch_grid`]'s checks.
    fn config(
        &self,
        args: &[LaunchArg<'_>],
        plan: Option<&dyn PlanSizes>,
    ) -> Result<LaunchConfig, CudaError> {
        let descs: Vec<ArgDesc> = args.iter().map(LaunchArg::desc).collect();
        let grid = self.signature.launch_grid(&descs, plan)?;
        Ok(LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (self.block_size, 1, 1),
            // Static shared arrays are declared in the PTX; above 48 KiB they live in dynamic
            // shared memory of the manifest's size (the function attribute is set at load).
            shared_mem_bytes: self.dynamic_shared_bytes,
        })
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

    /// The stream every copy and launch of this runtime is queued on: a caller that makes its
    /// own device memory for a cache (e.g. keys and values for
    /// `VisualKvCache::prefill_from_device`, wrapped as [`DeviceBuffer::F32`]) makes it here, so
    /// that the cache's work is ordered after the caller's writes.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> Result<String, CudaError> {
        self.ctx.name().map_err(|source| CudaError::Driver {
            op: "reading the device name",
            source,
        })
    }

    /// The device's compute capability (major, minor), e.g. (9, 0) for an H100.
    pub fn compute_capability(&self) -> Result<(i32, i32), CudaError> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let get = |a| {
            self.ctx.attribute(a).map_err(|source| CudaError::Driver {
                op: "reading the compute capability",
                source,
            })
        };
        Ok((
            get(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            get(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ))
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
        let signature = entry.signature();
        Ok(Kernel {
            signature,
            role: entry.role,
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

    /// Writes `src` into `dst` from element `at` (queued on the stream; `src` is copied before
    /// this returns).
    pub fn write_at<T: DeviceElem>(
        &self,
        dst: &mut DeviceBuffer,
        at: usize,
        src: &[T],
    ) -> Result<(), CudaError> {
        let got = dst.elem();
        let len = dst.len();
        let slice = T::slice_mut(dst).ok_or(CudaError::Download {
            expected: T::ELEM,
            got,
        })?;
        let mut view = at
            .checked_add(src.len())
            .and_then(|end| slice.try_slice_mut(at..end))
            .ok_or(CudaError::Range {
                at,
                n: src.len(),
                len,
            })?;
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|source| CudaError::Driver {
                op: "copying to the device",
                source,
            })
    }

    /// Copies elements `from` of `src` into `dst` from element `at`, on the device.
    pub fn copy_at<T: DeviceElem>(
        &self,
        dst: &mut DeviceBuffer,
        at: usize,
        src: &DeviceBuffer,
        from: std::ops::Range<usize>,
    ) -> Result<(), CudaError> {
        let wrong = |got| CudaError::Download {
            expected: T::ELEM,
            got,
        };
        let src_slice = T::slice(src).ok_or_else(|| wrong(src.elem()))?;
        let n = from.len();
        let src_view = src_slice.try_slice(from.clone()).ok_or(CudaError::Range {
            at: from.start,
            n,
            len: src.len(),
        })?;
        let (got, len) = (dst.elem(), dst.len());
        let dst_slice = T::slice_mut(dst).ok_or_else(|| wrong(got))?;
        let mut dst_view = at
            .checked_add(n)
            .and_then(|end| dst_slice.try_slice_mut(at..end))
            .ok_or(CudaError::Range { at, n, len })?;
        self.stream
            .memcpy_dtod(&src_view, &mut dst_view)
            .map_err(|source| CudaError::Driver {
                op: "copying on the device",
                source,
            })
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

    /// Checks `args` against the kernel's signature and stated sizes, and queues the launch
    /// over the grid the signature states for these scalars. A short buffer is a
    /// [`CudaError::Size`] error; a kernel whose sizes need a batch plan (the attention
    /// kernels) is refused here: see [`CudaRuntime::launch_planned`].
    pub fn launch(&self, kernel: &Kernel, args: &mut [LaunchArg<'_>]) -> Result<(), CudaError> {
        let cfg = kernel.config(args, None)?;
        // SAFETY: `config` matched every argument to the manifest's signature of this PTX entry
        // (count, buffer vs scalar, element and scalar types, buffers the kernel stores to
        // passed mutably, so no other borrow of them is alive) and every buffer to the length
        // the kernel states for these scalars; the grid is the stated one. kvq's kernels keep
        // their accesses within their stated lengths (the interpreter enforces it in tests).
        unsafe { self.enqueue(kernel, args, cfg) }
    }

    /// [`CudaRuntime::launch`] for a kernel whose sizes refer to an attention batch plan:
    /// every buffer is checked against its length for `plan`.
    ///
    /// # Safety
    /// The `seqs` and `work_seq` buffers must hold `plan`'s own tables (the kernels find each
    /// sequence's data through them, and the sizes bound the accesses only for those tables);
    /// they live on the device, so this launcher cannot read them back to check.
    pub unsafe fn launch_planned(
        &self,
        kernel: &Kernel,
        args: &mut [LaunchArg<'_>],
        plan: &dyn PlanSizes,
    ) -> Result<(), CudaError> {
        let cfg = kernel.config(args, Some(plan))?;
        // SAFETY: as in `launch`, the sizes checked for `plan`, whose tables the caller passes.
        unsafe { self.enqueue(kernel, args, cfg) }
    }

    /// Queues the launch.
    ///
    /// # Safety
    /// `args` were checked by [`Kernel::config`], which gave `cfg`.
    unsafe fn enqueue(
        &self,
        kernel: &Kernel,
        args: &mut [LaunchArg<'_>],
        cfg: LaunchConfig,
    ) -> Result<(), CudaError> {
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
        // SAFETY: the caller's contract: `config` checked the arguments and their sizes.
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
