//! Storage of one segment: a full-precision run of tokens that can grow ([`FpSegment`]), or one
//! tensor (keys or values) of a quantized span ([`QuantPart`]).

use std::ops::Range;

use half::f16;
use kvq_ir::reference::quantize::row_bytes;
use kvq_ir::reference::{param_shape, PackedSpan, QuantError};
use kvq_ir::{Axis, Group, ParamType, Scheme, Shape3, Tensor3};

use super::device::{Device, DeviceError, DeviceQuantError, Host};
use super::SpanQuantizer;

/// Key and value buffers of a segment on device `D`.
type KvBufs<D> = (<D as Device>::Buf<f32>, <D as Device>::Buf<f32>);

/// Smallest capacity, in tokens, a growing segment allocates.
const MIN_CAPACITY: usize = 8;

/// Where the rows a segment copies come from: a host tensor, or a `[heads, tokens, dim]` f32
/// buffer already in the device's memory (copied on the device).
#[derive(Debug)]
pub(super) enum Rows<'a, D: Device> {
    /// `[heads, tokens, dim]` on the host.
    Host(&'a Tensor3),
    /// `[heads, tokens, dim]` in device memory (its length checked by the caller).
    Device {
        /// The buffer.
        buf: &'a D::Buf<f32>,
        /// Its tokens per head.
        tokens: usize,
    },
}

impl<D: Device> Clone for Rows<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Device> Copy for Rows<'_, D> {}

impl<D: Device> Rows<'_, D> {
    /// Writes tokens `range` of `head` (rows of `dim`) into `dst` from element `at`.
    fn write_rows(
        self,
        device: &D,
        dst: &mut D::Buf<f32>,
        at: usize,
        head: usize,
        range: Range<usize>,
        dim: usize,
    ) -> Result<(), DeviceError> {
        let overrun = || {
            DeviceError::new(
                "copying rows",
                format!("tokens {range:?} of head {head} are outside the input"),
            )
        };
        match self {
            Rows::Host(x) => {
                let from = x.shape().index(head, range.start, 0);
                let rows = x
                    .data()
                    .get(from..from + range.len() * dim)
                    .ok_or_else(overrun)?;
                device.write(dst, at, rows)
            }
            Rows::Device { buf, tokens } => {
                let from = head
                    .checked_mul(tokens)
                    .and_then(|r| r.checked_add(range.start))
                    .and_then(|r| r.checked_mul(dim))
                    .ok_or_else(overrun)?;
                device.copy(dst, at, buf, from..from + range.len() * dim)
            }
        }
    }
}

/// Full-precision keys and values of a run of tokens, f32, head-major, on device `D`.
///
/// Invariants: `storage` is `None` exactly when `capacity == 0`; otherwise both buffers hold
/// `heads * capacity * dim` values, `tokens <= capacity`, and the row of (head h, token t)
/// starts at `(h * capacity + t) * dim`. Rows at `t >= tokens` are unspecified.
#[derive(Debug)]
pub struct FpSegment<D: Device> {
    heads: usize,
    dim: usize,
    tokens: usize,
    capacity: usize,
    storage: Option<KvBufs<D>>,
}

impl<D: Device> FpSegment<D> {
    /// An empty segment that allocates nothing.
    pub(super) fn empty(heads: usize, dim: usize) -> FpSegment<D> {
        FpSegment {
            heads,
            dim,
            tokens: 0,
            capacity: 0,
            storage: None,
        }
    }

    /// Tokens `range` of `k` and `v` (`heads` x `dim` rows, range within them), at exactly
    /// their size.
    pub(super) fn copy_of(
        device: &D,
        (heads, dim): (usize, usize),
        k: Rows<'_, D>,
        v: Rows<'_, D>,
        range: Range<usize>,
    ) -> Result<FpSegment<D>, DeviceError> {
        let mut seg = FpSegment::empty(heads, dim);
        seg.extend(device, k, v, range)?;
        Ok(seg)
    }

    /// Tokens held.
    pub(super) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Tokens that fit without reallocating.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The key and value buffers (`None` when nothing is allocated).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn buffers(&self) -> Option<&KvBufs<D>> {
        self.storage.as_ref()
    }

    /// Appends tokens `range` of `k` and `v` (rows of the segment's heads and dim, range within
    /// them), growing by doubling when they do not fit. On error the segment is unchanged (rows
    /// past its tokens may have been written).
    pub(super) fn extend(
        &mut self,
        device: &D,
        k: Rows<'_, D>,
        v: Rows<'_, D>,
        range: Range<usize>,
    ) -> Result<(), DeviceError> {
        let n = range.len();
        if n == 0 {
            return Ok(());
        }
        let need = self.tokens + n;
        let mut grown = None;
        if need > self.capacity {
            // An exact first allocation when the segment starts empty with a known size (a
            // prompt's prefix or suffix); doubling after that.
            let capacity = if self.capacity == 0 {
                need
            } else {
                need.max(self.capacity.saturating_mul(2)).max(MIN_CAPACITY)
            };
            grown = Some((self.relayout(device, capacity)?, capacity));
        }
        let capacity = grown.as_ref().map_or(self.capacity, |(_, c)| *c);
        let (kb, vb) = match (&mut grown, &mut self.storage) {
            (Some(((k, v), _)), _) | (None, Some((k, v))) => (k, v),
            (None, None) => {
                return Err(DeviceError::new(
                    "appending to a segment",
                    "no storage for a segment of non-zero capacity",
                ))
            }
        };
        let dim = self.dim;
        for h in 0..self.heads {
            let at = (h * capacity + self.tokens) * dim;
            k.write_rows(device, kb, at, h, range.clone(), dim)?;
            v.write_rows(device, vb, at, h, range.clone(), dim)?;
        }
        if let Some((storage, capacity)) = grown {
            self.storage = Some(storage);
            self.capacity = capacity;
        }
        self.tokens = need;
        Ok(())
    }

    /// New buffers of `capacity >= tokens` tokens holding the live tokens.
    fn relayout(&self, device: &D, capacity: usize) -> Result<KvBufs<D>, DeviceError> {
        let dim = self.dim;
        let live = self.tokens * dim;
        let len = self
            .heads
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(dim))
            .ok_or_else(|| DeviceError::new("growing a segment", "its size overflows"))?;
        let mut k = device.zeros::<f32>(len)?;
        let mut v = device.zeros::<f32>(len)?;
        if let Some((old_k, old_v)) = &self.storage {
            for h in 0..self.heads {
                let (old, new) = (h * self.capacity * dim, h * capacity * dim);
                device.copy(&mut k, new, old_k, old..old + live)?;
                device.copy(&mut v, new, old_v, old..old + live)?;
            }
        }
        Ok((k, v))
    }

    /// Bytes of the live tokens (keys and values).
    pub(super) fn live_bytes(&self) -> usize {
        2 * self.heads * self.tokens * self.dim * size_of::<f32>()
    }

    /// Bytes allocated (keys and values), slack included.
    pub(super) fn reserved_bytes(&self) -> usize {
        self.storage
            .as_ref()
            .map_or(0, |(k, v)| (D::len(k) + D::len(v)) * size_of::<f32>())
    }
}

impl<Q: SpanQuantizer> FpSegment<Host<Q>> {
    /// The live key rows of `head`, `[tokens, dim]`.
    pub(super) fn keys(&self, head: usize) -> &[f32] {
        self.rows(head, 0)
    }

    /// The live value rows of `head`, `[tokens, dim]`.
    pub(super) fn values(&self, head: usize) -> &[f32] {
        self.rows(head, 1)
    }

    fn rows(&self, head: usize, which: usize) -> &[f32] {
        let Some((k, v)) = &self.storage else {
            return &[];
        };
        let at = head * self.capacity * self.dim;
        let buf = if which == 0 { k } else { v };
        &buf[at..at + self.tokens * self.dim]
    }
}

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
