//! Prefill and append from keys and values already in the device's memory (a model running on
//! the GPU holds its K/V there): nothing passes through the host but the few full-precision
//! rows read back to check that they are finite.

use std::ops::Range;

use kvq_ir::reference::QuantError;
use kvq_ir::Shape3;

use super::device::{Device, DeviceQuantError};
use super::fp_segment::{FpElem, Rows};
use super::segment::QuantPart;
use super::{CacheError, KvPart, SeqId, VisualKvCache};

impl<D: Device> VisualKvCache<D> {
    /// [`prefill`](Self::prefill) for a prompt whose keys `k` and values `v` are
    /// `[kv_heads, tokens, head_dim]` buffers in this cache's device memory, of the type the
    /// cache stores its full-precision rows in ([`fp_storage`](Self::fp_storage); another type
    /// is [`CacheError::FpType`]): on the host a `Vec<T>`, on CUDA a `DeviceBuffer` of the
    /// device's context. The visual range is gathered and quantized on the device and the prefix
    /// and suffix are copied there; the buffers are only read. The result is the same as
    /// `prefill` of the same values.
    ///
    /// Checks, before anything changes: the slot, both buffers' lengths (`TooLarge` when the
    /// element count overflows), the visual range, and finiteness: the prefix and suffix rows
    /// are read back to the host and scanned (a prompt's text tokens), the span's rows by the
    /// quantize kernel, whose flag is then located by the reference on the span read back.
    /// A non-finite value is [`CacheError::NonFinite`] with its token in the prompt.
    pub fn prefill_from_device<T: FpElem>(
        &mut self,
        layer: usize,
        seq: SeqId,
        k: &D::Buf<T>,
        v: &D::Buf<T>,
        tokens: usize,
        visual: Range<usize>,
    ) -> Result<(), CacheError> {
        self.vacant(layer, seq)?;
        let shape = self.check_device_kv::<T>(k, v, tokens)?;
        if visual.start > visual.end || visual.end > tokens {
            return Err(CacheError::VisualRange {
                start: visual.start,
                end: visual.end,
                tokens,
            });
        }
        for (part, x) in [(KvPart::Keys, k), (KvPart::Values, v)] {
            self.check_device_finite(layer, part, x, shape, 0..visual.start)?;
            self.check_device_finite(layer, part, x, shape, visual.end..tokens)?;
        }
        let span = if visual.is_empty() {
            None
        } else {
            let keys = self.quantize_device_part(layer, KvPart::Keys, k, shape, visual.clone())?;
            let values =
                self.quantize_device_part(layer, KvPart::Values, v, shape, visual.clone())?;
            Some((keys, values))
        };
        let (k, v) = (
            Rows::Device { buf: k, tokens },
            Rows::Device { buf: v, tokens },
        );
        self.store_prompt::<T>(layer, seq, (k, v), tokens, visual, span)
    }

    /// [`append`](Self::append) for decode tokens `k`, `v` = `[kv_heads, tokens, head_dim]`
    /// buffers of the cache's full-precision type in its device memory (read back to the host
    /// only to check that they are finite), copied on the device into the suffix.
    pub fn append_from_device<T: FpElem>(
        &mut self,
        layer: usize,
        seq: SeqId,
        k: &D::Buf<T>,
        v: &D::Buf<T>,
        tokens: usize,
    ) -> Result<(), CacheError> {
        self.state(layer, seq)?;
        let shape = self.check_device_kv::<T>(k, v, tokens)?;
        for (part, x) in [(KvPart::Keys, k), (KvPart::Values, v)] {
            self.check_device_finite(layer, part, x, shape, 0..tokens)?;
        }
        let state = super::sequence::slot_mut(&mut self.sequences, layer, seq)?;
        let (k, v) = (
            Rows::Device { buf: k, tokens },
            Rows::Device { buf: v, tokens },
        );
        state
            .suffix
            .extend::<T>(&self.device, k, v, 0..tokens)
            .map_err(|source| CacheError::Device { source })
    }

    /// The prompt's shape, after checking that `k` and `v` hold `[kv_heads, tokens, head_dim]`
    /// values of the cache's full-precision type.
    fn check_device_kv<T: FpElem>(
        &self,
        k: &D::Buf<T>,
        v: &D::Buf<T>,
        tokens: usize,
    ) -> Result<Shape3, CacheError> {
        if T::TYPE != self.fp {
            return Err(CacheError::FpType {
                expected: self.fp.name(),
                found: T::TYPE.name(),
            });
        }
        let shape = Shape3 {
            heads: self.shape.kv_heads,
            tokens,
            dim: self.shape.head_dim,
        };
        let expected = shape.checked_len().ok_or(CacheError::TooLarge {
            what: "a prompt in device buffers",
            tokens,
        })?;
        for (what, buf) in [("key buffer elements", k), ("value buffer elements", v)] {
            let found = D::len(buf);
            if found != expected {
                return Err(CacheError::Shape {
                    what,
                    expected,
                    found,
                });
            }
        }
        Ok(shape)
    }

    /// Reads tokens `range` of every head of `x` back to the host and reports the first
    /// non-finite value (head-major order, as `prefill` does).
    fn check_device_finite<T: FpElem>(
        &self,
        layer: usize,
        part: KvPart,
        x: &D::Buf<T>,
        shape: Shape3,
        range: Range<usize>,
    ) -> Result<(), CacheError> {
        if range.is_empty() {
            return Ok(());
        }
        let dim = shape.dim;
        for head in 0..shape.heads {
            // Within the checked length: head * tokens * dim + range.end * dim <= len.
            let from = shape.index(head, range.start, 0);
            let rows = self
                .device
                .download_range(x, from..from + range.len() * dim)
                .map_err(|source| CacheError::Device { source })?;
            if let Some(i) = rows.iter().position(|x| !x.to_f32().is_finite()) {
                return Err(CacheError::NonFinite {
                    layer,
                    part,
                    head,
                    token: range.start + i / dim,
                    channel: i % dim,
                    value: rows[i].to_f32(),
                });
            }
        }
        Ok(())
    }

    /// Quantizes tokens `visual` (non-empty, within `shape`) of `x` on the device: the whole
    /// buffer when it is the span, else the span's rows gathered into a new buffer first.
    fn quantize_device_part<T: FpElem>(
        &self,
        layer: usize,
        part: KvPart,
        x: &D::Buf<T>,
        shape: Shape3,
        visual: Range<usize>,
    ) -> Result<QuantPart<D>, CacheError> {
        let device = |source| CacheError::Device { source };
        let span = Shape3 {
            tokens: visual.len(),
            ..shape
        };
        let scheme = self.part_scheme(part);
        let result = if span.tokens == shape.tokens {
            self.device.quantize_buf(x, span, scheme)
        } else {
            let mut rows = self.device.zeros::<T>(span.len()).map_err(device)?;
            for head in 0..shape.heads {
                let from = shape.index(head, visual.start, 0);
                self.device
                    .copy(
                        &mut rows,
                        span.index(head, 0, 0),
                        x,
                        from..from + span.tokens * span.dim,
                    )
                    .map_err(device)?;
            }
            self.device.quantize_buf(&rows, span, scheme)
        };
        let result = match result {
            Err(DeviceQuantError::Quant(QuantError::NonFinite {
                head,
                token,
                channel,
                value,
            })) => {
                return Err(CacheError::NonFinite {
                    layer,
                    part,
                    head,
                    token: visual.start + token,
                    channel,
                    value,
                })
            }
            other => other,
        };
        self.checked_part(layer, part, span.tokens, result)
    }
}
