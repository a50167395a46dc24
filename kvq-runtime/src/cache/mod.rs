//! The visual KV cache: per layer and sequence, `[prefix fp | visual span quantized | suffix fp]`
//! (SPEC.md section 4), with decode attention that reads the quantized span's codes raw.
//!
//! # Model
//!
//! A [`VisualKvCache`] serves one model ([`ModelShape`]) under one [`CacheScheme`] and holds any
//! number of sequences of different lengths ([`SeqId`]). Each (layer, sequence) slot is written
//! once by [`prefill`](VisualKvCache::prefill) (or [`import_span`](VisualKvCache::import_span)),
//! which splits the prompt's keys and values into three segments in positional order:
//!
//! - **prefix**: tokens before the visual range, full precision;
//! - **span**: the visual range, quantized once with the key and value schemes (one packed span
//!   each, SPEC.md section 3); an empty visual range is allowed and gives no span, so a text-only
//!   prompt is simply `[prefix]`;
//! - **suffix**: tokens after the visual range, full precision, and every decode token added by
//!   [`append`](VisualKvCache::append).
//!
//! A prompt whose keys and values are already in the device's memory goes through
//! [`prefill_from_device`](VisualKvCache::prefill_from_device) (and decode tokens through
//! [`append_from_device`](VisualKvCache::append_from_device)): the same slot, built by copies
//! and quantization on the device.
//!
//! # Layout and growth
//!
//! Full-precision segments are stored as **f32** (exactly what the caller passed), or as f16 /
//! bf16 when the cache is built so ([`on_device_storing`](VisualKvCache::on_device_storing):
//! half the memory, values rounded to that type), head-major: `[kv_heads, capacity, head_dim]`, so that
//! one kv head's tokens are contiguous for attention. The prefix, and the suffix a prompt brings,
//! are allocated at their exact size (an empty suffix allocates nothing). The suffix then grows by
//! **amortised doubling**: when an append does not fit, the capacity becomes
//! `max(2 * capacity, needed, 8)` tokens and the live tokens are copied once into the new buffers
//! ([`suffix_capacity`](VisualKvCache::suffix_capacity) shows it). Appending n tokens one at a
//! time therefore copies O(n) values in total and never holds more than about twice the live
//! suffix. Nothing is allocated for a maximum length.
//!
//! The quantized span keeps the packed SPEC layout (`[kv_heads, tokens, head_dim * b / 8]`
//! codes, token-major) and stores its parameters at their scheme's precision (f16 or f32), so
//! [`export_span`](VisualKvCache::export_span) is a copy and import/export round trips are
//! lossless.
//!
//! # Decode attention
//!
//! [`attend`](VisualKvCache::attend) computes SPEC.md section 4 in f32 with an online softmax over
//! the segments (one running max, sum and accumulator per query head). Query head `h` reads kv
//! head `h / (q_heads / kv_heads)`; the codes of a kv head are unpacked once per token and
//! shared by the query heads of its group, never copied per query head.
//!
//! - Keys with `axis = channel` are **post-scaled**: for each (kv head, token group) the query,
//!   already divided by `sqrt(head_dim)`, is multiplied by the group's per-channel scales once,
//!   and `q . k_hat_t = sum_c (q_c scale_c) code_tc + sum_c q_c zero_c` reads the codes raw.
//! - Values with `axis = channel` are post-scaled the other way:
//!   `o_c += scale_c * sum_t p_t code_tc + zero_c * sum_t p_t` per token group.
//! - Keys or values with `axis = token` carry parameters per (token, channel group), so their
//!   rows are dequantized on the fly (`zero + scale * code`, SPEC's f32 formula) into a one-row
//!   scratch buffer.
//!
//! Calibration (`scheme.calibrate`) applies to the quantized span's logits only, per query head.
//! Results equal the reference [`decode_attention`](kvq_ir::reference::decode_attention) up to
//! float reassociation.
//!
//! # Quantizer
//!
//! Quantization is injected through [`SpanQuantizer`] so that this crate does not link LLVM:
//! [`ReferenceQuantizer`] runs [`kvq_ir::reference::quantize()`]; the `kvq` facade passes a
//! quantizer backed by generated host code, which SPEC.md requires to give the same codes and
//! parameters bit for bit. Whatever the quantizer returns is validated before it is stored.

mod attend;
pub mod conformance;
#[cfg(feature = "cuda")]
mod cuda;
mod device;
mod error;
mod fp_segment;
mod kernel;
mod memory;
mod on_device;
mod segment;
mod sequence;

use std::collections::BTreeMap;
use std::fmt;

use kvq_ir::lower::InputType;
use kvq_ir::reference::quantize::check_shape;
use kvq_ir::reference::{PackedSpan, QuantError};
use kvq_ir::{CacheScheme, Scheme, Shape3, Tensor3};

#[cfg(feature = "cuda")]
pub use cuda::Cuda;
pub use device::{CacheElem, Device, DeviceError, DeviceQuantError, Host};
pub use error::CacheError;
pub use fp_segment::{FpBufs, FpElem, FpSegment};
pub use kernel::{AttentionKernel, ParamView, PartView, SeqView};
pub use memory::{LayerMemory, MemoryReport};
pub use segment::{QuantPart, StoredParams};

use sequence::Sequence;

/// Quantizes one span; the cache calls it once per (layer, sequence) for keys and once for
/// values, with `x` = `[kv_heads, visual_tokens, head_dim]`.
///
/// Implementations must follow SPEC.md sections 2-3 (the cache validates the result's scheme,
/// shape and lengths, but cannot check codes). The `kvq` facade provides one backed by generated
/// host code; [`ReferenceQuantizer`] is the plain reference.
pub trait SpanQuantizer {
    /// Quantizes `x` under `scheme`.
    fn quantize(&self, x: &Tensor3, scheme: &Scheme) -> Result<PackedSpan, QuantError>;
}

/// The reference quantizer of `kvq-ir` ([`kvq_ir::reference::quantize()`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReferenceQuantizer;

impl SpanQuantizer for ReferenceQuantizer {
    fn quantize(&self, x: &Tensor3, scheme: &Scheme) -> Result<PackedSpan, QuantError> {
        kvq_ir::reference::quantize(x, scheme)
    }
}

/// The attention geometry of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelShape {
    /// Decoder layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query heads, a multiple of `kv_heads`.
    pub q_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl ModelShape {
    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }
}

/// A sequence of the cache. Ids are never reused, so a removed sequence's id stays unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(u64);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Keys or values, for errors that name which tensor is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvPart {
    /// Keys.
    Keys,
    /// Values.
    Values,
}

impl fmt::Display for KvPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvPart::Keys => "key",
            KvPart::Values => "value",
        })
    }
}

/// One sequence's decode query: `q` = `[q_heads, head_dim]`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct QueryRef<'a> {
    /// The sequence to attend over.
    pub seq: SeqId,
    /// Its query, one row per query head.
    pub q: &'a [f32],
}

/// A KV cache whose visual spans are quantized (see the [module docs](self) for the layout,
/// growth policy and attention), on device `D` (host memory by default).
#[derive(Debug)]
pub struct VisualKvCache<D: Device = Host> {
    shape: ModelShape,
    scheme: CacheScheme,
    /// The type full-precision rows are stored in.
    fp: InputType,
    device: D,
    /// Live sequences; each holds exactly `shape.layers` slots.
    sequences: BTreeMap<SeqId, Sequence<D>>,
    /// The id the next `add_sequence` returns; strictly above every id ever handed out.
    next_id: u64,
}

impl VisualKvCache<Host> {
    /// A host cache quantizing with the reference quantizer.
    pub fn with_reference(shape: ModelShape, scheme: CacheScheme) -> Result<Self, CacheError> {
        Self::new(shape, scheme, ReferenceQuantizer)
    }
}

impl<Q: SpanQuantizer> VisualKvCache<Host<Q>> {
    /// An empty host cache quantizing with `quantizer` (see [`VisualKvCache::on_device`]).
    pub fn new(shape: ModelShape, scheme: CacheScheme, quantizer: Q) -> Result<Self, CacheError> {
        Self::on_device(shape, scheme, Host { quantizer })
    }

    /// The quantizer.
    pub fn quantizer(&self) -> &Q {
        &self.device.quantizer
    }
}

impl<D: Device> VisualKvCache<D> {
    /// An empty cache on `device` storing full-precision rows as f32 (see
    /// [`on_device_storing`](Self::on_device_storing)).
    pub fn on_device(
        shape: ModelShape,
        scheme: CacheScheme,
        device: D,
    ) -> Result<Self, CacheError> {
        Self::on_device_storing(shape, scheme, InputType::F32, device)
    }

    /// An empty cache on `device` whose full-precision prefix and suffix rows are stored as `fp`:
    /// f32, or f16 / bf16 at half the memory (the K/V type of most models). With f16 or bf16,
    /// keys and values given as f32 are rounded to `fp` first (exact for values that came from
    /// it), and the visual span is quantized from the rounded values, so that host tensors and
    /// device buffers of that type give the same cache. Checks that every size is non-zero,
    /// that `q_heads` is a multiple of `kv_heads`, that both schemes can quantize rows of
    /// `head_dim` (byte-aligned codes, token-axis groups dividing `head_dim`), and that the
    /// device serves this model, scheme and type.
    pub fn on_device_storing(
        shape: ModelShape,
        scheme: CacheScheme,
        fp: InputType,
        device: D,
    ) -> Result<Self, CacheError> {
        for (what, n) in [
            ("layers", shape.layers),
            ("kv_heads", shape.kv_heads),
            ("q_heads", shape.q_heads),
            ("head_dim", shape.head_dim),
        ] {
            if n == 0 {
                return Err(CacheError::ZeroSize { what });
            }
        }
        if shape.q_heads % shape.kv_heads != 0 {
            return Err(CacheError::GqaRatio {
                q_heads: shape.q_heads,
                kv_heads: shape.kv_heads,
            });
        }
        let probe = Shape3 {
            heads: shape.kv_heads,
            tokens: 1,
            dim: shape.head_dim,
        };
        for (part, s) in [(KvPart::Keys, &scheme.key), (KvPart::Values, &scheme.value)] {
            check_shape(s, probe).map_err(|source| CacheError::SchemeDoesNotFit {
                part,
                head_dim: shape.head_dim,
                source,
            })?;
        }
        device
            .check_model(shape, &scheme, fp)
            .map_err(|source| CacheError::Device { source })?;
        Ok(VisualKvCache {
            shape,
            scheme,
            fp,
            device,
            sequences: BTreeMap::new(),
            next_id: 0,
        })
    }

    /// The model shape.
    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    /// The cache scheme.
    pub fn scheme(&self) -> CacheScheme {
        self.scheme
    }

    /// The type its full-precision rows are stored in.
    pub fn fp_storage(&self) -> InputType {
        self.fp
    }

    /// The device its segments live on.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Adds an empty sequence; every layer must then be prefilled before it can be attended.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.sequences.insert(id, Sequence::new(self.shape.layers));
        id
    }

    /// Removes a sequence and frees its memory.
    pub fn remove_sequence(&mut self, seq: SeqId) -> Result<(), CacheError> {
        self.sequences
            .remove(&seq)
            .map(drop)
            .ok_or(CacheError::UnknownSequence { seq })
    }

    /// The live sequences, in the order they were added.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.sequences.keys().copied()
    }

    /// Checks `layer` against the model.
    fn check_layer(&self, layer: usize) -> Result<(), CacheError> {
        if layer < self.shape.layers {
            Ok(())
        } else {
            Err(CacheError::LayerOutOfRange {
                layer,
                layers: self.shape.layers,
            })
        }
    }

    /// The sequence `seq`, after checking `layer`.
    fn sequence(&self, layer: usize, seq: SeqId) -> Result<&Sequence<D>, CacheError> {
        self.check_layer(layer)?;
        self.sequences
            .get(&seq)
            .ok_or(CacheError::UnknownSequence { seq })
    }
}
