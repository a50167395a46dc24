//! What a quantized span does to the model: the same prompt through a full-precision cache and
//! through a cache whose span is quantized, compared over teacher-forced positions after the
//! span.

use std::ops::Range;

use kvq_runtime::{SpanQuantizer, VisualKvCache};
use serde::{Deserialize, Serialize};

use super::{Lane, Model, ModelError};
use crate::attention::HostAttention;
use crate::{Axis, BitOrder, Bits, CacheScheme, Group, ParamType, Rule, Scheme, Tensor3};

/// The comparison of one scheme against the full-precision cache on one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Which attention the decode steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// The cache's own attention (`VisualKvCache::attend`, hand-written, dequantizing).
    #[default]
    HandWritten,
    /// kvq's generated decode-attention kernels on the host (`HostAttention` through
    /// `VisualKvCache::attend_with`: post-scaled keys and values straight from the codes).
    Generated,
}

/// What one evaluated cache keeps of the span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpanTreatment {
    /// The span quantized once under a cache scheme.
    Quantized(CacheScheme),
    /// The span left out of attention altogether (the baseline any quantizer must beat).
    Dropped,
}

/// The scheme of the caches that quantize nothing (the full-precision reference and a dropped
/// span): a cache needs one, but with an empty span it never runs.
const UNUSED: Scheme = Scheme {
    bits: Bits::B8,
    axis: Axis::Token,
    group: Group::All,
    rule: Rule::MinMax,
    params: ParamType::F32,
    order: BitOrder::Msb,
};

/// Runs `tokens` with `span` quantized under `scheme` and in full precision (see
/// [`evaluate_many`]).
pub fn evaluate<Q: SpanQuantizer + Clone + Send>(
    model: &Model,
    scheme: CacheScheme,
    quantizer: Q,
    tokens: &[u32],
    span: Range<usize>,
    positions: usize,
) -> Result<ModelEval, ModelError> {
    let treatments = [SpanTreatment::Quantized(scheme)];
    let path = AttentionPath::HandWritten;
    let mut r = evaluate_many(model, &treatments, quantizer, tokens, span, positions, path)?;
    Ok(r.remove(0))
}

/// Runs `tokens` once per treatment of `span` and once in full precision: a full-precision
/// prefill of `tokens[..span.end]` fills every cache (each quantizes the span once, or leaves
/// it out), then `positions` decode steps teacher-forced with `tokens[span.end..]` run in all
/// caches together ([`Model::decode_lanes`]), their attention on `path`. Returns one
/// comparison per treatment, in order.
pub fn evaluate_many<Q: SpanQuantizer + Clone + Send>(
    model: &Model,
    treatments: &[SpanTreatment],
    quantizer: Q,
    tokens: &[u32],
    span: Range<usize>,
    positions: usize,
    path: AttentionPath,
) -> Result<Vec<ModelEval>, ModelError> {
    // Checked: a span end or a position count near usize::MAX must not wrap past the check.
    let needed = span
        .end
        .checked_add(positions)
        .and_then(|n| n.checked_add(1));
    if span.start >= span.end || positions == 0 || needed.is_none_or(|n| n > tokens.len()) {
        let needed = needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
        return Err(ModelError::Input(format!(
            "span {span:?} and {positions} positions need a span of at least one token, at \
             least one position and {needed} prompt tokens; the prompt has {}",
            tokens.len()
        )));
    }
    let c = model.config;
    let shape = c.cache_shape();
    let (kv, _) = model.prefill(&tokens[..span.end])?;
    let plain = CacheScheme {
        key: UNUSED,
        value: UNUSED,
        calibrate: None,
    };
    let attention = c.attention_shape();
    // Cache 0 is the full-precision reference; cache i + 1 runs treatment i.
    let mut caches = Vec::with_capacity(treatments.len() + 1);
    let mut kernels = Vec::with_capacity(treatments.len() + 1);
    for t in std::iter::once(None).chain(treatments.iter().map(Some)) {
        let scheme = match t {
            Some(SpanTreatment::Quantized(s)) => *s,
            _ => plain,
        };
        kernels.push(match path {
            AttentionPath::HandWritten => None,
            AttentionPath::Generated => Some(HostAttention::new(&scheme, attention, None)?),
        });
        let mut cache = VisualKvCache::new(shape, scheme, quantizer.clone())?;
        let seq = cache.add_sequence();
        for (l, (k, v)) in kv.iter().enumerate() {
            match t {
                None => cache.prefill(l, seq, k, v, 0..0)?,
                Some(SpanTreatment::Quantized(_)) => cache.prefill(l, seq, k, v, span.clone())?,
                Some(SpanTreatment::Dropped) => {
                    // The prefill holds tokens[..span.end]: what precedes the span is kept.
                    let kept = |x: &Tensor3| {
                        x.slice_tokens(0..span.start).map_err(|_| {
                            ModelError::Input(format!(
                                "dropping span {span:?} leaves no prompt tokens before it"
                            ))
                        })
                    };
                    cache.prefill(l, seq, &kept(k)?, &kept(v)?, 0..0)?
                }
            }
        }
        caches.push((cache, seq));
    }
    let mut sums = vec![Sums::default(); treatments.len()];
    let mut nll_full = 0.0f64;
    for p in span.end..span.end + positions {
        let mut lanes: Vec<Lane<'_, Q>> = caches
            .iter_mut()
            .zip(&kernels)
            .map(|((cache, seq), kernel)| Lane {
                cache,
                seq: *seq,
                kernel: kernel.as_ref(),
            })
            .collect();
        let logits = model.decode_lanes(&mut lanes, tokens[p], p)?;
        let next = tokens[p + 1] as usize;
        let full = log_softmax(&logits[0]);
        let top_full = argmax(&logits[0]);
        nll_full -= full[next];
        for (sum, l) in sums.iter_mut().zip(&logits[1..]) {
            let lq = log_softmax(l);
            sum.agree += usize::from(argmax(l) == top_full);
            sum.kl += full
                .iter()
                .zip(&lq)
                .map(|(x, y)| x.exp() * (x - y))
                .sum::<f64>();
            sum.nll -= lq[next];
        }
    }
    let n = positions as f64;
    let span_f16_bytes = 2 * c.layers * c.kv_heads * span.len() * c.head_dim * 2;
    Ok(sums
        .iter()
        .zip(&caches[1..])
        .map(|(sum, (cache, _))| {
            let mem = cache.memory().total;
            ModelEval {
                positions,
                top1_agreement: sum.agree as f64 / n,
                mean_kl: sum.kl / n,
                perplexity: (sum.nll / n).exp(),
                perplexity_fp: (nll_full / n).exp(),
                span_bytes: mem.span_code_bytes + mem.span_param_bytes,
                span_f16_bytes,
            }
        })
        .collect())
}

/// Running sums of one treatment's comparison.
#[derive(Debug, Clone, Default)]
struct Sums {
    agree: usize,
    kl: f64,
    nll: f64,
}
