//! The segments of one (layer, sequence) slot, and the cache operations that write and read them
//! whole: prefill, append, import and export. Each operation validates everything first and
//! changes the slot only at its end, so an error leaves the cache unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use kvq_ir::lower::InputType;
use kvq_ir::reference::PackedSpan;
use kvq_ir::{Scheme, Shape3, Tensor3};

use super::device::{Device, DeviceQuantError};
use super::fp_segment::{round_to, with_fp, FpElem, FpSegment, Rows};
use super::segment::QuantPart;
use super::{CacheError, KvPart, SeqId, VisualKvCache};

/// One sequence: a slot per layer, `None` until that layer is prefilled or imported.
#[derive(Debug)]
pub(super) struct Sequence<D: Device> {
    pub(super) layers: Vec<Option<LayerState<D>>>,
}

impl<D: Device> Sequence<D> {
    pub(super) fn new(layers: usize) -> Sequence<D> {
        Sequence {
            layers: (0..layers).map(|_| None).collect(),
        }
    }
}

/// The segments of one (layer, sequence), in positional order `prefix | span | suffix`.
/// At least one of them holds a token.
#[derive(Debug)]
pub(super) struct LayerState<D: Device> {
    /// Full-precision tokens before the visual span (exact size).
    pub(super) prefix: FpSegment<D>,
    /// The quantized visual span (keys, values), same token count; `None` for an empty range.
    pub(super) span: Option<(QuantPart<D>, QuantPart<D>)>,
    /// Full-precision tokens after the span, growing by doubling on append.
    pub(super) suffix: FpSegment<D>,
}

impl<D: Device> LayerState<D> {
    /// Tokens in all segments.
    pub(super) fn tokens(&self) -> usize {
        self.prefix.tokens()
            + self.span.as_ref().map_or(0, |(k, _)| k.tokens())
            + self.suffix.tokens()
    }
}

impl<D: Device> VisualKvCache<D> {
    /// Stores a prompt's keys and values `k`, `v` = `[kv_heads, tokens, head_dim]` for (`layer`,
    /// `seq`): tokens before `visual` become the full-precision prefix, `visual` is quantized
    /// with the key and value schemes, tokens after it become the full-precision suffix.
    /// `visual` may be empty (no quantized span).
    ///
    /// Errors: bad layer or sequence, a slot already prefilled, shapes that disagree with the
    /// model or with each other, a reversed or out-of-bounds `visual`, a non-finite value (its
    /// layer, head, token and channel), or a quantizer failure.
    pub fn prefill(
        &mut self,
        layer: usize,
        seq: SeqId,
        k: &Tensor3,
        v: &Tensor3,
        visual: Range<usize>,
    ) -> Result<(), CacheError> {
        self.vacant(layer, seq)?;
        let (k, v) = self.checked_kv(layer, k, v)?;
        let (k, v) = (k.as_ref(), v.as_ref());
        let tokens = k.shape().tokens;
        if visual.start > visual.end || visual.end > tokens {
            return Err(CacheError::VisualRange {
                start: visual.start,
                end: visual.end,
                tokens,
            });
        }
        let span = if visual.is_empty() {
            None
        } else {
            let keys = self.quantize_part(layer, KvPart::Keys, k, visual.clone())?;
            let values = self.quantize_part(layer, KvPart::Values, v, visual.clone())?;
            Some((keys, values))
        };
        with_fp!(self.fp, T => self.store_prompt::<T>(
            layer,
            seq,
            (Rows::Host(k), Rows::Host(v)),
            tokens,
            visual,
            span,
        ))
    }

    /// Writes a prompt's checked slot: the prefix and suffix rows of `k`, `v` (`tokens` each)
    /// around `visual`, and the span already quantized.
    pub(super) fn store_prompt<T: FpElem>(
        &mut self,
        layer: usize,
        seq: SeqId,
        (k, v): (Rows<'_, D, T>, Rows<'_, D, T>),
        tokens: usize,
        visual: Range<usize>,
        span: Option<(QuantPart<D>, QuantPart<D>)>,
    ) -> Result<(), CacheError> {
        let device = |source| CacheError::Device { source };
        let hd = (self.shape.kv_heads, self.shape.head_dim);
        let state = LayerState {
            prefix: FpSegment::copy_of(&self.device, hd, k, v, 0..visual.start).map_err(device)?,
            span,
            suffix: FpSegment::copy_of(&self.device, hd, k, v, visual.end..tokens)
                .map_err(device)?,
        };
        self.put(layer, seq, state)
    }

    /// Appends decode tokens `k`, `v` = `[kv_heads, n, head_dim]` to the full-precision suffix
    /// of (`layer`, `seq`), which must be prefilled. The suffix grows by amortised doubling.
    pub fn append(
        &mut self,
        layer: usize,
        seq: SeqId,
        k: &Tensor3,
        v: &Tensor3,
    ) -> Result<(), CacheError> {
        self.state(layer, seq)?;
        let (k, v) = self.checked_kv(layer, k, v)?;
        let (k, v) = (k.as_ref(), v.as_ref());
        let tokens = k.shape().tokens;
        let state = slot_mut(&mut self.sequences, layer, seq)?;
        let stored: Result<(), _> = with_fp!(self.fp, T => state.suffix.extend::<T>(
            &self.device,
            Rows::Host(k),
            Rows::Host(v),
            0..tokens,
        ));
        stored.map_err(|source| CacheError::Device { source })
    }

    /// Stores an exported span (SPEC.md section 3) for (`layer`, `seq`), after an optional
    /// full-precision prefix `(k, v)`; the suffix starts empty and grows with
    /// [`append`](Self::append). The spans must use the cache's key and value schemes, have the
    /// model's kv heads and head_dim, the same non-zero token count, and valid lengths and
    /// parameters. Export followed by import is lossless.
    pub fn import_span(
        &mut self,
        layer: usize,
        seq: SeqId,
        prefix: Option<(&Tensor3, &Tensor3)>,
        keys: PackedSpan,
        values: PackedSpan,
    ) -> Result<(), CacheError> {
        self.vacant(layer, seq)?;
        let prefix = match prefix {
            Some((k, v)) => Some(self.checked_kv(layer, k, v)?),
            None => None,
        };
        if keys.shape.tokens == 0 {
            return Err(CacheError::Shape {
                what: "key span tokens (at least)",
                expected: 1,
                found: 0,
            });
        }
        let tokens = keys.shape.tokens;
        self.check_part(KvPart::Keys, &keys.scheme, keys.shape, tokens)?;
        let keys = self.stored(
            layer,
            KvPart::Keys,
            QuantPart::from_span(&self.device, keys),
        )?;
        self.check_part(KvPart::Values, &values.scheme, values.shape, tokens)?;
        let values = self.stored(
            layer,
            KvPart::Values,
            QuantPart::from_span(&self.device, values),
        )?;
        let (heads, dim) = (self.shape.kv_heads, self.shape.head_dim);
        let state = LayerState {
            prefix: match prefix {
                Some((k, v)) => {
                    let copied: Result<FpSegment<D>, _> = with_fp!(self.fp, T => FpSegment::copy_of::<T>(
                        &self.device,
                        (heads, dim),
                        Rows::Host(&k),
                        Rows::Host(&v),
                        0..k.shape().tokens,
                    ));
                    copied.map_err(|source| CacheError::Device { source })?
                }
                None => FpSegment::empty(heads, dim, self.fp),
            },
            span: Some((keys, values)),
            suffix: FpSegment::empty(heads, dim, self.fp),
        };
        self.put(layer, seq, state)
    }

    /// The quantized span of (`layer`, `seq`) as (keys, values) in SPEC.md section 3's format.
    pub fn export_span(
        &self,
        layer: usize,
        seq: SeqId,
    ) -> Result<(PackedSpan, PackedSpan), CacheError> {
        match &self.state(layer, seq)?.span {
            Some((k, v)) => {
                let device = |source| CacheError::Device { source };
                Ok((
                    k.to_span(&self.device).map_err(device)?,
                    v.to_span(&self.device).map_err(device)?,
                ))
            }
            None => Err(CacheError::NoQuantizedSpan { layer, seq }),
        }
    }

    /// Tokens cached for (`layer`, `seq`), 0 before prefill.
    pub fn tokens(&self, layer: usize, seq: SeqId) -> Result<usize, CacheError> {
        let s = self.sequence(layer, seq)?;
        Ok(s.layers
            .get(layer)
            .and_then(Option::as_ref)
            .map_or(0, LayerState::tokens))
    }

    /// Tokens the suffix of (`layer`, `seq`) holds without reallocating (its growth policy is
    /// observable here).
    pub fn suffix_capacity(&self, layer: usize, seq: SeqId) -> Result<usize, CacheError> {
        Ok(self.state(layer, seq)?.suffix.capacity())
    }

    /// The prefilled slot of (`layer`, `seq`).
    pub(super) fn state(&self, layer: usize, seq: SeqId) -> Result<&LayerState<D>, CacheError> {
        self.sequence(layer, seq)?
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or(CacheError::NotPrefilled { layer, seq })
    }

    /// Checks that (`layer`, `seq`) exists and is not yet written.
    pub(super) fn vacant(&self, layer: usize, seq: SeqId) -> Result<(), CacheError> {
        match self.sequence(layer, seq)?.layers.get(layer) {
            Some(None) => Ok(()),
            Some(Some(_)) => Err(CacheError::AlreadyPrefilled { layer, seq }),
            None => Err(CacheError::LayerOutOfRange {
                layer,
                layers: self.shape.layers,
            }),
        }
    }

    /// Writes a validated slot (checked vacant by the caller).
    fn put(&mut self, layer: usize, seq: SeqId, state: LayerState<D>) -> Result<(), CacheError> {
        let slot = self
            .sequences
            .get_mut(&seq)
            .and_then(|s| s.layers.get_mut(layer))
            .ok_or(CacheError::UnknownSequence { seq })?;
        *slot = Some(state);
        Ok(())
    }

    /// `k` and `v` rounded to the cache's full-precision type, after checking that they are
    /// `[kv_heads, n, head_dim]` with the same n, and finite before and after the rounding (a
    /// finite f32 beyond f16's range is infinite as f16).
    fn checked_kv<'t>(
        &self,
        layer: usize,
        k: &'t Tensor3,
        v: &'t Tensor3,
    ) -> Result<(Cow<'t, Tensor3>, Cow<'t, Tensor3>), CacheError> {
        self.check_kv(layer, k, v)?;
        let (k, v) = (round_to(k, self.fp), round_to(v, self.fp));
        if self.fp != InputType::F32 {
            self.check_finite(layer, &k, &v)?;
        }
        Ok((k, v))
    }

    /// Checks that `k` and `v` are `[kv_heads, n, head_dim]` with the same n, and finite.
    fn check_kv(&self, layer: usize, k: &Tensor3, v: &Tensor3) -> Result<(), CacheError> {
        let (ks, vs) = (k.shape(), v.shape());
        let checks = [
            ("key heads", self.shape.kv_heads, ks.heads),
            ("key head_dim", self.shape.head_dim, ks.dim),
            ("value heads", self.shape.kv_heads, vs.heads),
            ("value head_dim", self.shape.head_dim, vs.dim),
            ("value tokens", ks.tokens, vs.tokens),
        ];
        for (what, expected, found) in checks {
            if expected != found {
                return Err(CacheError::Shape {
                    what,
                    expected,
                    found,
                });
            }
        }
        self.check_finite(layer, k, v)
    }

    /// Checks that every value of `k` and `v` is finite.
    fn check_finite(&self, layer: usize, k: &Tensor3, v: &Tensor3) -> Result<(), CacheError> {
        for (part, x) in [(KvPart::Keys, k), (KvPart::Values, v)] {
            if let Some(([head, token, channel], value)) = x.first_non_finite() {
                return Err(CacheError::NonFinite {
                    layer,
                    part,
                    head,
                    token,
                    channel,
                    value,
                });
            }
        }
        Ok(())
    }

    /// Quantizes tokens `range` (non-empty, within `x`) of `x` with the `part` scheme on the
    /// cache's device.
    fn quantize_part(
        &self,
        layer: usize,
        part: KvPart,
        x: &Tensor3,
        range: Range<usize>,
    ) -> Result<QuantPart<D>, CacheError> {
        let tokens = range.len();
        let slice = x.slice_tokens(range).map_err(|e| CacheError::Quant {
            layer,
            part,
            source: e.into(),
        })?;
        let result = self.device.quantize(&slice, self.part_scheme(part));
        self.checked_part(layer, part, tokens, result)
    }

    /// A device's quantize result for a span of `tokens`, its scheme and shape checked.
    pub(super) fn checked_part(
        &self,
        layer: usize,
        part: KvPart,
        tokens: usize,
        result: Result<QuantPart<D>, DeviceQuantError>,
    ) -> Result<QuantPart<D>, CacheError> {
        let stored = match result {
            Err(DeviceQuantError::Mismatch { scheme, shape }) => {
                self.check_part(part, &scheme, shape, tokens)?;
                // Unreachable for a span that matched: report it as malformed all the same.
                return Err(CacheError::Quant {
                    layer,
                    part,
                    source: kvq_ir::reference::QuantError::Malformed(format!(
                        "the quantizer returned a span of ({scheme}), {shape:?}"
                    )),
                });
            }
            other => self.stored(layer, part, other)?,
        };
        self.check_part(part, stored.scheme(), stored.shape(), tokens)?;
        Ok(stored)
    }

    /// A device's quantize or store result as a cache error.
    fn stored(
        &self,
        layer: usize,
        part: KvPart,
        result: Result<QuantPart<D>, DeviceQuantError>,
    ) -> Result<QuantPart<D>, CacheError> {
        result.map_err(|e| match e {
            DeviceQuantError::Quant(source) => CacheError::Quant {
                layer,
                part,
                source,
            },
            DeviceQuantError::Device(source) => CacheError::Device { source },
            e @ DeviceQuantError::Mismatch { .. } => CacheError::Quant {
                layer,
                part,
                source: kvq_ir::reference::QuantError::Malformed(e.to_string()),
            },
        })
    }

    /// Checks a span's scheme and shape against the cache and `tokens`.
    fn check_part(
        &self,
        part: KvPart,
        scheme: &Scheme,
        shape: Shape3,
        tokens: usize,
    ) -> Result<(), CacheError> {
        let expected = *self.part_scheme(part);
        if *scheme != expected {
            return Err(CacheError::SchemeMismatch {
                part,
                expected,
                found: *scheme,
            });
        }
        let (heads_what, dim_what, tokens_what) = match part {
            KvPart::Keys => ("key span heads", "key span head_dim", "key span tokens"),
            KvPart::Values => (
                "value span heads",
                "value span head_dim",
                "value span tokens",
            ),
        };
        let checks = [
            (heads_what, self.shape.kv_heads, shape.heads),
            (dim_what, self.shape.head_dim, shape.dim),
            (tokens_what, tokens, shape.tokens),
        ];
        for (what, expected, found) in checks {
            if expected != found {
                return Err(CacheError::Shape {
                    what,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    pub(super) fn part_scheme(&self, part: KvPart) -> &Scheme {
        match part {
            KvPart::Keys => &self.scheme.key,
            KvPart::Values => &self.scheme.value,
        }
    }
}

/// The prefilled slot of (`layer`, `seq`) in `sequences`, to append to (a function of the map
/// alone, so that the cache's device stays borrowable beside it).
pub(super) fn slot_mut<D: Device>(
    sequences: &mut BTreeMap<SeqId, Sequence<D>>,
    layer: usize,
    seq: SeqId,
) -> Result<&mut LayerState<D>, CacheError> {
    sequences
        .get_mut(&seq)
        .and_then(|s| s.layers.get_mut(layer))
        .and_then(Option::as_mut)
        .ok_or(CacheError::NotPrefilled { layer, seq })
}
