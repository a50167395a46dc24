//! Storage of one tensor (keys or values) of a quantized span ([`QuantPart`]).

use std::ops::Range;

use half::f16;
use kvq_ir::reference::quantize::row_bytes;
use kvq_ir::reference::{param_shape, PackedSpan, QuantError};
use kvq_ir::{Axis, Group, ParamType, Scheme, Shape3};

use super::device::{Device, DeviceError, DeviceQuantError, Host};
use super::SpanQuantizer;

/// Zero points and scales at the scheme's parameter precision, in [`param_shape`] layout.
#[derive(Debug)]
pub enum StoredParams<D: Device> {
    /// `params = f16`.
    F16 {
        /// Zero points.
        zero: D::Buf<f16>,
        /// Scales.
        scale: D::Buf<f16>,
    },
    /// `params = f32`.
    F32 {
        /// Zero points.
        zero: D::Buf<f32>,
        /// Scales.
        scale: D::Buf<f32>,
    },
}

/// One tensor (keys or values) of a quantized span on device `D`: packed codes in SPEC.md
/// section 3's layout and parameters at their stored precision.
///
/// Invariants (checked where one is made): `codes` holds `heads * tokens * row_bytes(scheme,
/// dim)` bytes and each parameter array `param_shape(scheme, shape)` values, all finite.
#[derive(Debug)]
pub struct QuantPart<D: Device> {
    scheme: Scheme,
    shape: Shape3,
    codes: D::Buf<u8>,
    params: StoredParams<D>,
}

/// Checks a span's size, lengths and parameters (finite, exact in the scheme's type).
pub(super) fn validate_span(span: &PackedSpan) -> Result<(), QuantError> {
    // Every length the span implies (codes, parameters) is at most its element count; one
    // that does not fit in a usize cannot be checked, let alone stored.
    let Shape3 { heads, tokens, dim } = span.shape;
    if heads
        .checked_mul(tokens)
        .and_then(|n| n.checked_mul(dim))
        .is_none()
    {
        return Err(QuantError::Malformed(format!(
            "a span of {heads} heads x {tokens} tokens x {dim} channels is too large"
        )));
    }
    span.validate()?;
    let exact = |x: f32| match span.scheme.params {
        ParamType::F16 => f16::from_f32(x).to_f32().to_bits() == x.to_bits(),
        ParamType::F32 => true,
    };
    for (name, xs) in [("zero", &span.zero), ("scale", &span.scale)] {
        if let Some(i) = xs.iter().position(|&x| !x.is_finite() || !exact(x)) {
            return Err(QuantError::Malformed(format!(
                "{name}[{i}] = {:?} is not a finite {} value",
                xs[i], span.scheme.params
            )));
        }
    }
    Ok(())
}

impl<D: Device> QuantPart<D> {
    /// Validates `span` (lengths, finite parameters representable in the scheme's parameter
    /// type) and stores it on `device`. Shape and scheme agreement with the cache are the
    /// caller's.
    pub fn from_span(device: &D, span: PackedSpan) -> Result<QuantPart<D>, DeviceQuantError> {
        validate_span(&span)?;
        let params = match span.scheme.params {
            ParamType::F16 => {
                let half = |xs: &[f32]| xs.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
                StoredParams::F16 {
                    zero: device.upload(&half(&span.zero))?,
                    scale: device.upload(&half(&span.scale))?,
                }
            }
            ParamType::F32 => StoredParams::F32 {
                zero: device.upload(&span.zero)?,
                scale: device.upload(&span.scale)?,
            },
        };
        Ok(QuantPart {
            scheme: span.scheme,
            shape: span.shape,
            codes: device.upload(&span.codes)?,
            params,
        })
    }

    /// A part from buffers a device's quantize kernels wrote; their lengths are checked against
    /// `scheme` and `shape` (the kernels guarantee finite parameters).
    pub fn from_buffers(
        scheme: Scheme,
        shape: Shape3,
        codes: D::Buf<u8>,
        params: StoredParams<D>,
    ) -> Result<QuantPart<D>, QuantError> {
        let want_codes = shape
            .heads
            .checked_mul(shape.tokens)
            .and_then(|n| n.checked_mul(row_bytes(&scheme, shape.dim)));
        let want_params: usize = param_shape(&scheme, shape).iter().product();
        let (zero, scale, is_f16) = match &params {
            StoredParams::F16 { zero, scale } => (D::len(zero), D::len(scale), true),
            StoredParams::F32 { zero, scale } => (D::len(zero), D::len(scale), false),
        };
        let ok = want_codes == Some(D::len(&codes))
            && zero == want_params
            && scale == want_params
            && is_f16 == (scheme.params == ParamType::F16);
        if !ok {
            return Err(QuantError::Malformed(format!(
                "the device's span buffers ({} code bytes, {zero} + {scale} parameters) do not \
                 fit {} heads x {} tokens x {} channels",
                D::len(&codes),
                shape.heads,
                shape.tokens,
                shape.dim
            )));
        }
        Ok(QuantPart {
            scheme,
            shape,
            codes,
            params,
        })
    }

    /// The span in SPEC.md section 3's format (parameters as their exact f32 values).
    pub(super) fn to_span(&self, device: &D) -> Result<PackedSpan, DeviceError> {
        let (zero, scale) = match &self.params {
            StoredParams::F16 { zero, scale } => {
                let wide = |xs: Vec<f16>| xs.iter().map(|x| x.to_f32()).collect();
                (wide(device.download(zero)?), wide(device.download(scale)?))
            }
            StoredParams::F32 { zero, scale } => (device.download(zero)?, device.download(scale)?),
        };
        Ok(PackedSpan {
            scheme: self.scheme,
            shape: self.shape,
            codes: device.download(&self.codes)?,
            zero,
            scale,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// `[heads, tokens, dim]` of the quantized tensor.
    pub fn shape(&self) -> Shape3 {
        self.shape
    }

    /// Tokens in the span.
    pub fn tokens(&self) -> usize {
        self.shape.tokens
    }

    /// The packed codes.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn codes(&self) -> &D::Buf<u8> {
        &self.codes
    }

    /// The parameters.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn params(&self) -> &StoredParams<D> {
        &self.params
    }

    /// Bytes of the packed codes.
    pub(super) fn code_bytes(&self) -> usize {
        D::len(&self.codes)
    }

    /// Bytes of the parameters at their stored precision.
    pub(super) fn param_bytes(&self) -> usize {
        match &self.params {
            StoredParams::F16 { zero, scale } => (D::len(zero) + D::len(scale)) * size_of::<f16>(),
            StoredParams::F32 { zero, scale } => (D::len(zero) + D::len(scale)) * size_of::<f32>(),
        }
    }
}

impl<Q: SpanQuantizer> QuantPart<Host<Q>> {
    /// Packed bytes of one (head, token) row.
    pub(super) fn row_bytes(&self) -> usize {
        row_bytes(&self.scheme, self.shape.dim)
    }

    /// The packed rows of `head`, `[tokens, row_bytes]`.
    pub(super) fn head_codes(&self, head: usize) -> &[u8] {
        let per_head = self.shape.tokens * self.row_bytes();
        &self.codes[head * per_head..(head + 1) * per_head]
    }

    /// `[heads, rows, cols]` of the parameter arrays.
    pub(super) fn param_dims(&self) -> [usize; 3] {
        param_shape(&self.scheme, self.shape)
    }

    /// Tokens per parameter row along the token axis: the group length for axis = channel
    /// (the span for `group = all`), 1 for axis = token.
    pub(super) fn tokens_per_param_row(&self) -> usize {
        match (self.scheme.axis, self.scheme.group) {
            (Axis::Channel, Group::All) => self.shape.tokens,
            (Axis::Channel, Group::Size(n)) => n.get(),
            (Axis::Token, _) => 1,
        }
    }

    /// Copies parameters `range` (flat indices) as f32 into `zero` and `scale` (same length).
    pub(super) fn params_into(&self, range: Range<usize>, zero: &mut [f32], scale: &mut [f32]) {
        match &self.params {
            StoredParams::F16 { zero: z, scale: s } => {
                for (o, x) in zero.iter_mut().zip(&z[range.clone()]) {
                    *o = x.to_f32();
                }
                for (o, x) in scale.iter_mut().zip(&s[range]) {
                    *o = x.to_f32();
                }
            }
            StoredParams::F32 { zero: z, scale: s } => {
                zero.copy_from_slice(&z[range.clone()]);
                scale.copy_from_slice(&s[range]);
            }
        }
    }

    /// The part as borrowed slices, for an external attention kernel.
    pub(super) fn view(&self) -> super::PartView<'_> {
        super::PartView {
            scheme: self.scheme,
            tokens: self.shape.tokens,
            codes: &self.codes,
            params: match &self.params {
                StoredParams::F16 { zero, scale } => super::ParamView::F16 { zero, scale },
                StoredParams::F32 { zero, scale } => super::ParamView::F32 { zero, scale },
            },
        }
    }
}
