//! Decode attention through an external kernel: the `kvq` facade's generated host code
//! implements [`AttentionKernel`], and [`VisualKvCache::attend_with`] hands it views of the
//! cache's own storage. Quantized spans are passed as borrowed slices of their packed codes and
//! parameters (never copied); the full-precision prefix and suffix of each sequence are gathered
//! into one contiguous block (`[kv_heads, fp_tokens, head_dim]`), which is small next to a span.

use half::f16;
use kvq_ir::Scheme;

use super::sequence::LayerState;
use super::{CacheError, Host, QueryRef, SpanQuantizer, VisualKvCache};

/// The parameters of a quantized part at their stored precision, in SPEC.md section 3 layout.
#[derive(Debug, Clone, Copy)]
pub enum ParamView<'a> {
    /// `params = f16`.
    F16 {
        /// Zero points.
        zero: &'a [f16],
        /// Scales.
        scale: &'a [f16],
    },
    /// `params = f32`.
    F32 {
        /// Zero points.
        zero: &'a [f32],
        /// Scales.
        scale: &'a [f32],
    },
}

/// One quantized tensor of a span, borrowed from the cache.
#[derive(Debug, Clone, Copy)]
pub struct PartView<'a> {
    /// Its scheme.
    pub scheme: Scheme,
    /// Span tokens.
    pub tokens: usize,
    /// Packed codes `[kv_heads, tokens, head_dim * bits / 8]`.
    pub codes: &'a [u8],
    /// Zero points and scales.
    pub params: ParamView<'a>,
}

/// One sequence of a decode step.
#[derive(Debug, Clone, Copy)]
pub struct SeqView<'a> {
    /// The query `[q_heads, head_dim]`.
    pub q: &'a [f32],
    /// Full-precision tokens (prefix, then suffix).
    pub fp_tokens: usize,
    /// Their keys `[kv_heads, fp_tokens, head_dim]`.
    pub fp_k: &'a [f32],
    /// Their values, same layout.
    pub fp_v: &'a [f32],
    /// The quantized span (keys, values), if any.
    pub span: Option<(PartView<'a>, PartView<'a>)>,
}

/// A decode-attention implementation for [`VisualKvCache::attend_with`].
pub trait AttentionKernel {
    /// SPEC.md section 4 for each sequence of `batch` (calibration of the span's logits per the
    /// cache's scheme): one `[q_heads * head_dim]` output per sequence, in batch order.
    fn attend(&self, batch: &[SeqView<'_>]) -> Result<Vec<Vec<f32>>, String>;
}

impl<Q: SpanQuantizer> VisualKvCache<Host<Q>> {
    /// [`attend`](Self::attend) through `kernel` (for example the generated host kernels of
    /// the `kvq` facade's `HostAttention`), with the same checks first. Errors of the kernel
    /// are [`CacheError::Kernel`].
    pub fn attend_with(
        &self,
        layer: usize,
        queries: &[QueryRef<'_>],
        kernel: &impl AttentionKernel,
    ) -> Result<Vec<Vec<f32>>, CacheError> {
        let states = self.checked_queries(layer, queries)?;
        let (kv, dim) = (self.shape.kv_heads, self.shape.head_dim);
        let fp: Vec<(usize, Vec<f32>, Vec<f32>)> =
            states.iter().map(|s| gather_fp(s, kv)).collect();
        let views: Vec<SeqView<'_>> = states
            .iter()
            .zip(queries)
            .zip(&fp)
            .map(|((state, query), (n, k, v))| SeqView {
                q: query.q,
                fp_tokens: *n,
                fp_k: k,
                fp_v: v,
                span: state.span.as_ref().map(|(k, v)| (k.view(), v.view())),
            })
            .collect();
        let out = kernel.attend(&views).map_err(CacheError::Kernel)?;
        let want = self.shape.q_heads * dim;
        if out.len() != queries.len() || out.iter().any(|o| o.len() != want) {
            return Err(CacheError::Kernel(format!(
                "the kernel returned {} outputs, expected {} of {want} values",
                out.len(),
                queries.len()
            )));
        }
        Ok(out)
    }
}

/// The prefix and suffix of one (layer, sequence) as `[kv_heads, tokens, dim]` blocks.
fn gather_fp<Q: SpanQuantizer>(
    state: &LayerState<Host<Q>>,
    kv_heads: usize,
) -> (usize, Vec<f32>, Vec<f32>) {
    let n = state.prefix.tokens() + state.suffix.tokens();
    let mut k = Vec::new();
    let mut v = Vec::new();
    for h in 0..kv_heads {
        for seg in [&state.prefix, &state.suffix] {
            k.extend_from_slice(&seg.keys(h));
            v.extend_from_slice(&seg.values(h));
        }
    }
    (n, k, v)
}
