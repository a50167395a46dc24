//! Running lowered kernels on host memory: the argument buffers of a launch, built from a span
//! and read back into the packed format, independent of which backend runs the kernel (the
//! interpreter here, generated host code in `kvq-codegen`).

use half::{bf16, f16};
use thiserror::Error;

use crate::ir::interp::{Arg, Buffer};
use crate::ir::Kernel;
use crate::reference::quantize::{param_shape, row_bytes};
use crate::reference::{quantize as reference_quantize, PackedSpan, QuantError};
use crate::scheme::{ParamType, Scheme};
use crate::tensor::{Shape3, Tensor3};

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
    match input {
        InputType::F16 => Buffer::F16(x.data().iter().map(|&v| f16::from_f32(v)).collect()),
        InputType::BF16 => Buffer::BF16(x.data().iter().map(|&v| bf16::from_f32(v)).collect()),
        InputType::F32 => Buffer::F32(x.data().to_vec()),
    }
}

fn param_buffer(params: ParamType, len: usize) -> Buffer {
    match params {
        ParamType::F16 => Buffer::F16(vec![f16::ZERO; len]),
        ParamType::F32 => Buffer::F32(vec![0.0; len]),
    }
}

fn param_values(buffer: &Buffer) -> Option<Vec<f32>> {
    match buffer {
        Buffer::F16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
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
    let n_params: usize = param_shape(scheme, shape).iter().product();
    let mut args = vec![
        Arg::Buffer(input_buffer(x, input)),
        Arg::Buffer(Buffer::U8(vec![
            0;
            shape.heads
                * shape.tokens
                * row_bytes(scheme, shape.dim)
        ])),
        Arg::Buffer(param_buffer(scheme.params, n_params)),
        Arg::Buffer(param_buffer(scheme.params, n_params)),
        Arg::Buffer(Buffer::U32(vec![0])),
        Arg::U32(shape.heads as u32),
        Arg::U32(shape.tokens as u32),
    ];
    run(&lowered.kernel, &mut args, blocks).map_err(ExecError::Backend)?;
    let malformed = || QuantError::Malformed("kernel arguments changed kind".to_string());
    let [_, Arg::Buffer(Buffer::U8(codes)), Arg::Buffer(zero), Arg::Buffer(scale), Arg::Buffer(Buffer::U32(status)), ..] =
        args.as_slice()
    else {
        return Err(malformed().into());
    };
    if status.first().is_some_and(|&s| s != 0) {
        // The kernel found a non-finite value or an overflow; the reference names it.
        let exact = Tensor3::new(shape.dims(), input_values(&args[0]).ok_or_else(malformed)?)
            .map_err(QuantError::from)?;
        return Err(match reference_quantize(&exact, scheme) {
            Err(e) => e.into(),
            Ok(_) => QuantError::Malformed(format!(
                "kernel flagged status {} on valid input",
                status[0]
            ))
            .into(),
        });
    }
    Ok(PackedSpan {
        scheme: *scheme,
        shape,
        codes: codes.clone(),
        zero: param_values(zero).ok_or_else(malformed)?,
        scale: param_values(scale).ok_or_else(malformed)?,
    })
}

fn input_values(arg: &Arg) -> Option<Vec<f32>> {
    match arg {
        Arg::Buffer(Buffer::F16(v)) => Some(v.iter().map(|x| x.to_f32()).collect()),
        Arg::Buffer(Buffer::BF16(v)) => Some(v.iter().map(|x| x.to_f32()).collect()),
        Arg::Buffer(Buffer::F32(v)) => Some(v.clone()),
        _ => None,
    }
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
    let params = |v: &[f32]| match span.scheme.params {
        ParamType::F16 => Buffer::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        ParamType::F32 => Buffer::F32(v.to_vec()),
    };
    let mut args = vec![
        Arg::Buffer(Buffer::U8(span.codes.clone())),
        Arg::Buffer(params(&span.zero)),
        Arg::Buffer(params(&span.scale)),
        Arg::Buffer(Buffer::F32(vec![0.0; shape.len()])),
        Arg::U32(shape.heads as u32),
        Arg::U32(shape.tokens as u32),
    ];
    run(&lowered.kernel, &mut args, blocks).map_err(ExecError::Backend)?;
    match args.swap_remove(3) {
        Arg::Buffer(Buffer::F32(out)) => {
            Ok(Tensor3::new(shape.dims(), out).map_err(QuantError::from)?)
        }
        _ => Err(QuantError::Malformed("kernel arguments changed kind".to_string()).into()),
    }
}
