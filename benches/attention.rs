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
//! output's deviation from the candle output (a sanity check of the quantized result). The
//! baselines live in `kvq::bench::attention`; `kvq bench attention` makes the same comparison
//! from the release binary.

mod common;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use half::f16;
use kvq::attention::{HostAttention, SeqData};
use kvq::bench::attention::{
    candle_attention, concat, f16_loop, to_f16, DIM, GROUP as G, KV, TEXT,
};
use kvq::lower::attention::AttentionShape;
use kvq::reference::quantize;
use kvq::{CacheScheme, Tensor3};

fn tensor(tokens: usize, seed: u64, offset: f32) -> Tensor3 {
    kvq::bench::attention::tensor(tokens, seed, offset).unwrap()
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
            fp: kvq_ir::lower::InputType::F32,
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
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            g.bench_function("candle_f32", |b| b.iter(|| candle_attention(&cq, &ck, &cv)));
            drop((ck, cv));
            let hk: Vec<Vec<f16>> = (0..batch).map(|_| to_f16(&full_k)).collect();
            let hv: Vec<Vec<f16>> = (0..batch).map(|_| to_f16(&full_v)).collect();
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
