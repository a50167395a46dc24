//! `kvq demo --device cuda`: the demo's story on a GPU. The visual KV cache lives in device
//! memory (`VisualKvCache<Cuda>`), spans are quantized there by the generated PTX kernels, and
//! decode attention runs the generated attention kernels on the cache's buffers. The baseline of
//! that device is the same cache with nothing quantized (every token full precision, the same
//! kernels' f32 path); the error is measured against the CPU's f32 attention.

use std::time::Instant;

use anyhow::{Context, Result};
use kvq::bundle::cuda_cache;
use kvq::metrics::rel_error;
use kvq::KvQuant;
use kvq_runtime::cache::Cuda;
use kvq_runtime::{Device, KvFile, ModelShape, QueryRef, VisualKvCache};

use super::demo::{
    bar, bench_data, extend, f32_attention, step_input, BenchData, CalibQuant, Noise,
};

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The capture part on the GPU: `gpu` (quantized span) and a full-precision cache of the same
/// shape, filled from `file` plus `synthetic` tokens, decoded for `steps` steps.
pub fn capture(
    file: &KvFile,
    shape: ModelShape,
    mut gpu: VisualKvCache<Cuda>,
    synthetic: usize,
    steps: usize,
) -> Result<()> {
    let scheme = CalibQuant::SCHEME;
    let mut fp = cuda_cache(shape, scheme, 0).context("the full-precision GPU cache")?;
    let (seq, fseq) = (gpu.add_sequence(), fp.add_sequence());
    let mut noise = Noise(0x9E3779B97F4A7C15);
    let pb = bar(file.layers.len(), "quantizing spans (GPU)");
    let mut full = Vec::new();
    for (l, layer) in file.layers.iter().enumerate() {
        let k = extend(&layer.k, synthetic, &mut noise);
        let v = extend(&layer.v, synthetic, &mut noise);
        let n = k.shape().tokens;
        gpu.prefill(l, seq, &k, &v, 1..n)?;
        fp.prefill(l, fseq, &k, &v, 0..0)?;
        full.push((k, v));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let tokens = file.layers[0].k.shape().tokens;
    println!(
        "cache on {}: {} layers x {} kv heads x d {}; 1 full-precision token, a quantized span of {} tokens",
        gpu.device().name(),
        shape.layers,
        shape.kv_heads,
        shape.head_dim,
        tokens - 1 + synthetic
    );
    let pb = bar(steps * shape.layers, "decoding (GPU)");
    let (mut t_kvq, mut t_fp) = (0.0f64, 0.0f64);
    let (mut err, mut fp_err) = (0.0f64, 0.0f64);
    for step in 0..steps {
        for (l, layer) in file.layers.iter().enumerate() {
            let (nk, nv, q) = step_input(layer, step)?;
            gpu.append(l, seq, &nk, &nv)?;
            fp.append(l, fseq, &nk, &nv)?;
            let (k, v) = &mut full[l];
            *k = k.concat_tokens(&nk)?;
            *v = v.concat_tokens(&nv)?;
            let t = Instant::now();
            let got = gpu.attend(l, &[QueryRef { seq, q: &q }])?.concat();
            t_kvq += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let base = fp.attend(l, &[QueryRef { seq: fseq, q: &q }])?.concat();
            t_fp += t.elapsed().as_secs_f64();
            let want = f32_attention(&q, shape.q_heads, k, v);
            err += rel_error(&got, &want);
            fp_err = fp_err.max(rel_error(&base, &want));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let n = (steps * shape.layers).max(1) as f64;
    report_memory("", &gpu);
    println!(
        "attention error against full precision (relative L2, mean of {n} layer-steps): {:.4}",
        err / n
    );
    println!(
        "the GPU's full-precision path against the CPU's f32 attention: relative L2 at most {fp_err:.1e}"
    );
    println!(
        "speed: generated 1-bit attention on the GPU {:.3} ms per layer-step, the same kernels over the unquantized cache {:.3} ms: {:.2}x (wall time of each call, query upload and output download included)",
        t_kvq * 1e3 / n,
        t_fp * 1e3 / n,
        t_fp / t_kvq.max(1e-12)
    );
    Ok(())
}

fn report_memory(indent: &str, cache: &VisualKvCache<Cuda>) {
    let mem = cache.memory().total;
    println!(
        "{indent}device memory: {} bytes allocated vs {} in f16: {:.2}x smaller (span codes {} B, parameters {} B)",
        mem.allocated_bytes(),
        mem.f16_equivalent_bytes,
        mem.f16_equivalent_bytes as f64 / mem.allocated_bytes().max(1) as f64,
        mem.span_code_bytes,
        mem.span_param_bytes
    );
}

/// The benchmark shape on the GPU (8 kv / 32 query heads, head_dim 128, 64 full-precision +
/// `span` quantized tokens): medians of `steps` interleaved calls against the unquantized cache.
pub fn benchmark_shape(span: usize, steps: usize) -> Result<()> {
    let scheme = CalibQuant::SCHEME;
    let BenchData {
        shape,
        fp: fp_tokens,
        tokens,
        k,
        v,
        q,
    } = bench_data(span)?;
    let mut gpu = cuda_cache(shape, scheme, 0)?;
    let mut fp = cuda_cache(shape, scheme, 0)?;
    let (seq, fseq) = (gpu.add_sequence(), fp.add_sequence());
    gpu.prefill(0, seq, &k, &v, fp_tokens..tokens)?;
    fp.prefill(0, fseq, &k, &v, 0..0)?;
    let (mut a, mut b, mut got) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        got = gpu.attend(0, &[QueryRef { seq, q: q.data() }])?.concat();
        a.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        fp.attend(
            0,
            &[QueryRef {
                seq: fseq,
                q: q.data(),
            }],
        )?;
        b.push(t.elapsed().as_secs_f64());
    }
    let want = f32_attention(q.data(), 32, &k, &v);
    let (a, b) = (median(a), median(b));
    println!(
        "benchmark shape on the GPU: 8 kv / 32 query heads, head_dim 128, {fp_tokens} full-precision + {span} quantized tokens (synthetic K/V, one layer)"
    );
    report_memory("  ", &gpu);
    println!(
        "  attention error against full precision (relative L2): {:.4}",
        rel_error(&got, &want)
    );
    println!(
        "  speed: generated 1-bit attention {:.3} ms, the same kernels over the unquantized tokens {:.3} ms: {:.2}x (medians of {} calls, wall time; scripts/gpu-check.sh times the kernels alone and PyTorch's SDPA)",
        a * 1e3,
        b * 1e3,
        b / a.max(1e-12),
        steps.max(1)
    );
    Ok(())
}
