//! What the cache holds, in bytes, by segment kind.

use super::{Device, VisualKvCache};

/// Bytes of one layer (summed over sequences) or of the whole cache. Keys and values together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerMemory {
    /// Cached tokens over all sequences.
    pub tokens: usize,
    /// Full-precision prefix tokens, stored as f32 (`tokens * kv_heads * head_dim * 4` for each
    /// of K and V).
    pub prefix_bytes: usize,
    /// Packed codes of the quantized spans.
    pub span_code_bytes: usize,
    /// Zero points and scales of the quantized spans, at their stored precision (2 bytes for
    /// `params = f16`, 4 for `f32`).
    pub span_param_bytes: usize,
    /// Live full-precision suffix tokens, stored as f32.
    pub suffix_bytes: usize,
    /// Bytes allocated for the suffixes, growth slack included (`>= suffix_bytes`).
    pub suffix_reserved_bytes: usize,
    /// The same tokens as an f16 K/V cache: `tokens * kv_heads * head_dim * 2 * 2`.
    pub f16_equivalent_bytes: usize,
}

impl LayerMemory {
    /// Bytes allocated: prefix, span codes and parameters, and reserved suffix.
    pub fn allocated_bytes(&self) -> usize {
        self.prefix_bytes
            + self.span_code_bytes
            + self.span_param_bytes
            + self.suffix_reserved_bytes
    }

    fn add(&mut self, other: &LayerMemory) {
        self.tokens += other.tokens;
        self.prefix_bytes += other.prefix_bytes;
        self.span_code_bytes += other.span_code_bytes;
        self.span_param_bytes += other.span_param_bytes;
        self.suffix_bytes += other.suffix_bytes;
        self.suffix_reserved_bytes += other.suffix_reserved_bytes;
        self.f16_equivalent_bytes += other.f16_equivalent_bytes;
    }
}

/// The cache's memory, per layer and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// One entry per model layer.
    pub layers: Vec<LayerMemory>,
    /// The sum over layers.
    pub total: LayerMemory,
}

impl<D: Device> VisualKvCache<D> {
    /// Bytes held, by segment kind, per layer and in total.
    pub fn memory(&self) -> MemoryReport {
        let row_f16 = 2 * self.shape.kv_heads * self.shape.head_dim * size_of::<u16>();
        let mut layers = vec![LayerMemory::default(); self.shape.layers];
        for seq in self.sequences.values() {
            for (mem, state) in layers.iter_mut().zip(&seq.layers) {
                let Some(state) = state else { continue };
                let tokens = state.tokens();
                let (codes, params) = state.span.as_ref().map_or((0, 0), |(k, v)| {
                    (
                        k.code_bytes() + v.code_bytes(),
                        k.param_bytes() + v.param_bytes(),
                    )
                });
                mem.add(&LayerMemory {
                    tokens,
                    prefix_bytes: state.prefix.live_bytes(),
                    span_code_bytes: codes,
                    span_param_bytes: params,
                    suffix_bytes: state.suffix.live_bytes(),
                    suffix_reserved_bytes: state.suffix.reserved_bytes(),
                    f16_equivalent_bytes: tokens * row_f16,
                });
            }
        }
        let mut total = LayerMemory::default();
        for mem in &layers {
            total.add(mem);
        }
        MemoryReport { layers, total }
    }
}
