//! Storage of one segment: a full-precision run of tokens that can grow ([`FpSegment`]), or one
//! tensor (keys or values) of a quantized span ([`QuantPart`]).

use std::ops::Range;

use half::f16;
use kvq_ir::reference::quantize::row_bytes;
use kvq_ir::reference::{param_shape, PackedSpan, QuantError};
use kvq_ir::{Axis, Group, ParamType, Scheme, Shape3, Tensor3};

/// Smallest capacity, in tokens, a growing segment allocates.
const MIN_CAPACITY: usize = 8;

/// Full-precision keys and values of a run of tokens, f32, head-major.
///
/// Invariants: `k.len() == v.len() == heads * capacity * dim`, `tokens <= capacity`; the row of
/// (head h, token t) starts at `(h * capacity + t) * dim`; rows at `t >= tokens` are zero.
#[derive(Debug, Clone)]
pub(super) struct FpSegment {
    heads: usize,
    dim: usize,
    tokens: usize,
    capacity: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl FpSegment {
    /// An empty segment that allocates nothing.
    pub(super) fn empty(heads: usize, dim: usize) -> FpSegment {
        FpSegment {
            heads,
            dim,
            tokens: 0,
            capacity: 0,
            k: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Tokens `range` of `k` and `v` (same shape, range within it), at exactly their size.
    pub(super) fn copy_of(k: &Tensor3, v: &Tensor3, range: Range<usize>) -> FpSegment {
        let s = k.shape();
        let mut seg = FpSegment::empty(s.heads, s.dim);
        seg.extend(k, v, range);
        seg
    }

    /// Tokens held.
    pub(super) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Tokens that fit without reallocating.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends tokens `range` of `k` and `v` (same shape as the segment's heads and dim, range
    /// within it), growing by doubling when they do not fit.
    pub(super) fn extend(&mut self, k: &Tensor3, v: &Tensor3, range: Range<usize>) {
        let n = range.len();
        if n == 0 {
            return;
        }
        let need = self.tokens + n;
        if need > self.capacity {
            // An exact first allocation when the segment starts empty with a known size (a
            // prompt's prefix or suffix); doubling after that.
            let grown = if self.capacity == 0 {
                need
            } else {
                need.max(self.capacity.saturating_mul(2)).max(MIN_CAPACITY)
            };
            self.relayout(grown);
        }
        let dim = self.dim;
        for h in 0..self.heads {
            let at = (h * self.capacity + self.tokens) * dim;
            let from = k.shape().index(h, range.start, 0);
            self.k[at..at + n * dim].copy_from_slice(&k.data()[from..from + n * dim]);
            self.v[at..at + n * dim].copy_from_slice(&v.data()[from..from + n * dim]);
        }
        self.tokens = need;
    }

    /// Moves the live tokens into buffers of `capacity >= tokens` tokens.
    fn relayout(&mut self, capacity: usize) {
        let dim = self.dim;
        let live = self.tokens * dim;
        let mut k = vec![0.0f32; self.heads * capacity * dim];
        let mut v = vec![0.0f32; self.heads * capacity * dim];
        for h in 0..self.heads {
            let (old, new) = (h * self.capacity * dim, h * capacity * dim);
            k[new..new + live].copy_from_slice(&self.k[old..old + live]);
            v[new..new + live].copy_from_slice(&self.v[old..old + live]);
        }
        self.k = k;
        self.v = v;
        self.capacity = capacity;
    }

    /// The live key rows of `head`, `[tokens, dim]`.
    pub(super) fn keys(&self, head: usize) -> &[f32] {
        let at = head * self.capacity * self.dim;
        &self.k[at..at + self.tokens * self.dim]
    }

    /// The live value rows of `head`, `[tokens, dim]`.
    pub(super) fn values(&self, head: usize) -> &[f32] {
        let at = head * self.capacity * self.dim;
        &self.v[at..at + self.tokens * self.dim]
    }

    /// Bytes of the live tokens (keys and values).
    pub(super) fn live_bytes(&self) -> usize {
        2 * self.heads * self.tokens * self.dim * size_of::<f32>()
    }

    /// Bytes allocated (keys and values), slack included.
    pub(super) fn reserved_bytes(&self) -> usize {
        (self.k.capacity() + self.v.capacity()) * size_of::<f32>()
    }
}

/// Zero points and scales at the scheme's parameter precision, in [`param_shape`] layout.
#[derive(Debug, Clone, PartialEq)]
enum Params {
    F16 { zero: Vec<f16>, scale: Vec<f16> },
    F32 { zero: Vec<f32>, scale: Vec<f32> },
}

/// One tensor of a quantized span: packed codes in SPEC.md section 3's layout and parameters at
/// their stored precision.
///
/// Invariants (checked by [`QuantPart::from_span`]): `codes` holds
/// `heads * tokens * row_bytes(scheme, dim)` bytes and each parameter array
/// `param_shape(scheme, shape)` values, all finite.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct QuantPart {
    scheme: Scheme,
    shape: Shape3,
    codes: Vec<u8>,
    params: Params,
}

impl QuantPart {
    /// Validates `span` (lengths, finite parameters representable in the scheme's parameter
    /// type) and stores it. Shape and scheme agreement with the cache are the caller's.
    pub(super) fn from_span(span: PackedSpan) -> Result<QuantPart, QuantError> {
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
        let params = match span.scheme.params {
            ParamType::F16 => Params::F16 {
                zero: span.zero.iter().map(|&x| f16::from_f32(x)).collect(),
                scale: span.scale.iter().map(|&x| f16::from_f32(x)).collect(),
            },
            ParamType::F32 => Params::F32 {
                zero: span.zero,
                scale: span.scale,
            },
        };
        Ok(QuantPart {
            scheme: span.scheme,
            shape: span.shape,
            codes: span.codes,
            params,
        })
    }

    /// The span in SPEC.md section 3's format (parameters as their exact f32 values).
    pub(super) fn to_span(&self) -> PackedSpan {
        let (zero, scale) = match &self.params {
            Params::F16 { zero, scale } => (
                zero.iter().map(|x| x.to_f32()).collect(),
                scale.iter().map(|x| x.to_f32()).collect(),
            ),
            Params::F32 { zero, scale } => (zero.clone(), scale.clone()),
        };
        PackedSpan {
            scheme: self.scheme,
            shape: self.shape,
            codes: self.codes.clone(),
            zero,
            scale,
        }
    }

    /// The scheme.
    pub(super) fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Tokens in the span.
    pub(super) fn tokens(&self) -> usize {
        self.shape.tokens
    }

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
            Params::F16 { zero: z, scale: s } => {
                for (o, x) in zero.iter_mut().zip(&z[range.clone()]) {
                    *o = x.to_f32();
                }
                for (o, x) in scale.iter_mut().zip(&s[range]) {
                    *o = x.to_f32();
                }
            }
            Params::F32 { zero: z, scale: s } => {
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
                Params::F16 { zero, scale } => super::ParamView::F16 { zero, scale },
                Params::F32 { zero, scale } => super::ParamView::F32 { zero, scale },
            },
        }
    }

    /// Bytes of the packed codes.
    pub(super) fn code_bytes(&self) -> usize {
        self.codes.len()
    }

    /// Bytes of the parameters at their stored precision.
    pub(super) fn param_bytes(&self) -> usize {
        match &self.params {
            Params::F16 { zero, scale } => (zero.len() + scale.len()) * size_of::<f16>(),
            Params::F32 { zero, scale } => (zero.len() + scale.len()) * size_of::<f32>(),
        }
    }
}
