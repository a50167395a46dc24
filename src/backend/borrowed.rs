//! Quantizing input that someone else owns (a numpy array, a torch tensor's storage) without
//! copying it: the generated host kernel reads the caller's slice in its own element type.

use half::{bf16, f16};
use kvq_codegen::host::{BufferRef, HostArg};
use kvq_ir::lower::io::quantize_supplied;
use kvq_ir::lower::{quantize_abi, InputType};
use kvq_ir::reference::PackedSpan;
use kvq_ir::{Scheme, Shape3, Tensor3};

use super::{host_args, host_kernel, quantize, quantize_lowered, Backend, BackendError};
use super::{QuantError, ScheduleKind};

/// The byte alignment of input the host kernels read without a copy (their widest aligned
/// vector load); other input is copied first.
const ALIGN: usize = 16;

/// Row-major `[heads, tokens, head_dim]` input values borrowed in their own type.
#[derive(Debug, Clone, Copy)]
pub enum InputSlice<'a> {
    /// IEEE half.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
    /// IEEE single.
    F32(&'a [f32]),
}

impl InputSlice<'_> {
    /// The kernels' input type for these values.
    pub fn input_type(&self) -> InputType {
        match self {
            InputSlice::F16(_) => InputType::F16,
            InputSlice::BF16(_) => InputType::BF16,
            InputSlice::F32(_) => InputType::F32,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            InputSlice::F16(x) => x.len(),
            InputSlice::BF16(x) => x.len(),
            InputSlice::F32(x) => x.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (exact: every input type widens to f32 without rounding).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            InputSlice::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
            InputSlice::BF16(x) => x.iter().map(|v| v.to_f32()).collect(),
            InputSlice::F32(x) => x.to_vec(),
        }
    }

    fn address(&self) -> usize {
        match self {
            InputSlice::F16(x) => x.as_ptr() as usize,
            InputSlice::BF16(x) => x.as_ptr() as usize,
            InputSlice::F32(x) => x.as_ptr() as usize,
        }
    }

    fn host_arg(&self) -> HostArg<'_> {
        HostArg::ReadOnly(match *self {
            InputSlice::F16(x) => BufferRef::F16(x),
            InputSlice::BF16(x) => BufferRef::BF16(x),
            InputSlice::F32(x) => BufferRef::F32(x),
        })
    }
}

/// Quantizes `x` of `shape` under `scheme` on `backend`, with the same codes and parameters as
/// [`quantize`] of the same values. On host code (tuned schedule) the kernel reads `x` where
/// it lies when it is aligned to 16 bytes; otherwise, and on the other backends, the values are
/// copied first.
pub fn quantize_borrowed(
    x: InputSlice<'_>,
    shape: Shape3,
    scheme: &Scheme,
    backend: Backend,
) -> Result<PackedSpan, BackendError> {
    shape.check_len(x.len()).map_err(QuantError::from)?;
    let input = x.input_type();
    if backend != Backend::Host || x.address() % ALIGN != 0 {
        let copy = Tensor3::new(shape.dims(), x.to_f32()).map_err(QuantError::from)?;
        return quantize(&copy, input, scheme, backend);
    }
    let lowered = quantize_lowered(scheme, shape, input, ScheduleKind::Host, true)?;
    let compiled = host_kernel(&lowered.kernel)?;
    let run = |_: &kvq_ir::ir::Kernel, args: &mut [kvq_ir::ir::interp::Arg], grid: u32| {
        let mut host = host_args(args);
        host[quantize_abi::X as usize] = x.host_arg();
        compiled.check_sizes(&host, grid, None)?;
        // SAFETY: `check_sizes` matched every buffer, the borrowed input included, to the
        // length the kernel states for these scalar arguments and the grid to its bound, as
        // in `launch_host`; the launch checks kinds, types, access (the input is read-only)
        // and alignment.
        unsafe { compiled.launch(&mut host, grid)? };
        Ok::<(), BackendError>(())
    };
    Ok(quantize_supplied(
        &lowered,
        scheme,
        shape,
        input,
        || x.to_f32(),
        run,
    )?)
}
