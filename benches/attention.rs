//! Decode attention at 8 kv heads, 32 query heads, head_dim 128, a visual span of 4k, 16k and
//! 64k tokens plus 64 text tokens, batch 1 and 4. Timed in the same run:
//!
//! - `candle_f32`: the unquantized cache in f32 with candle-core, as a Rust user writes it (query
//!   `[batch, kv_heads, group, head_dim]`, matmul with K^T, softmax, matmul with V);
//! - `f16_loop`: the unquantized cache in f16, a loop that converts each K/V row once and shares
//!   it among the query heads of its group, rayon over (sequence, kv head);
//! - `kvq_calibquant_1bit`: the generated host kernels (stats, partial, combine) on the 1-bit
//!   CalibQuant span (keys shrink(0.5), values shrink(0.3), calibrate = 3) and the text tokens in
//!   f32.
//!
//! Prints the speed-ups against both baselines, the span's size against f16, and the generated
//! output's deviation from the candle output (a sanity check of the quantized result).

mod common;

use candle_core::{Device, Tensor, D};
use criterion::{criterion_group, criterion_main, Criterion};
use half::f16;
use half::slice::HalfFloatSliceExt;
use kvq::attention::{HostAttention, SeqData};
use kvq::lower::attention::AttentionShape;
use kvq::reference::quantize;
use kvq::{CacheScheme, Tensor3};
use rayon::prelude::*;

const KV: usize = 8;
const G: usize = 4;
const DIM: usize = 128;
const TEXT: usize = 64;

/// Key/value-like data `[KV, tokens, DIM]` ([`kvq::attention::synthetic_kv`]).
fn tensor(tokens: usize, seed: u64, offset: f32) -> Tensor3 {
    kvq::attention::synthetic_kv(KV, tokens, DIM, seed, offset).unwrap()
}

/// `x` with its rows in f16, flattened.
fn to_f16(x: &Tensor3) -> Vec<f16> {
    x.data().iter().map(|&v| f16::from_f32(v)).collect()
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

/// The f16 baseline: per (sequence, kv head), logits of every token for the group's query
/// heads (each K row converted once), softmax, then `P V` (each V row converted once).
fn f16_loop(q: &[f32], k: &[Vec<f16>], v: &[Vec<f16>], tokens: usize) -> Vec<f32> {
    let inv = 1.0 / (DIM as f32).sqrt();
    let parts: Vec<Vec<f32>> = (0..k.len() * KV)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / KV, bh % KV);
            let qh = &q[(b * KV + h) * G * DIM..(b * KV + h + 1) * G * DIM];
            let kh = &k[b][h * tokens * DIM..(h + 1) * tokens * DIM];
            let vh = &v[b][h * tokens * DIM..(h + 1) * tokens * DIM];
            let mut row = vec![0.0f32; DIM];
            let mut logits = vec![0.0f32; G * tokens];
            for (t, kr) in kh.chunks_exact(DIM).enumerate() {
                kr.convert_to_f32_slice(&mut row);
                for gi in 0..G {
                    logits[gi * tokens + t] = dot(&qh[gi * DIM..(gi + 1) * DIM], &row) * inv;
                }
            }
            let mut sums = [0.0f32; G];
            for (gi, l) in logits.chunks_exact_mut(tokens).enumerate() {
                let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for x in l.iter_mut() {
                    *x = (*x - m).exp();
                    sums[gi] += *x;
                }
            }
            let mut acc = vec![0.0f32; G * DIM];
            for (t, vr) in vh.chunks_exact(DIM).enumerate() {
                vr.convert_to_f32_slice(&mut row);
                for gi in 0..G {
                    let p = logits[gi * tokens + t];
                    for (a, &x) in acc[gi * DIM..(gi + 1) * DIM].iter_mut().zip(&row) {
                        *a += p * x;
                    }
                }
            }
            for gi in 0..G {
                for a in &mut acc[gi * DIM..(gi + 1) * DIM] {
                    *a /= sums[gi];
                }
            }
            acc
        })
        .collect();
    parts.concat()
}

/// The candle baseline: `[batch, KV, G, DIM]` queries against `[batch, KV, tokens, DIM]` K, V.
fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let s = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (DIM as f64).sqrt())).unwrap();
    let m = s.max_keepdim(D::Minus1).unwrap();
    let e = s.broadcast_sub(&m).unwrap().exp().unwrap();
    let z = e.sum_keepdim(D::Minus1).unwrap();
    e.broadcast_div(&z).unwrap().matmul(v).unwrap()
}

/// Tokens `[text | span]` of one sequence, per head.
fn concat(text: &Tensor3, span: &Tensor3) -> Vec<f32> {
    let mut out = Vec::with_capacity(text.data().len() + span.data().len());
    for h in 0..KV {
        for t in 0..TEXT {
            out.extend_from_slice(text.row(h, t));
        }
        for t in 0..span.shape().tokens {
            out.extend_from_slice(span.row(h, t));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let scheme = CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
    )
    .unwrap();
    let attn = HostAttention::new(
        &scheme,
        AttentionShape {
            head_dim: DIM as u32,
            group: G as u32,
        },
        None,
    )
    .unwrap();
    let text_k = tensor(TEXT, 1, 1.0);
    let text_v = tensor(TEXT, 2, 0.3);
    for span_tokens in [4096, 16384, 65536] {
        let span_k = tensor(span_tokens, 3, 1.0);
        let span_v = tensor(span_tokens, 4, 0.3);
        let pk = quantize(&span_k, &scheme.key).unwrap();
        let pv = quantize(&span_v, &scheme.value).unwrap();
        let tokens = TEXT + span_tokens;
        let full_k = concat(&text_k, &span_k);
        let full_v = concat(&text_v, &span_v);
        let f16_bytes = 2 * KV * span_tokens * DIM * 2;
        let kvq_bytes = pk.codes.len()
            + pv.codes.len()
            + (pk.zero.len() + pk.scale.len() + pv.zero.len() + pv.scale.len()) * 2;
        println!(
            "span of {span_tokens} tokens: K+V {kvq_bytes} bytes in 1 bit vs {f16_bytes} in f16 ({:.2}x smaller)",
            f16_bytes as f64 / kvq_bytes as f64
        );
        for batch in [1usize, 4] {
            let q: Vec<f32> = tensor(G * batch, 1, 0.7).data()[..batch * KV * G * DIM].to_vec();
            let group = format!("attention_{span_tokens}tok_b{batch}");
            let mut g = c.benchmark_group(&group);
            g.sample_size(10);
            g.measurement_time(std::time::Duration::from_secs(3));
            let dev = Device::Cpu;
            let ck =
                Tensor::from_vec(full_k.repeat(batch), (batch, KV, tokens, DIM), &dev).unwrap();
            let cv =
                Tensor::from_vec(full_v.repeat(batch), (batch, KV, tokens, DIM), &dev).unwrap();
            let cq = Tensor::from_vec(q.clone(), (batch, KV, G, DIM), &dev).unwrap();
            let reference: Vec<f32> = candle_attention(&cq, &ck, &cv)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            g.bench_function("candle_f32", |b| b.iter(|| candle_attention(&cq, &ck, &cv)));
            drop((ck, cv));
            let hk: Vec<Vec<f16>> = (0..batch)
                .map(|_| to_f16(&Tensor3::new([KV, tokens, DIM], full_k.clone()).unwrap()))
                .collect();
            let hv: Vec<Vec<f16>> = (0..batch)
                .map(|_| to_f16(&Tensor3::new([KV, tokens, DIM], full_v.clone()).unwrap()))
                .collect();
            g.bench_function("f16_loop", |b| b.iter(|| f16_loop(&q, &hk, &hv, tokens)));
            drop((hk, hv));
            let seqs: Vec<SeqData<'_>> = (0..batch)
                .map(|i| SeqData {
                    q: &q[i * KV * G * DIM..(i + 1) * KV * G * DIM],
                    fp: Some((&text_k, &text_v)),
                    span: Some((&pk, &pv)),
                })
                .collect();
            let mut args = attn.prepare(KV, &seqs).unwrap();
            let mut ran = false;
            g.bench_function("kvq_calibquant_1bit", |b| {
                ran = true;
                b.iter(|| attn.run(&mut args).unwrap())
            });
            g.finish();
            if !ran {
                continue; // filtered out on the command line
            }
            let out = args.outputs().concat();
            println!(
                "{group}: 1-bit output vs f32 attention: relative L2 error {:.3}",
                kvq::metrics::rel_error(&out, &reference)
            );
            common::print_speedups(&group, &["candle_f32", "f16_loop"], "kvq_calibquant_1bit");
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
