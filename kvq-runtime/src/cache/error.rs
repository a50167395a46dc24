//! The cache's one error type. Every fallible method of [`VisualKvCache`](super::VisualKvCache)
//! checks everything before it changes anything, so an `Err` always leaves the cache as it was.

use kvq_ir::reference::QuantError;
use kvq_ir::Scheme;
use thiserror::Error;

use super::{KvPart, SeqId};

/// Why a cache operation was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CacheError {
    /// A model dimension is zero.
    #[error("model shape has zero {what}")]
    ZeroSize {
        /// Which dimension: "layers", "kv_heads", "q_heads" or "head_dim".
        what: &'static str,
    },
    /// Query heads are not a multiple of kv heads (GQA needs `q_heads = g * kv_heads`).
    #[error("{q_heads} query heads are not a multiple of {kv_heads} kv heads")]
    GqaRatio {
        /// Query heads.
        q_heads: usize,
        /// kv heads.
        kv_heads: usize,
    },
    /// The key or value scheme cannot quantize rows of this head_dim.
    #[error("the {part} scheme does not fit head_dim {head_dim}: {source}")]
    SchemeDoesNotFit {
        /// Keys or values.
        part: KvPart,
        /// The model's head_dim.
        head_dim: usize,
        /// The quantizer's shape check.
        #[source]
        source: QuantError,
    },
    /// The sequence was never added, or was removed.
    #[error("unknown sequence {seq}")]
    UnknownSequence {
        /// The id.
        seq: SeqId,
    },
    /// The layer index is not below the model's layer count.
    #[error("layer {layer} out of range (the model has {layers} layers)")]
    LayerOutOfRange {
        /// The index given.
        layer: usize,
        /// The model's layer count.
        layers: usize,
    },
    /// An input's dimension disagrees with the model or with its partner tensor.
    #[error("shape mismatch: {what} is {found}, expected {expected}")]
    Shape {
        /// Which dimension, e.g. "key heads", "value tokens", "query length".
        what: &'static str,
        /// What the cache needs.
        expected: usize,
        /// What was given.
        found: usize,
    },
    /// Device buffers of another element type than the cache stores its full-precision rows in.
    #[error("{found} buffers given to a cache that stores {expected} rows")]
    FpType {
        /// The cache's type.
        expected: &'static str,
        /// The buffers' type.
        found: &'static str,
    },
    /// The element count of a prompt given in device buffers overflows the address space.
    #[error("{tokens} tokens of {what} are too many to address")]
    TooLarge {
        /// What was sized, e.g. "key buffer".
        what: &'static str,
        /// The tokens asked for.
        tokens: usize,
    },
    /// A NaN or infinity in keys or values given to `prefill`, `append` or `import_span`.
    #[error("non-finite {part} value {value} at layer {layer}, head {head}, token {token}, channel {channel}")]
    NonFinite {
        /// Layer.
        layer: usize,
        /// Keys or values.
        part: KvPart,
        /// kv head.
        head: usize,
        /// Token index within the tensor that was passed in.
        token: usize,
        /// Channel.
        channel: usize,
        /// The value.
        value: f32,
    },
    /// A NaN or infinity in a query.
    #[error("non-finite query value {value} for sequence {seq} at head {head}, channel {channel}")]
    NonFiniteQuery {
        /// The sequence the query was for.
        seq: SeqId,
        /// Query head.
        head: usize,
        /// Channel.
        channel: usize,
        /// The value.
        value: f32,
    },
    /// The (layer, sequence) holds no tokens yet: `prefill` or `import_span` comes first.
    #[error("layer {layer} of sequence {seq} is not prefilled")]
    NotPrefilled {
        /// Layer.
        layer: usize,
        /// Sequence.
        seq: SeqId,
    },
    /// The (layer, sequence) was already prefilled or imported; the span is written once.
    #[error("layer {layer} of sequence {seq} is already prefilled")]
    AlreadyPrefilled {
        /// Layer.
        layer: usize,
        /// Sequence.
        seq: SeqId,
    },
    /// The visual range is reversed or runs past the prefilled tokens.
    #[error("visual range {start}..{end} is not within 0..{tokens}")]
    VisualRange {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Tokens passed to `prefill`.
        tokens: usize,
    },
    /// The (layer, sequence) has no quantized span to export (its visual range was empty).
    #[error("layer {layer} of sequence {seq} has no quantized span")]
    NoQuantizedSpan {
        /// Layer.
        layer: usize,
        /// Sequence.
        seq: SeqId,
    },
    /// An imported span was quantized with another scheme than the cache's.
    #[error("{part} span has scheme ({found}), the cache uses ({expected})")]
    SchemeMismatch {
        /// Keys or values.
        part: KvPart,
        /// The cache's scheme.
        expected: Scheme,
        /// The span's scheme.
        found: Scheme,
    },
    /// Quantizing the visual span failed, or a span (imported, or returned by the quantizer) is
    /// malformed. Token indices inside `source` are relative to the span.
    #[error("layer {layer} {part}: {source}")]
    Quant {
        /// Layer.
        layer: usize,
        /// Keys or values.
        part: KvPart,
        /// The quantizer's or validator's error.
        #[source]
        source: QuantError,
    },
    /// The cache's device failed (allocation, copy, launch).
    #[error("device: {source}")]
    Device {
        /// The device's error.
        #[source]
        source: super::DeviceError,
    },
    /// An external attention kernel ([`AttentionKernel`](super::AttentionKernel)) failed.
    #[error("attention kernel: {0}")]
    Kernel(String),
}
