//! Running lowered kernels on host memory: the argument buffers of a launch, built from a span
//! and read back into the packed format, independent of which backend runs the kernel (the
//! interpreter here, generated host code in `kvq-codegen`).

use half::{bf16, f16};
use thiserror::Error;

use crate::ir::interp::{Arg, Buffer};
use crate::ir::Kernel;
use crate::reference::{quantize as reference_quantize, PackedSpan, QuantError};
use crate::scheme::Scheme;
use crate::tensor::{Shape3, Tensor3};

use super::args::{param_values, DequantizeArgs, QuantizeArgs};
use super::{InputType, Lowered};

/// Why running a lowered kernel failed.
#[derive(Debug, Error)]
pub enum ExecError<E: std::error::Error + 'static> {
    /// The input cannot be quantized (the kernel flagged it; the reference names the cause).
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(#[source] E),
    /// The span has more elements than the kernel's u32 indices address.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    /// The span needs more blocks than a launch allows.
    #[error("span of {heads} heads x {tokens} tokens needs {blocks} blocks, more than 2^32 - 1")]
    TooLarge {
        /// Heads.
        heads: usize,
        /// Tokens.
        tokens: usize,
        /// Blocks needed.
        blocks: u64,
    },
}

/// The input buffer of `x` in `input`'s type. Values are rounded to that type (exact for data
/// that came from it).
pub fn input_buffer(x: &Tensor3, input: InputType) -> Buffer {
    values_buffer(x.data(), input)
}

/// `xs` as a buffer of `input`'s type, each value rounded to it (round to nearest even).
pub fn values_buffer(xs: &[f32], input: InputType) -> Buffer {
    match input {
        InputType::F16 => Buffer::F16(xs.iter().map(|&v| f16::from_f32(v)).collect()),
        InputType::BF16 => Buffer::BF16(xs.iter().map(|&v| bf16::from_f32(v)).collect()),
        InputType::F32 => Buffer::F32(xs.to_vec()),
    }
}

/// The values of a parameter (or input) buffer as f32.
fn buffer_values(buffer: &Buffer) -> Option<Vec<f32>> {
    match buffer {
        Buffer::F16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
        Buffer::BF16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
        Buffer::F32(v) => Some(v.clone()),
        _ => None,
    }
}

/// The grid of a quantize or dequantize launch over `shape`, after checking that every element
/// index the kernel computes (u32) stays below 2^32, so that no index arithmetic wraps.
fn grid<E: std::error::Error>(lowered: &Lowered, shape: Shape3) -> Result<u32, ExecError<E>> {
    crate::limits::check_addressable(shape.heads as u64, shape.tokens as u64, shape.dim as u64)?;
    let blocks = lowered.launch.grid(
        shape.heads as u32,
        shape.tokens as u32,
        lowered.kernel.block_size,
    );
    u32::try_from(blocks).map_err(|_| ExecError::TooLarge {
        heads: shape.heads,
        tokens: shape.tokens,
        blocks,
    })
}

/// Quantizes `x` (given in `input`'s type) with a lowered quantize kernel, launched by `run`.
pub fn quantize_with<E: std::error::Error + 'static>(
    lowered: &Lowered,
    scheme: &Scheme,
    x: &Tensor3,
    input: InputType,
    run: impl FnOnce(&Kernel, &mut [Arg], u32) -> Result<(), E>,
) -> Result<PackedSpan, ExecError<E>> {
    let shape = x.shape();
    crate::reference::quantize::check_shape(scheme, shape)?;
    let blocks = grid(lowered, shape)?;
    let mut args = QuantizeArgs::new(scheme, input_buffer(x, input), shape)?.into_args();
    run(&lowered.kernel, &mut args, blocks).map_err(ExecError::Backend)?;
    let mut out = QuantizeArgs::from_args(args).ok_or_else(malformed)?;
    let x = std::mem::replace(&mut out.x, Buffer::U8(Vec::new()));
    // Only a float buffer comes back from a launch (from_args checked the kinds).
    packed(scheme, shape, out, move || {
        buffer_values(&x).unwrap_or_default()
    })
}

/// Quantizes an input of `shape` that the launcher supplies itself (borrowed from its owner,
/// without a copy): argument [`super::quantize_abi::X`] of the list `run` gets is an empty
/// buffer of `input`'s type, which `run` replaces by the input when it launches. `exact` gives
/// the input's values, read only when the kernel flags the input, to name the cause.
pub fn quantize_supplied<E: std::error::Error + 'static>(
    lowered: &Lowered,
    scheme: &Scheme,
    shape: Shape3,
    input: InputType,
    exact: impl FnOnce() -> Vec<f32>,
    run: impl FnOnce(&Kernel, &mut [Arg], u32) -> Result<(), E>,
) -> Result<PackedSpan, ExecError<E>> {
    crate::reference::quantize::check_shape(scheme, shape)?;
    let blocks = grid(lowered, shape)?;
    let empty = match input {
        InputType::F16 => Buffer::F16(Vec::new()),
        InputType::BF16 => Buffer::BF16(Vec::new()),
        InputType::F32 => Buffer::F32(Vec::new()),
    };
    let mut args = QuantizeArgs::new(scheme, empty, shape)?.into_args();
    run(&lowered.kernel, &mut args, blocks).map_err(ExecError::Backend)?;
    let out = QuantizeArgs::from_args(args).ok_or_else(malformed)?;
    packed(scheme, shape, out, exact)
}

fn malformed() -> QuantError {
    QuantError::Malformed("kernel arguments changed kind".to_string())
}

/// The packed span from a quantize kernel's outputs, or, when it flagged the input (status),
/// the reference's error for the input's values `exact`.
fn packed<E: std::error::Error + 'static>(
    scheme: &Scheme,
    shape: Shape3,
    out: QuantizeArgs,
    exact: impl FnOnce() -> Vec<f32>,
) -> Result<PackedSpan, ExecError<E>> {
    if out.status != 0 {
        // The kernel found a non-finite value or an overflow; the reference names it.
        let exact = Tensor3::new(shape.dims(), exact()).map_err(QuantError::from)?;
        return Err(match reference_quantize(&exact, scheme) {
            Err(e) => e.into(),
            Ok(_) => QuantError::Malformed(format!(
                "kernel flagged status {} on valid input",
                out.status
            ))
            .into(),
        });
    }
    Ok(PackedSpan {
        scheme: *scheme,
        shape,
        codes: out.codes,
        zero: buffer_values(&out.zero).ok_or_else(malformed)?,
        scale: buffer_values(&out.scale).ok_or_else(malformed)?,
    })
}

/// Dequantizes `span` with a lowered dequantize kernel, launched by `run`.
pub fn dequantize_with<E: std::error::Error + 'static>(
    lowered: &Lowered,
    span: &PackedSpan,
    run: impl FnOnce(&Kernel, &mut [Arg], u32) -> Result<(), E>,
) -> Result<Tensor3, ExecError<E>> {
    span.validate()?;
    let shape = span.shape;
    let blocks = grid(lowered, shape)?;
    let p = span.scheme.params;
    let mut args = DequantizeArgs::new(
        span.codes.clone(),
        param_values(p, &span.zero),
        param_values(p, &span.scale),
        shape,
    )?
    .into_args();
    run(&lowered.kernel, &mut args, blocks).map_err(ExecError::Backend)?;
    let out = DequantizeArgs::from_args(args).ok_or_else(malformed)?;
    Ok(Tensor3::new(shape.dims(), out.out).map_err(QuantError::from)?)
}
