//! The reference quantizer: a `[kv_heads, tokens, head_dim]` tensor to a [`PackedSpan`] under one
//! scheme, and back.

use thiserror::Error;

use super::pack::{pack_row, unpack_row};
use super::range::{code, dequantize_value, group_params, group_range};
use crate::scheme::{Axis, Group, ParamType, Scheme};
use crate::tensor::{Shape3, Tensor3, TensorError};

/// Why a tensor cannot be quantized (or a packed span is malformed). Nothing is produced.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    /// A NaN or infinity in the input.
    #[error("non-finite value {value} at head {head}, token {token}, channel {channel}")]
    NonFinite {
        /// kv head.
        head: usize,
        /// Token within the span.
        token: usize,
        /// Channel within the head.
        channel: usize,
        /// The offending value.
        value: f32,
    },
    /// head_dim codes of `bits` bits do not fill whole bytes.
    #[error("head_dim {dim} with {bits}-bit codes does not fill whole bytes (head_dim must be a multiple of {multiple})")]
    RowNotByteAligned {
        /// head_dim.
        dim: usize,
        /// Code width.
        bits: u32,
        /// The multiple head_dim must be.
        multiple: u32,
    },
    /// axis = token with a group size that does not divide head_dim.
    #[error(
        "group = {group} does not divide head_dim {dim} (axis = token needs a divisor of head_dim)"
    )]
    GroupDoesNotDivide {
        /// The group size.
        group: usize,
        /// head_dim.
        dim: usize,
    },
    /// A group's parameters do not fit the parameter type.
    #[error("parameters of the group at head {head}, token {token}, channel {channel} (range [{lo}, {hi}]) do not fit {params}{}", if *.params == ParamType::F16 { "; use params = f32" } else { "" })]
    ParamOverflow {
        /// kv head of the group.
        head: usize,
        /// First token of the group.
        token: usize,
        /// First channel of the group.
        channel: usize,
        /// The rule's lo.
        lo: f32,
        /// The rule's hi.
        hi: f32,
        /// The parameter type that overflowed.
        params: ParamType,
    },
    /// The parts of a packed span disagree with its shape.
    #[error("malformed packed span: {0}")]
    Malformed(String),
    /// The backend running a quantize kernel failed (compile, load or launch).
    #[error("quantizer backend: {0}")]
    Backend(String),
    /// A tensor-level problem.
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// A quantized span in the format of SPEC.md section 3.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedSpan {
    /// The scheme the span was quantized with.
    pub scheme: Scheme,
    /// `[kv_heads, tokens, head_dim]` of the unpacked span.
    pub shape: Shape3,
    /// Codes, `[kv_heads, tokens, head_dim * b / 8]` bytes, token-major.
    pub codes: Vec<u8>,
    /// Zero points (the f32 values of the stored parameters), in [`param_shape`] layout.
    pub zero: Vec<f32>,
    /// Scales, same layout as `zero`.
    pub scale: Vec<f32>,
}

/// Shape of each parameter array: `[kv_heads, token_groups, head_dim]` for axis = channel,
/// `[kv_heads, tokens, head_dim / N]` for axis = token.
pub fn param_shape(scheme: &Scheme, shape: Shape3) -> [usize; 3] {
    match (scheme.axis, scheme.group) {
        (Axis::Channel, Group::All) => [shape.heads, 1, shape.dim],
        (Axis::Channel, Group::Size(n)) => [shape.heads, shape.tokens.div_ceil(n.get()), shape.dim],
        (Axis::Token, Group::All) => [shape.heads, shape.tokens, 1],
        (Axis::Token, Group::Size(n)) => [shape.heads, shape.tokens, shape.dim / n.get()],
    }
}

/// Bytes of one packed (head, token) row.
pub fn row_bytes(scheme: &Scheme, dim: usize) -> usize {
    dim * scheme.bits.width() as usize / 8
}

/// Checks that `scheme` can quantize tensors of `shape` (byte-aligned rows, dividing groups).
pub fn check_shape(scheme: &Scheme, shape: Shape3) -> Result<(), QuantError> {
    let bits = scheme.bits.width();
    let multiple = 8 / bits;
    if shape.dim % multiple as usize != 0 {
        return Err(QuantError::RowNotByteAligned {
            dim: shape.dim,
            bits,
            multiple,
        });
    }
    if let (Axis::Token, Group::Size(n)) = (scheme.axis, scheme.group) {
        if shape.dim % n.get() != 0 {
            return Err(QuantError::GroupDoesNotDivide {
                group: n.get(),
                dim: shape.dim,
            });
        }
    }
    Ok(())
}

/// One group: its parameter index and the (token, channel) rectangle it covers in one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCell {
    /// kv head.
    pub head: usize,
    /// Covered tokens.
    pub tokens: (usize, usize),
    /// Covered channels.
    pub channels: (usize, usize),
    /// Index into the parameter arrays.
    pub param: usize,
}

/// Every group of a span, in parameter order.
pub fn groups(scheme: &Scheme, shape: Shape3) -> Vec<GroupCell> {
    let [heads, rows, cols] = param_shape(scheme, shape);
    let mut cells = Vec::with_capacity(heads * rows * cols);
    for head in 0..heads {
        for row in 0..rows {
            for col in 0..cols {
                let param = (head * rows + row) * cols + col;
                let (tokens, channels) = match (scheme.axis, scheme.group) {
                    (Axis::Channel, Group::All) => ((0, shape.tokens), (col, col + 1)),
                    (Axis::Channel, Group::Size(n)) => {
                        let start = row * n.get();
                        ((start, (start + n.get()).min(shape.tokens)), (col, col + 1))
                    }
                    (Axis::Token, Group::All) => ((row, row + 1), (0, shape.dim)),
                    (Axis::Token, Group::Size(n)) => {
                        ((row, row + 1), (col * n.get(), (col + 1) * n.get()))
                    }
                };
                cells.push(GroupCell {
                    head,
                    tokens,
                    channels,
                    param,
                });
            }
        }
    }
    cells
}

/// Quantizes `x` under `scheme` (SPEC.md sections 2-3), exactly as the spec writes it.
pub fn quantize(x: &Tensor3, scheme: &Scheme) -> Result<PackedSpan, QuantError> {
    let shape = x.shape();
    check_shape(scheme, shape)?;
    if let Some(([head, token, channel], value)) = x.first_non_finite() {
        return Err(QuantError::NonFinite {
            head,
            token,
            channel,
            value,
        });
    }
    let max_code = scheme.bits.max_code();
    let [ph, pr, pc] = param_shape(scheme, shape);
    let mut zero = vec![0.0f32; ph * pr * pc];
    let mut scale = vec![0.0f32; ph * pr * pc];
    let mut codes = vec![0u8; shape.len()];
    let mut values = Vec::new();
    for cell in groups(scheme, shape) {
        values.clear();
        for t in cell.tokens.0..cell.tokens.1 {
            for c in cell.channels.0..cell.channels.1 {
                values.push(x.at(cell.head, t, c));
            }
        }
        let (lo, hi) = group_range(scheme.rule, &mut values);
        let (z, s) =
            group_params(lo, hi, max_code, scheme.params).ok_or(QuantError::ParamOverflow {
                head: cell.head,
                token: cell.tokens.0,
                channel: cell.channels.0,
                lo,
                hi,
                params: scheme.params,
            })?;
        zero[cell.param] = z;
        scale[cell.param] = s;
        for t in cell.tokens.0..cell.tokens.1 {
            for c in cell.channels.0..cell.channels.1 {
                let i = shape.index(cell.head, t, c);
                codes[i] = code(x.data()[i], z, s, max_code);
            }
        }
    }
    let row = row_bytes(scheme, shape.dim);
    let mut packed = vec![0u8; shape.heads * shape.tokens * row];
    for (dst, src) in packed
        .chunks_exact_mut(row)
        .zip(codes.chunks_exact(shape.dim))
    {
        pack_row(src, scheme.bits, scheme.order, dst);
    }
    Ok(PackedSpan {
        scheme: *scheme,
        shape,
        codes: packed,
        zero,
        scale,
    })
}

impl PackedSpan {
    /// Checks that codes and parameters have the lengths the scheme and shape require.
    pub fn validate(&self) -> Result<(), QuantError> {
        let Shape3 { heads, tokens, dim } = self.shape;
        // Bounded first, so that no size below can overflow.
        let elements = (heads as u64)
            .checked_mul(tokens as u64)
            .and_then(|n| n.checked_mul(dim as u64));
        if dim == 0 || elements.is_none_or(|n| n > crate::limits::MAX_ELEMENTS) {
            return Err(QuantError::Malformed(format!(
                "{heads} heads x {tokens} tokens x {dim} channels: a span needs 1 or more channels \
                 and at most {} elements",
                crate::limits::MAX_ELEMENTS
            )));
        }
        check_shape(&self.scheme, self.shape)?;
        let want_codes = heads * tokens * row_bytes(&self.scheme, dim);
        let want_params: usize = param_shape(&self.scheme, self.shape).iter().product();
        if self.codes.len() != want_codes {
            return Err(QuantError::Malformed(format!(
                "{} code bytes, expected {want_codes}",
                self.codes.len()
            )));
        }
        if self.zero.len() != want_params || self.scale.len() != want_params {
            return Err(QuantError::Malformed(format!(
                "{} zeros and {} scales, expected {want_params} each",
                self.zero.len(),
                self.scale.len()
            )));
        }
        Ok(())
    }

    /// Unpacked codes, `[kv_heads, tokens, head_dim]`, one code per byte.
    pub fn unpack_codes(&self) -> Vec<u8> {
        let row = row_bytes(&self.scheme, self.shape.dim);
        let mut out = vec![0u8; self.shape.len()];
        for (dst, src) in out
            .chunks_exact_mut(self.shape.dim)
            .zip(self.codes.chunks_exact(row))
        {
            unpack_row(src, self.scheme.bits, self.scheme.order, dst);
        }
        out
    }

    /// The dequantized tensor `zero + scale * code`.
    pub fn dequantize(&self) -> Result<Tensor3, QuantError> {
        self.validate()?;
        let codes = self.unpack_codes();
        let mut out = vec![0.0f32; self.shape.len()];
        for cell in groups(&self.scheme, self.shape) {
            let (z, s) = (self.zero[cell.param], self.scale[cell.param]);
            for t in cell.tokens.0..cell.tokens.1 {
                for c in cell.channels.0..cell.channels.1 {
                    let i = self.shape.index(cell.head, t, c);
                    out[i] = dequantize_value(codes[i], z, s);
                }
            }
        }
        Ok(Tensor3::new(self.shape.dims(), out)?)
    }

    /// Bits per element actually stored: (code bits + parameter bits) / elements.
    pub fn bits_per_element(&self) -> f64 {
        let param_bits =
            (self.zero.len() + self.scale.len()) as f64 * self.scheme.params.bits() as f64;
        (self.codes.len() as f64 * 8.0 + param_bits) / self.shape.len() as f64
    }
}
