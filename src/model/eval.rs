//! What a quantized span does to the model: the same prompt through a full-precision cache and
//! through a cache whose span is quantized, compared over teacher-forced positions after the
//! span.

use std::ops::Range;

use kvq_runtime::{ModelShape, SpanQuantizer, VisualKvCache};
use serde::Serialize;

use super::{Model, ModelError};
use crate::CacheScheme;

/// The comparison of one scheme against the full-precision cache on one prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEval {
    /// Teacher-forced positions compared (each predicts the prompt's next token).
    pub positions: usize,
    /// Fraction of positions where the most likely next token is the same.
    pub top1_agreement: f64,
    /// Mean KL divergence KL(full precision || quantized) of the next-token distributions, nats.
    pub mean_kl: f64,
    /// Perplexity of the prompt's continuation with the quantized span.
    pub perplexity: f64,
    /// The same with the full-precision cache.
    pub perplexity_fp: f64,
    /// Bytes of the span's K/V in the quantized cache (codes and parameters).
    pub span_bytes: usize,
    /// Bytes of the same K/V in f16.
    pub span_f16_bytes: usize,
}

/// The numerically safe log-softmax of `logits`, in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - m).exp()).sum();
    let lz = z.ln() + m;
    logits.iter().map(|&x| x as f64 - lz).collect()
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// Runs `tokens` with `span` quantized under `scheme` and in full precision: a full-precision
/// prefill of `tokens[..span.end]`, both caches filled from it (the quantized one quantizes the
/// span once), then `positions` decode steps teacher-forced with `tokens[span.end..]`.
pub fn evaluate<Q: SpanQuantizer + Clone>(
    model: &Model,
    scheme: CacheScheme,
    quantizer: Q,
    tokens: &[u32],
    span: Range<usize>,
    positions: usize,
) -> Result<ModelEval, ModelError> {
    if span.start >= span.end || span.end + positions + 1 > tokens.len() || positions == 0 {
        return Err(ModelError::Input(format!(
            "span {span:?} and {positions} positions need a span of at least one token and \
             {} prompt tokens, the prompt has {}",
            span.end + positions + 1,
            tokens.len()
        )));
    }
    let c = model.config;
    let shape = ModelShape {
        layers: c.layers,
        kv_heads: c.kv_heads,
        q_heads: c.q_heads,
        head_dim: c.head_dim,
    };
    let (kv, _) = model.prefill(&tokens[..span.end])?;
    let mut quant = VisualKvCache::new(shape, scheme, quantizer.clone())?;
    let mut full = VisualKvCache::new(shape, scheme, quantizer)?;
    let (sq, sf) = (quant.add_sequence(), full.add_sequence());
    for (l, (k, v)) in kv.iter().enumerate() {
        quant.prefill(l, sq, k, v, span.clone())?;
        full.prefill(l, sf, k, v, 0..0)?;
    }
    let (mut agree, mut kl, mut nll_q, mut nll_f) = (0usize, 0.0f64, 0.0f64, 0.0f64);
    for p in span.end..span.end + positions {
        let lq = model.decode(&mut quant, sq, tokens[p], p)?;
        let lf = model.decode(&mut full, sf, tokens[p], p)?;
        agree += usize::from(argmax(&lq) == argmax(&lf));
        let (a, b) = (log_softmax(&lf), log_softmax(&lq));
        kl += a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.exp() * (x - y))
            .sum::<f64>();
        let next = tokens[p + 1] as usize;
        nll_q -= b[next];
        nll_f -= a[next];
    }
    let n = positions as f64;
    let mem = quant.memory().total;
    let span_tokens = span.len();
    Ok(ModelEval {
        positions,
        top1_agreement: agree as f64 / n,
        mean_kl: kl / n,
        perplexity: (nll_q / n).exp(),
        perplexity_fp: (nll_f / n).exp(),
        span_bytes: mem.span_code_bytes + mem.span_param_bytes,
        span_f16_bytes: 2 * c.layers * c.kv_heads * span_tokens * c.head_dim * 2,
    })
}
