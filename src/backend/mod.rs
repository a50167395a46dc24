//! Quantizing and dequantizing a span on a chosen backend: the reference implementation, the
//! IR interpreter, or generated host code. All three give the same codes and parameters bit for
//! bit (SPEC.md); the choice trades speed for independence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kvq_codegen::host::{BufferMut, HostArg, HostKernel, Job};
use kvq_codegen::{CodegenError, Passes};
use kvq_ir::ir::interp::{self, Arg, Buffer};
use kvq_ir::ir::{verify, Kernel, VerifyError};
use kvq_ir::lower::io::{dequantize_with, quantize_with, ExecError};
use kvq_ir::lower::{self, InputType, LowerError, Lowered, Schedule, ShapeClass};
use kvq_ir::reference::{self, PackedSpan, QuantError};
use kvq_ir::{Scheme, Shape3, Tensor3};
use thiserror::Error;

mod borrowed;

pub use borrowed::{quantize_borrowed, InputSlice};

/// Where a quantizer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Backend {
    /// The plain Rust reference of SPEC.md.
    Reference,
    /// The lowered kernel, run by the IR interpreter.
    Interp,
    /// The lowered kernel, compiled by LLVM to native code for this CPU.
    Host,
}

/// Why a backend could not quantize or dequantize.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The input or span is not acceptable (the same error on every backend).
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The scheme cannot be lowered for this shape.
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// The lowered kernel is invalid (a kvq bug).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The interpreter failed.
    #[error("interpreter: {0}")]
    Interp(#[from] interp::InterpError),
    /// Code generation, loading or launch failed.
    #[error(transparent)]
    Codegen(CodegenError),
    /// A buffer is shorter, or a grid larger, than the kernel's stated sizes allow.
    #[error(transparent)]
    Size(#[from] kvq_ir::ir::SizeError),
    /// The span is too large for one launch.
    #[error("span too large for one launch: {0}")]
    TooLarge(String),
}

/// A kernel the code generator found invalid is [`BackendError::Verify`], as when the backend
/// verifies it itself.
impl From<CodegenError> for BackendError {
    fn from(e: CodegenError) -> Self {
        match e {
            CodegenError::Invalid(v) => BackendError::Verify(v),
            e => BackendError::Codegen(e),
        }
    }
}

impl<E: Into<BackendError> + std::error::Error + 'static> From<ExecError<E>> for BackendError {
    fn from(e: ExecError<E>) -> Self {
        match e {
            ExecError::Quant(q) => BackendError::Quant(q),
            ExecError::Backend(b) => b.into(),
            e @ (ExecError::TooLarge { .. } | ExecError::Limit(_)) => {
                BackendError::TooLarge(e.to_string())
            }
        }
    }
}

/// Compiled host kernels of this process, by optimization passes and kernel text.
type HostCache = Mutex<HashMap<Passes, HashMap<String, Arc<HostKernel>>>>;

fn host_cache() -> &'static HostCache {
    static CACHE: std::sync::OnceLock<HostCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The host kernel of `kernel`, compiled once per process (and through the on-disk cache).
pub fn host_kernel(kernel: &Kernel) -> Result<Arc<HostKernel>, BackendError> {
    host_kernel_printed(kernel, kvq_ir::ir::print(kernel))
}

/// [`host_kernel`] for a caller that has printed the kernel already (`text` must be
/// `kvq_ir::ir::print(kernel)`): the text keys both this process's memo and the compile cache.
pub fn host_kernel_printed(kernel: &Kernel, text: String) -> Result<Arc<HostKernel>, BackendError> {
    let mut compiled = host_kernels_printed(&[kernel], vec![text], Passes::default())?;
    compiled.pop().ok_or_else(|| not_compiled(kernel))
}

/// [`host_kernel_printed`] for several kernels optimized with `passes` (`texts[i]` printed from
/// `kernels[i]`): those not compiled in this process yet are built at once, one per core
/// ([`kvq_codegen::host::compile_all`]).
pub fn host_kernels_printed(
    kernels: &[&Kernel],
    texts: Vec<String>,
    passes: Passes,
) -> Result<Vec<Arc<HostKernel>>, BackendError> {
    let memo = |text: &str| {
        let memo = host_cache().lock().ok()?;
        memo.get(&passes)?.get(text).cloned()
    };
    let found: Vec<Option<Arc<HostKernel>>> = texts.iter().map(|t| memo(t)).collect();
    let jobs: Vec<Job<'_>> = (0..found.len())
        .filter(|&i| found[i].is_none())
        .map(|i| Job {
            kernel: kernels[i],
            ir: &texts[i],
        })
        .collect();
    let cache = kvq_codegen::cache::CompileCache::from_env();
    let mut built = kvq_codegen::host::compile_all(&jobs, cache.as_ref(), passes)?.into_iter();
    let mut memo = host_cache().lock().ok();
    let mut compiled = Vec::with_capacity(found.len());
    for ((found, text), kernel) in found.into_iter().zip(texts).zip(kernels) {
        let kernel = match found {
            Some(k) => k,
            None => {
                let k = Arc::new(built.next().ok_or_else(|| not_compiled(kernel))?);
                if let Some(memo) = memo.as_mut() {
                    memo.entry(passes).or_default().insert(text, k.clone());
                }
                k
            }
        };
        compiled.push(kernel);
    }
    Ok(compiled)
}

/// The error of a kernel that [`host_kernels_printed`] lost track of (not expected: every
/// kernel is found in the memo or compiled).
fn not_compiled(kernel: &Kernel) -> BackendError {
    BackendError::Codegen(CodegenError::Llvm {
        kernel: kernel.name.clone(),
        message: "no compiled kernel came back".into(),
    })
}

/// Host launch arguments borrowing the interpreter's owned argument buffers.
pub fn host_args(args: &mut [Arg]) -> Vec<HostArg<'_>> {
    args.iter_mut()
        .map(|a| match a {
            Arg::Buffer(Buffer::U8(v)) => HostArg::Buffer(BufferMut::U8(v)),
            Arg::Buffer(Buffer::U16(v)) => HostArg::Buffer(BufferMut::U16(v)),
            Arg::Buffer(Buffer::U32(v)) => HostArg::Buffer(BufferMut::U32(v)),
            Arg::Buffer(Buffer::F16(v)) => HostArg::Buffer(BufferMut::F16(v)),
            Arg::Buffer(Buffer::BF16(v)) => HostArg::Buffer(BufferMut::BF16(v)),
            Arg::Buffer(Buffer::F32(v)) => HostArg::Buffer(BufferMut::F32(v)),
            Arg::Buffer(Buffer::F64(v)) => HostArg::Buffer(BufferMut::F64(v)),
            Arg::U32(x) => HostArg::U32(*x),
            Arg::F32(x) => HostArg::F32(*x),
        })
        .collect()
}

/// Runs one of kvq's lowered quantize or dequantize kernels as generated host code (the
/// function to pass to `quantize_with` / `dequantize_with`), through [`launch_host`].
pub fn run_host(kernel: &Kernel, args: &mut [Arg], grid: u32) -> Result<(), BackendError> {
    launch_host(&*host_kernel(kernel)?, args, grid)
}

/// Launches a compiled kernel over `args`, each buffer first checked against the length the
/// kernel's signature states for these scalar arguments and the grid against its bound: a
/// short buffer is a [`BackendError::Codegen`] size error and runs nothing, and a kernel that
/// states no sizes (or needs a batch plan: the attention kernels, which
/// [`crate::attention::HostAttention`] launches) is refused.
pub fn launch_host(compiled: &HostKernel, args: &mut [Arg], grid: u32) -> Result<(), BackendError> {
    let mut host_args = host_args(args);
    compiled.check_sizes(&host_args, grid, None)?;
    // SAFETY: `check_sizes` matched every buffer to the length the kernel states for these
    // scalar arguments and the grid to its bound; kvq's lowerings state lengths that bound
    // every index the kernel forms (the interpreter enforces them on every access in the
    // tests), and the launch checks count, kinds, types, access and alignment.
    unsafe { compiled.launch(&mut host_args, grid)? };
    Ok(())
}

fn run_interp(kernel: &Kernel, args: &mut [Arg], grid: u32) -> Result<(), BackendError> {
    verify(kernel)?;
    interp::run(kernel, args, grid)?;
    Ok(())
}

/// The schedule a backend uses by default.
pub fn default_schedule(backend: Backend, scheme: &Scheme, shape: ShapeClass) -> Schedule {
    match backend {
        Backend::Host => Schedule::host_default(scheme, shape),
        _ => Schedule::gpu_default(scheme, shape),
    }
}

/// Which schedule's kernels a kernel backend (interpreter or host code) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ScheduleKind {
    /// The host's schedule (tuned where the table has one): threads become loops.
    Host,
    /// The GPU schedule ([`Schedule::gpu_default`] for sm_90, without thread-block clusters
    /// for sm_80): the kernels `kvq compile --target sm_80|sm_90` emits as PTX, run here to
    /// check their output.
    Gpu,
}

/// Quantizes `x` with the kernels of `schedule` run by `backend` (the interpreter or host
/// code; the reference has no schedule); `clusters`: the GPU schedule of a GPU with
/// thread-block clusters (sm_90), else of one without (sm_80).
pub fn quantize_scheduled(
    x: &Tensor3,
    input: InputType,
    scheme: &Scheme,
    backend: Backend,
    schedule: ScheduleKind,
    clusters: bool,
) -> Result<PackedSpan, BackendError> {
    let run = match backend {
        Backend::Reference => return Ok(reference::quantize(x, scheme)?),
        Backend::Interp => run_interp,
        Backend::Host => run_host,
    };
    let lowered = quantize_lowered(scheme, x.shape(), input, schedule, clusters)?;
    Ok(quantize_with(&lowered, scheme, x, input, run)?)
}

/// The quantize kernel of `scheme` for input of `shape` and type `input` under `schedule`
/// (the host's: tuned where the committed table has this scheme and shape bucket for this
/// machine, else its default; the output is the same either way).
fn quantize_lowered(
    scheme: &Scheme,
    shape: Shape3,
    input: InputType,
    schedule: ScheduleKind,
    clusters: bool,
) -> Result<Lowered, BackendError> {
    reference::quantize::check_shape(scheme, shape)?;
    let class = ShapeClass {
        head_dim: shape.dim as u32,
        input,
    };
    let schedule = match schedule {
        ScheduleKind::Gpu if clusters => Schedule::gpu_default(scheme, class),
        ScheduleKind::Gpu => Schedule::gpu_default(scheme, class).without_clusters(scheme, class),
        ScheduleKind::Host => crate::tune::schedule_for(
            crate::tune::default_table(),
            scheme,
            class,
            shape.heads,
            shape.tokens,
        ),
    };
    Ok(lower::quantize(scheme, class, &schedule)?)
}

/// Quantizes `x` (values of the `input` type) under `scheme` on `backend`, with the backend's
/// default schedule ([`default_schedule`]; host code: tuned).
pub fn quantize(
    x: &Tensor3,
    input: InputType,
    scheme: &Scheme,
    backend: Backend,
) -> Result<PackedSpan, BackendError> {
    let schedule = match backend {
        Backend::Host => ScheduleKind::Host,
        _ => ScheduleKind::Gpu,
    };
    quantize_scheduled(x, input, scheme, backend, schedule, true)
}

/// Dequantizes `span` on `backend`.
pub fn dequantize(
    span: &PackedSpan,
    input: InputType,
    backend: Backend,
) -> Result<Tensor3, BackendError> {
    let shape = ShapeClass {
        head_dim: span.shape.dim as u32,
        input,
    };
    let run = match backend {
        Backend::Reference => return Ok(span.dequantize()?),
        Backend::Interp => run_interp,
        Backend::Host => run_host,
    };
    let lowered = lower::dequantize(
        &span.scheme,
        shape,
        &default_schedule(backend, &span.scheme, shape),
    )?;
    Ok(dequantize_with(&lowered, span, run)?)
}

/// A [`kvq_runtime::SpanQuantizer`] running the generated host quantize kernels (inputs taken
/// as f32), for [`kvq_runtime::VisualKvCache`]. SPEC.md requires the same codes and parameters
/// as the reference, which the tests check.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSpanQuantizer;

impl kvq_runtime::SpanQuantizer for HostSpanQuantizer {
    fn quantize(&self, x: &Tensor3, scheme: &Scheme) -> Result<PackedSpan, QuantError> {
        quantize(x, InputType::F32, scheme, Backend::Host).map_err(|e| match e {
            BackendError::Quant(q) => q,
            other => QuantError::Backend(other.to_string()),
        })
    }
}
