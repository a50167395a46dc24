//! `kvq demo`: the main job. Declares CalibQuant with `#[kv_quant]`, compiles its kernels (PTX
//! with a ptxas summary, and host code), fills a visual KV cache from the vendored DINOv2 K/V
//! extended by a long synthetic span, and decodes with the generated attention kernels on the
//! cache's storage: memory saved, error against full precision, speed against the device's
//! full-precision baseline. On the CPU by default (`VisualKvCache::attend_with`); with
//! `--device cuda` (or `auto` where a GPU is present) the cache and its kernels run on the GPU
//! (module `demo_cuda`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kvq::attention::HostAttention;
use kvq::backend::HostSpanQuantizer;
use kvq::lower::attention::{attention, AttentionSchedule, AttentionShape};
use kvq::lower::{InputType, Schedule, ShapeClass};
use kvq::metrics::rel_error;
use kvq::{kv_quant, KvQuant, Tensor3};
use kvq_codegen::{ptx, ptxas, Arch};
use kvq_runtime::{KvFile, LayerKv, ModelShape, QueryRef, VisualKvCache};

/// The scheme of arXiv 2502.14882: 1-bit per-channel codes, keys shrunk by 0.5 and values by
/// 0.3 around the mean, logits of the visual span calibrated with d = 3.
#[kv_quant(
    key(bits = 1, axis = channel, group = all, rule = shrink(0.5)),
    value(bits = 1, axis = channel, group = all, rule = shrink(0.3)),
    calibrate = 3.0,
)]
pub struct CalibQuant;

/// The most memory the demo's full-precision copy of the K/V may take.
const DEMO_MEMORY_BYTES: u64 = 8 << 30;

/// Where the demo's cache lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when a driver and a GPU are present, else the CPU.
    Auto,
    /// Host memory and generated host code.
    Cpu,
    /// CUDA device 0: device memory and generated PTX.
    Cuda,
}

/// Options of `kvq demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the cache lives and the kernels run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The capture whose K/V fill the cache (DINOv2 visual tokens by default).
    #[arg(
        long,
        default_value = "tests/data/dinov2s_astronaut_qkv_f16.safetensors"
    )]
    kv: PathBuf,
    /// Synthetic visual tokens appended to the real ones (resampled real tokens plus noise).
    #[arg(long, default_value_t = 16384, value_parser = super::sizes::tokens)]
    synthetic_tokens: usize,
    /// Decode steps (a real token appended per step in full precision, attention at every layer).
    #[arg(long, default_value_t = 8, value_parser = super::sizes::count)]
    steps: usize,
    /// Span tokens of the second part, at the benchmark shape (8 kv / 32 query heads, head_dim
    /// 128, 64 full-precision tokens; synthetic K/V); 0 skips it.
    #[arg(long, default_value_t = 16384, value_parser = super::sizes::tokens)]
    bench_tokens: usize,
    /// The model-level figures the error is read against (`kvq report`'s results).
    #[arg(long, default_value = "docs/report/results.json")]
    report: PathBuf,
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(super) fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64).with_message(what.to_string());
    pb.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

/// Deterministic noise in [-0.5, 0.5).
pub(super) struct Noise(pub(super) u64);

impl Noise {
    pub(super) fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// `[heads, 1 + patches + extra, dim]`: the real tokens, then `extra` synthetic ones, each a real
/// patch token (cycling) plus noise of a tenth of the tensor's spread.
pub(super) fn extend(x: &Tensor3, extra: usize, noise: &mut Noise) -> Tensor3 {
    let s = x.shape();
    let spread = x.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut data = Vec::with_capacity(s.heads * (s.tokens + extra) * s.dim);
    for h in 0..s.heads {
        for t in 0..s.tokens {
            data.extend_from_slice(x.row(h, t));
        }
        for i in 0..extra {
            let src = x.row(h, 1 + i % (s.tokens - 1));
            data.extend(src.iter().map(|&v| v + 0.1 * spread * noise.next()));
        }
    }
    Tensor3::new([s.heads, s.tokens + extra, s.dim], data).unwrap_or_else(|_| x.clone())
}

/// Decode step `step` at `layer`: a real token of the capture (cycling over its visual tokens)
/// as the new key and value, and a real query row (`[q_heads * head_dim]`).
pub(super) fn step_input(layer: &LayerKv, step: usize) -> Result<(Tensor3, Tensor3, Vec<f32>)> {
    let tokens = layer.k.shape().tokens;
    let src = 1 + (step * 7) % (tokens - 1);
    let nk = layer.k.slice_tokens(src..src + 1)?;
    let nv = layer.v.slice_tokens(src..src + 1)?;
    let qs = layer.q.shape();
    let q = (0..qs.heads)
        .flat_map(|h| layer.q.row(h, (src + 3) % qs.tokens).to_vec())
        .collect();
    Ok((nk, nv, q))
}

/// Full-precision decode attention in f32 over `k`, `v` = `[kv_heads, tokens, dim]`, threads
/// over kv heads: the baseline the generated kernels are timed against.
pub fn f32_attention(q: &[f32], q_heads: usize, k: &Tensor3, v: &Tensor3) -> Vec<f32> {
    let s = k.shape();
    let (g, dim) = (q_heads / s.heads, s.dim);
    let inv = 1.0 / (dim as f32).sqrt();
    let mut out = vec![0.0f32; q_heads * dim];
    std::thread::scope(|scope| {
        for (h, o) in out.chunks_mut(g * dim).enumerate() {
            scope.spawn(move || {
                for (gi, o) in o.chunks_mut(dim).enumerate() {
                    let qh = &q[(h * g + gi) * dim..(h * g + gi + 1) * dim];
                    let logits: Vec<f32> = (0..s.tokens)
                        .map(|t| qh.iter().zip(k.row(h, t)).map(|(a, b)| a * b).sum::<f32>() * inv)
                        .collect();
                    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let w: Vec<f32> = logits.iter().map(|x| (x - m).exp()).collect();
                    let total: f32 = w.iter().sum();
                    for (t, &p) in w.iter().enumerate() {
                        for (a, &x) in o.iter_mut().zip(v.row(h, t)) {
                            *a += p / total * x;
                        }
                    }
                }
            });
        }
    });
    out
}

/// Emits PTX (sm_90) for the scheme's quantize and attention kernels and prints ptxas's
/// registers and spills for each.
fn ptx_summary(shape: ModelShape) -> Result<()> {
    let scheme = CalibQuant::SCHEME;
    let class = ShapeClass {
        head_dim: shape.head_dim as u32,
        input: InputType::F16,
    };
    let mut kernels = Vec::new();
    for (role, s) in [
        ("quantize keys", &scheme.key),
        ("quantize values", &scheme.value),
    ] {
        let k = kvq::lower::quantize(s, class, &Schedule::gpu_default(s, class))?.kernel;
        kernels.push((role, k));
    }
    let ashape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: shape.head_dim as u32,
        group: shape.group() as u32,
    };
    let attn = attention(
        &scheme,
        ashape,
        &AttentionSchedule::gpu_default(&scheme, ashape),
    )?;
    kernels.extend(attn.stats.map(|k| ("attention stats", k)));
    kernels.extend([
        ("attention partial", attn.partial),
        ("attention combine", attn.combine),
    ]);
    let assembler = ptxas::find();
    println!("PTX for sm_90 ({} kernels):", kernels.len());
    for (role, k) in &kernels {
        let info = kvq_ir::ir::verify(k)?;
        let p = ptx::emit(k, &info, Arch::Sm90)?;
        match &assembler {
            Some(path) => {
                let r = ptxas::assemble(path, &p.text, Arch::Sm90, &k.name)?;
                println!(
                    "  {role:<18} {:>3} registers, {:>3} B spilled, {:>6} B stack",
                    r.registers,
                    r.spill_stores + r.spill_loads,
                    r.stack_frame
                );
            }
            None => println!(
                "  {role:<18} {} bytes of PTX (ptxas not found: run scripts/setup.sh)",
                p.text.len()
            ),
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let scheme = CalibQuant::SCHEME;
    let file = KvFile::load(&args.kv).with_context(|| format!("loading {}", args.kv.display()))?;
    let Some(first) = file.layers.first() else {
        bail!("{} has no layer", args.kv.display());
    };
    let (kv_heads, tokens, dim) = {
        let s = first.k.shape();
        (s.heads, s.tokens, s.dim)
    };
    if tokens < 2 {
        bail!("the capture needs a leading token and at least one visual token");
    }
    let all = tokens.saturating_add(args.synthetic_tokens);
    let elements = kvq_ir::limits::check_tensor(kv_heads as u64, all as u64, dim as u64)?;
    // The demo keeps every layer's K and V in f32 beside the cache, for the f32 baseline.
    let bytes = (elements as u64).saturating_mul(8 * file.layers.len() as u64);
    if bytes > DEMO_MEMORY_BYTES {
        bail!(
            "--synthetic-tokens {}: the f32 baseline would hold {:.1} GiB of K/V, more than the \
             demo's {} GiB; use fewer tokens",
            args.synthetic_tokens,
            bytes as f64 / (1u64 << 30) as f64,
            DEMO_MEMORY_BYTES >> 30
        );
    }
    println!("scheme CalibQuant (declared with #[kv_quant]): {scheme}");
    let shape = ModelShape {
        layers: file.layers.len(),
        kv_heads,
        q_heads: first.q.shape().heads,
        head_dim: dim,
    };
    ptx_summary(shape)?;
    let gpu = match args.device {
        DeviceArg::Cpu => None,
        DeviceArg::Cuda => {
            Some(kvq::bundle::cuda_cache(shape, scheme, 0).context("--device cuda")?)
        }
        DeviceArg::Auto => match kvq::bundle::cuda_cache(shape, scheme, 0) {
            Ok(cache) => Some(cache),
            Err(e) => {
                println!("device auto: no usable GPU ({e:#}); running on the CPU");
                None
            }
        },
    };
    if let Some(gpu) = gpu {
        println!("device: {}", kvq_runtime::Device::name(gpu.device()));
        super::demo_cuda::capture(&file, shape, gpu, args.synthetic_tokens, args.steps)?;
        if args.bench_tokens > 0 {
            super::demo_cuda::benchmark_shape(args.bench_tokens, args.steps)?;
        }
        model_figures(&args.report, &scheme);
        return Ok(());
    }
    println!("device: cpu");

    let t = Instant::now();
    let attn = HostAttention::new(
        &scheme,
        AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: dim as u32,
            group: shape.group() as u32,
        },
        None,
    )?;
    println!(
        "host kernels compiled (or loaded from the compile cache) in {:.2?}",
        t.elapsed()
    );

    // Prefill: token 0 (CLS) full precision, the real patches and the synthetic ones quantized.
    let mut cache = VisualKvCache::new(shape, scheme, HostSpanQuantizer)?;
    let seq = cache.add_sequence();
    let mut noise = Noise(0x9E3779B97F4A7C15);
    let pb = bar(file.layers.len(), "quantizing spans");
    let mut full = Vec::new();
    for (l, layer) in file.layers.iter().enumerate() {
        let k = extend(&layer.k, args.synthetic_tokens, &mut noise);
        let v = extend(&layer.v, args.synthetic_tokens, &mut noise);
        let n = k.shape().tokens;
        cache.prefill(l, seq, &k, &v, 1..n)?;
        full.push((k, v));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let span = tokens - 1 + args.synthetic_tokens;
    println!(
        "cache: {} layers x {kv_heads} kv heads x d {dim}; 1 full-precision token, a quantized span of {span} tokens ({} real, {} synthetic)",
        shape.layers,
        tokens - 1,
        args.synthetic_tokens
    );

    // Decode: each step appends one (real) token and attends at every layer.
    let pb = bar(args.steps * shape.layers, "decoding");
    let (mut t_kvq, mut t_f32) = (Duration::ZERO, Duration::ZERO);
    let (mut err, mut agree) = (0.0f64, 0.0f64);
    for step in 0..args.steps {
        for (l, layer) in file.layers.iter().enumerate() {
            let (nk, nv, q) = step_input(layer, step)?;
            cache.append(l, seq, &nk, &nv)?;
            let (k, v) = &mut full[l];
            *k = k.concat_tokens(&nk)?;
            *v = v.concat_tokens(&nv)?;
            let query = [QueryRef { seq, q: &q }];
            let t = Instant::now();
            let got = cache.attend_with(l, &query, &attn)?.concat();
            t_kvq += t.elapsed();
            let t = Instant::now();
            let want = f32_attention(&q, shape.q_heads, k, v);
            t_f32 += t.elapsed();
            let cached = cache.attend(l, &query)?.concat();
            err += rel_error(&got, &want);
            agree = agree.max(rel_error(&got, &cached));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let n = (args.steps * shape.layers).max(1) as f64;
    let mem = cache.memory().total;
    println!(
        "memory: {} bytes allocated vs {} in f16: {:.2}x smaller (span codes {} B, parameters {} B)",
        mem.allocated_bytes(),
        mem.f16_equivalent_bytes,
        mem.f16_equivalent_bytes as f64 / mem.allocated_bytes().max(1) as f64,
        mem.span_code_bytes,
        mem.span_param_bytes
    );
    println!(
        "attention error against full precision (relative L2, mean of {n} layer-steps): {:.4}",
        err / n
    );
    println!(
        "generated attention vs the cache's hand-written attend: relative L2 at most {agree:.1e}"
    );
    println!(
        "speed: generated 1-bit attention {:.3} ms per layer-step, f32 attention over the unquantized cache {:.3} ms: {:.2}x",
        t_kvq.as_secs_f64() * 1e3 / n,
        t_f32.as_secs_f64() * 1e3 / n,
        t_f32.as_secs_f64() / t_kvq.as_secs_f64().max(1e-12)
    );
    println!(
        "(this capture: head_dim {dim}, {} query heads over {kv_heads} kv heads; the shape below is where a visual-token cache is large)",
        shape.q_heads
    );
    if args.bench_tokens > 0 {
        benchmark_shape(args.bench_tokens, args.steps)?;
    }
    model_figures(&args.report, &scheme);
    Ok(())
}

/// The second part: the shape where a visual-token cache is large (8 kv / 32 query heads,
/// head_dim 128, `span` quantized tokens after 64 full-precision ones, synthetic K/V of one
/// layer): memory, and the generated attention timed against the f32 attention over the same
/// tokens unquantized, medians of `steps` interleaved calls each.
fn benchmark_shape(span: usize, steps: usize) -> Result<()> {
    let scheme = CalibQuant::SCHEME;
    let BenchData {
        shape,
        fp,
        tokens,
        k,
        v,
        q,
    } = bench_data(span)?;
    let mut cache = VisualKvCache::new(shape, scheme, HostSpanQuantizer)?;
    let seq = cache.add_sequence();
    cache.prefill(0, seq, &k, &v, fp..tokens)?;
    let attn = HostAttention::new(
        &scheme,
        AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: 128,
            group: 4,
        },
        None,
    )?;
    let query = [QueryRef { seq, q: q.data() }];
    let (mut t_kvq, mut t_f32) = (Vec::new(), Vec::new());
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        got = cache.attend_with(0, &query, &attn)?.concat();
        t_kvq.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        want = f32_attention(q.data(), 32, &k, &v);
        t_f32.push(t.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(t_kvq), median(t_f32));
    let mem = cache.memory().total;
    println!(
        "benchmark shape: 8 kv / 32 query heads, head_dim 128, {fp} full-precision + {span} quantized tokens (synthetic K/V, one layer)"
    );
    println!(
        "  memory: {} bytes allocated vs {} in f16: {:.2}x smaller",
        mem.allocated_bytes(),
        mem.f16_equivalent_bytes,
        mem.f16_equivalent_bytes as f64 / mem.allocated_bytes().max(1) as f64
    );
    println!(
        "  attention error against full precision (relative L2): {:.4}",
        rel_error(&got, &want)
    );
    println!(
        "  speed: generated 1-bit attention {:.3} ms, the demo's f32 attention (a thread per kv head) over the unquantized tokens {:.3} ms: {:.2}x (medians of {} calls, this CPU)",
        a * 1e3,
        b * 1e3,
        b / a.max(1e-12),
        steps.max(1)
    );
    Ok(())
}

/// The benchmark shape's data: 8 kv / 32 query heads, head_dim 128, `fp` = 64 full-precision
/// tokens then `span` (synthetic K/V, one layer), and a query.
pub(super) struct BenchData {
    pub(super) shape: ModelShape,
    pub(super) fp: usize,
    pub(super) tokens: usize,
    pub(super) k: Tensor3,
    pub(super) v: Tensor3,
    pub(super) q: Tensor3,
}

/// [`BenchData`] for a span of `span` tokens (checked against kvq's tensor limits first).
pub(super) fn bench_data(span: usize) -> Result<BenchData> {
    let fp = 64;
    let tokens = span.checked_add(fp).context("--bench-tokens too large")?;
    kvq_ir::limits::check_tensor(8, tokens as u64, 128)?;
    Ok(BenchData {
        shape: ModelShape {
            layers: 1,
            kv_heads: 8,
            q_heads: 32,
            head_dim: 128,
        },
        fp,
        tokens,
        k: kvq::attention::synthetic_kv(8, tokens, 128, 11, 1.0)?,
        v: kvq::attention::synthetic_kv(8, tokens, 128, 12, 0.3)?,
        q: kvq::attention::synthetic_kv(32, 1, 128, 13, 0.7)?,
    })
}

/// One line on what the attention error means for a model: the committed `kvq report` figures
/// (SmolLM2, the study's prompts) of this scheme and of leaving the span out of attention.
fn model_figures(path: &std::path::Path, scheme: &kvq::CacheScheme) {
    let report: Option<kvq::report::Report> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(report) = report else {
        println!(
            "(no model-level figures: {} not found or not a kvq report)",
            path.display()
        );
        return;
    };
    let this = report
        .model
        .iter()
        .find(|e| kvq::CacheScheme::parse(&e.treatment).is_ok_and(|s| s == *scheme));
    let dropped = report.model.iter().find(|e| e.treatment == "dropped");
    match (this, dropped) {
        (Some(e), Some(d)) => println!(
            "what the error means for a model ({}: SmolLM2-135M, {} prompts, kvq report): this scheme keeps {:.1}% top-1 agreement with full precision (mean KL {:.3}); leaving the span out of attention keeps {:.1}% (KL {:.3})",
            path.display(),
            report.prompts.len(),
            100.0 * e.mean_top1,
            e.mean_kl,
            100.0 * d.mean_top1,
            d.mean_kl
        ),
        _ => println!("({} has no entry for this scheme and a dropped span)", path.display()),
    }
}
