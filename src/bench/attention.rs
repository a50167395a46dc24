//! Decode attention at the benchmark shape (8 kv heads, 32 query heads, head_dim 128, a visual
//! span plus [`TEXT`] text tokens by default; synthetic K/V), kvq's generated host kernels on the
//! 1-bit CalibQuant span (the text tokens full precision, in f32 rows unless asked for f16 or
//! bf16 ones) against two baselines over the unquantized cache, timed in the same process:
//!
//! - `candle_f32`: candle-core in f32 as a Rust user writes it, GQA by grouping the query heads
//!   (`[batch, kv_heads, group, head_dim]` against `[batch, kv_heads, tokens, head_dim]`; no
//!   `repeat_kv` copy): matmul with K^T, softmax, matmul with V;
//! - `f16_loop`: the cache in f16, a loop that converts each K and V row once and shares it
//!   among the query heads of its group, rayon over (sequence, kv head).

use candle_core::{Device, Tensor, D};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::{timed, Contender, Order, Rounds};
use crate::attention::{synthetic_kv, HostAttention, SeqData};
use crate::lower::attention::AttentionShape;
use crate::lower::InputType;
use crate::{CacheScheme, Tensor3};

/// Key/value heads.
pub const KV: usize = 8;
/// Query heads per kv head.
pub const GROUP: usize = 4;
/// Channels per head.
pub const DIM: usize = 128;
/// Full-precision (text) tokens before the span, unless asked otherwise.
pub const TEXT: usize = 64;
/// The scheme timed: CalibQuant's 1-bit pair with calibration.
pub const SCHEME: &str = "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
     value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0";

/// The figures of one (span, batch) shape; times are medians in seconds per call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttentionRow {
    /// Span tokens (quantized).
    pub span_tokens: usize,
    /// Full-precision (text) tokens before the span.
    pub text_tokens: usize,
    /// The element type of the text tokens' rows in kvq's cache (`f32`, `f16`, `bf16`).
    pub text_rows: &'static str,
    /// Sequences.
    pub batch: usize,
    /// The order of the timed calls.
    pub order: Order,
    /// candle f32 over the unquantized cache.
    pub candle_f32_s: f64,
    /// The f16 loop over the unquantized cache.
    pub f16_loop_s: f64,
    /// kvq's generated kernels over the 1-bit span.
    pub kvq_s: f64,
    /// Relative L2 distance of kvq's output from candle's (the quantization's error).
    pub rel_error_vs_f32: f64,
    /// Bytes of the span's codes and parameters (keys and values).
    pub span_bytes: usize,
    /// Bytes of the same span in f16.
    pub span_f16_bytes: usize,
    /// Bytes of the text tokens' rows in kvq's cache (keys and values, as `text_rows`).
    pub text_bytes: usize,
    /// Bytes of the same rows in f16 (the f16 loop's cache).
    pub text_f16_bytes: usize,
}

impl AttentionRow {
    /// The span's f16 bytes over kvq's (codes and parameters).
    pub fn span_compression(&self) -> f64 {
        self.span_f16_bytes as f64 / self.span_bytes as f64
    }

    /// A sequence's whole cache (text tokens and span) in f16 over kvq's.
    pub fn cache_compression(&self) -> f64 {
        (self.span_f16_bytes + self.text_f16_bytes) as f64
            / (self.span_bytes + self.text_bytes) as f64
    }
}

/// Key/value-like data `[KV, tokens, DIM]` ([`synthetic_kv`]).
pub fn tensor(tokens: usize, seed: u64, offset: f32) -> anyhow::Result<Tensor3> {
    Ok(synthetic_kv(KV, tokens, DIM, seed, offset)?)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

/// The f16 baseline: per (sequence, kv head), the logits of every token for the group's query
/// heads (each K row converted once), softmax, then `P V` (each V row converted once). `q` is
/// `[batch, KV * GROUP, DIM]`, `k[b]` and `v[b]` `[KV, tokens, DIM]`.
pub fn f16_loop(q: &[f32], k: &[Vec<f16>], v: &[Vec<f16>], tokens: usize) -> Vec<f32> {
    let inv = 1.0 / (DIM as f32).sqrt();
    let parts: Vec<Vec<f32>> = (0..k.len() * KV)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / KV, bh % KV);
            let qh = &q[(b * KV + h) * GROUP * DIM..(b * KV + h + 1) * GROUP * DIM];
            let kh = &k[b][h * tokens * DIM..(h + 1) * tokens * DIM];
            let vh = &v[b][h * tokens * DIM..(h + 1) * tokens * DIM];
            let mut row = vec![0.0f32; DIM];
            let mut logits = vec![0.0f32; GROUP * tokens];
            for (t, kr) in kh.chunks_exact(DIM).enumerate() {
                kr.convert_to_f32_slice(&mut row);
                for gi in 0..GROUP {
                    logits[gi * tokens + t] = dot(&qh[gi * DIM..(gi + 1) * DIM], &row) * inv;
                }
            }
            let mut sums = [0.0f32; GROUP];
            for (gi, l) in logits.chunks_exact_mut(tokens).enumerate() {
                let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for x in l.iter_mut() {
                    *x = (*x - m).exp();
                    sums[gi] += *x;
                }
            }
            let mut acc = vec![0.0f32; GROUP * DIM];
            for (t, vr) in vh.chunks_exact(DIM).enumerate() {
                vr.convert_to_f32_slice(&mut row);
                for gi in 0..GROUP {
                    let p = logits[gi * tokens + t];
                    for (a, &x) in acc[gi * DIM..(gi + 1) * DIM].iter_mut().zip(&row) {
                        *a += p * x;
                    }
                }
            }
            for gi in 0..GROUP {
                for a in &mut acc[gi * DIM..(gi + 1) * DIM] {
                    *a /= sums[gi];
                }
            }
            acc
        })
        .collect();
    parts.concat()
}

/// The candle baseline: `[batch, KV, GROUP, DIM]` queries against `[batch, KV, tokens, DIM]`
/// keys and values.
pub fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let s = (q.matmul(&k.t()?)? * (1.0 / (DIM as f64).sqrt()))?;
    let m = s.max_keepdim(D::Minus1)?;
    let e = s.broadcast_sub(&m)?.exp()?;
    let z = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&z)?.matmul(v)
}

/// Tokens `[text | span]` of one sequence, per head, flattened `[KV, tokens, DIM]`.
pub fn concat(text: &Tensor3, span: &Tensor3) -> Vec<f32> {
    let mut out = Vec::with_capacity(text.data().len() + span.data().len());
    for h in 0..KV {
        for t in 0..text.shape().tokens {
            out.extend_from_slice(text.row(h, t));
        }
        for t in 0..span.shape().tokens {
            out.extend_from_slice(span.row(h, t));
        }
    }
    out
}

/// Times the three contenders at `span_tokens` (after `text_tokens` full-precision ones, whose
/// rows kvq's cache keeps as `text_rows`) and `batch` (every sequence over the same K/V, each
/// baseline holding its own copy per sequence) over `rounds` ([`super::timed`]).
pub fn run(
    span_tokens: usize,
    (text_tokens, text_rows): (usize, InputType),
    batch: usize,
    rounds: Rounds,
) -> anyhow::Result<AttentionRow> {
    anyhow::ensure!(
        span_tokens > 0 && batch > 0,
        "span tokens and batch must be positive"
    );
    let scheme = CacheScheme::parse(SCHEME)?;
    let shape = AttentionShape {
        fp: text_rows,
        head_dim: DIM as u32,
        group: GROUP as u32,
    };
    let attn = HostAttention::new(&scheme, shape, None)?;
    let text = match text_tokens {
        0 => None,
        n => Some((tensor(n, 1, 1.0)?, tensor(n, 2, 0.3)?)),
    };
    let (span_k, span_v) = (tensor(span_tokens, 3, 1.0)?, tensor(span_tokens, 4, 0.3)?);
    let pk = crate::reference::quantize(&span_k, &scheme.key)?;
    let pv = crate::reference::quantize(&span_v, &scheme.value)?;
    let tokens = text_tokens + span_tokens;
    let (full_k, full_v) = match &text {
        Some((text_k, text_v)) => (concat(text_k, &span_k), concat(text_v, &span_v)),
        None => (span_k.data().to_vec(), span_v.data().to_vec()),
    };
    drop((span_k, span_v));
    let per_seq = KV * GROUP * DIM;
    let q = tensor(GROUP * batch, 1, 0.7)?.data().to_vec();
    let q = q.as_slice();

    let dev = Device::Cpu;
    let ck = Tensor::from_vec(full_k.repeat(batch), (batch, KV, tokens, DIM), &dev)?;
    let cv = Tensor::from_vec(full_v.repeat(batch), (batch, KV, tokens, DIM), &dev)?;
    let cq = Tensor::from_vec(q.to_vec(), (batch, KV, GROUP, DIM), &dev)?;
    let hk: Vec<Vec<f16>> = (0..batch).map(|_| to_f16(&full_k)).collect();
    let hv: Vec<Vec<f16>> = (0..batch).map(|_| to_f16(&full_v)).collect();
    drop((full_k, full_v));
    let seqs: Vec<SeqData<'_>> = (0..batch)
        .map(|i| SeqData {
            q: &q[i * per_seq..(i + 1) * per_seq],
            fp: text.as_ref().map(|(k, v)| (k, v)),
            span: Some((&pk, &pv)),
        })
        .collect();
    let mut args = attn.prepare(KV, &seqs)?;
    let reference: Vec<f32> = candle_attention(&cq, &ck, &cv)?.flatten_all()?.to_vec1()?;
    let times = {
        let args = &mut args;
        let attn = &attn;
        let mut contenders = [
            Contender {
                name: "candle_f32",
                run: Box::new(|| {
                    std::hint::black_box(candle_attention(&cq, &ck, &cv)?);
                    Ok(())
                }),
            },
            Contender {
                name: "f16_loop",
                run: Box::new(|| {
                    std::hint::black_box(f16_loop(q, &hk, &hv, tokens));
                    Ok(())
                }),
            },
            Contender {
                name: "kvq",
                run: Box::new(move || Ok(attn.run(args)?)),
            },
        ];
        timed(rounds, &mut contenders)?
    };
    let out = args.outputs().concat();
    let params = pk.zero.len() + pk.scale.len() + pv.zero.len() + pv.scale.len();
    let row = AttentionRow {
        span_tokens,
        text_tokens,
        text_rows: text_rows.name(),
        batch,
        order: rounds.order,
        candle_f32_s: times[0],
        f16_loop_s: times[1],
        kvq_s: times[2],
        rel_error_vs_f32: crate::metrics::rel_error(&out, &reference),
        span_bytes: pk.codes.len() + pv.codes.len() + params * 2,
        span_f16_bytes: 2 * KV * span_tokens * DIM * 2,
        text_bytes: 2 * KV * text_tokens * DIM * text_rows.scalar().size(),
        text_f16_bytes: 2 * KV * text_tokens * DIM * 2,
    };
    Ok(row)
}

/// `x` in f16.
pub fn to_f16(x: &[f32]) -> Vec<f16> {
    x.iter().map(|&v| f16::from_f32(v)).collect()
}
