//! The typed argument lists of the quantize and dequantize kernels on host memory: the one place
//! that orders them as [`super::quantize_abi`] and [`super::dequantize_abi`] say, and sizes the
//! outputs from SPEC.md section 3. Every host caller (the backends, the tuner, `kvq profile`)
//! builds its launch through these.

use half::f16;

use crate::ir::interp::{Arg, Buffer};
use crate::limits::{check_addressable, LimitError};
use crate::reference::quantize::{param_shape, row_bytes};
use crate::scheme::{ParamType, Scheme};
use crate::tensor::Shape3;

/// `len` zero parameters of type `params`.
pub fn param_zeros(params: ParamType, len: usize) -> Buffer {
    match params {
        ParamType::F16 => Buffer::F16(vec![f16::ZERO; len]),
        ParamType::F32 => Buffer::F32(vec![0.0; len]),
    }
}

/// Parameter values `xs` stored as `params`.
pub fn param_values(params: ParamType, xs: &[f32]) -> Buffer {
    match params {
        ParamType::F16 => Buffer::F16(xs.iter().map(|&x| f16::from_f32(x)).collect()),
        ParamType::F32 => Buffer::F32(xs.to_vec()),
    }
}

/// Heads and tokens of `shape` as the kernels' u32 scalars, after checking that every element
/// index stays below 2^32.
fn sizes(shape: Shape3) -> Result<(u32, u32), LimitError> {
    let (h, t, d) = (shape.heads as u64, shape.tokens as u64, shape.dim as u64);
    check_addressable(h, t, d)?;
    let too_many = || LimitError::TooManyElements {
        heads: h,
        tokens: t,
        dim: d,
    };
    let heads = u32::try_from(h).map_err(|_| too_many())?;
    let tokens = u32::try_from(t).map_err(|_| too_many())?;
    Ok((heads, tokens))
}

/// The arguments of a quantize kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeArgs {
    /// Input `[heads, tokens, head_dim]` in the kernel's input type.
    pub x: Buffer,
    /// Packed codes (written).
    pub codes: Vec<u8>,
    /// Zero points (written), of the scheme's parameter type.
    pub zero: Buffer,
    /// Scales (written).
    pub scale: Buffer,
    /// `status[0]` (written): 0, 1 for non-finite input, 2 for a parameter overflow.
    pub status: u32,
    /// Heads.
    pub heads: u32,
    /// Tokens.
    pub tokens: u32,
}

impl QuantizeArgs {
    /// The input `x` of `shape` (of any element type) with zeroed outputs sized for `scheme`.
    pub fn new(scheme: &Scheme, x: Buffer, shape: Shape3) -> Result<QuantizeArgs, LimitError> {
        let (heads, tokens) = sizes(shape)?;
        let params: usize = param_shape(scheme, shape).iter().product();
        Ok(QuantizeArgs {
            x,
            codes: vec![0; shape.heads * shape.tokens * row_bytes(scheme, shape.dim)],
            zero: param_zeros(scheme.params, params),
            scale: param_zeros(scheme.params, params),
            status: 0,
            heads,
            tokens,
        })
    }

    /// The positional list, in ABI order.
    pub fn into_args(self) -> Vec<Arg> {
        vec![
            Arg::Buffer(self.x),
            Arg::Buffer(Buffer::U8(self.codes)),
            Arg::Buffer(self.zero),
            Arg::Buffer(self.scale),
            Arg::Buffer(Buffer::U32(vec![self.status])),
            Arg::U32(self.heads),
            Arg::U32(self.tokens),
        ]
    }

    /// Back from a positional list after a launch (`None` when a kernel changed its kinds).
    pub fn from_args(args: Vec<Arg>) -> Option<QuantizeArgs> {
        let [Arg::Buffer(x), Arg::Buffer(Buffer::U8(codes)), Arg::Buffer(zero), Arg::Buffer(scale), Arg::Buffer(Buffer::U32(status)), Arg::U32(heads), Arg::U32(tokens)] =
            <[Arg; 7]>::try_from(args).ok()?
        else {
            return None;
        };
        Some(QuantizeArgs {
            x,
            codes,
            zero,
            scale,
            status: *status.first()?,
            heads,
            tokens,
        })
    }
}

/// The arguments of a dequantize kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct DequantizeArgs {
    /// Packed codes.
    pub codes: Vec<u8>,
    /// Zero points, of the scheme's parameter type.
    pub zero: Buffer,
    /// Scales.
    pub scale: Buffer,
    /// Output `[heads, tokens, head_dim]` f32 (written).
    pub out: Vec<f32>,
    /// Heads.
    pub heads: u32,
    /// Tokens.
    pub tokens: u32,
}

impl DequantizeArgs {
    /// The packed span (codes, zero points, scales) of `shape` with a zeroed output.
    pub fn new(
        codes: Vec<u8>,
        zero: Buffer,
        scale: Buffer,
        shape: Shape3,
    ) -> Result<DequantizeArgs, LimitError> {
        let (heads, tokens) = sizes(shape)?;
        Ok(DequantizeArgs {
            codes,
            zero,
            scale,
            out: vec![0.0; shape.len()],
            heads,
            tokens,
        })
    }

    /// The positional list, in ABI order.
    pub fn into_args(self) -> Vec<Arg> {
        vec![
            Arg::Buffer(Buffer::U8(self.codes)),
            Arg::Buffer(self.zero),
            Arg::Buffer(self.scale),
            Arg::Buffer(Buffer::F32(self.out)),
            Arg::U32(self.heads),
            Arg::U32(self.tokens),
        ]
    }

    /// Back from a positional list after a launch (`None` when a kernel changed its kinds).
    pub fn from_args(args: Vec<Arg>) -> Option<DequantizeArgs> {
        let [Arg::Buffer(Buffer::U8(codes)), Arg::Buffer(zero), Arg::Buffer(scale), Arg::Buffer(Buffer::F32(out)), Arg::U32(heads), Arg::U32(tokens)] =
            <[Arg; 6]>::try_from(args).ok()?
        else {
            return None;
        };
        Some(DequantizeArgs {
            codes,
            zero,
            scale,
            out,
            heads,
            tokens,
        })
    }
}
