//! `kvq profile --attention`: the pair's GPU decode-attention kernels (the logit statistics when
//! calibrated, the per-chunk partials, the combine) through the cost model, launched as
//! `AttentionArgs::launch` launches them, on a synthetic batch: a query per sequence, `fp_tokens`
//! full-precision tokens and a span of `tokens` tokens quantized by the host kernels.

use anyhow::{Context, Result};
use kvq::backend::{quantize, Backend};
use kvq::lower::attention::{attention, AttentionArgs, AttentionSchedule, AttentionShape, SeqData};
use kvq::{CacheScheme, Calibration, Scheme, Tensor3};
use kvq_ir::ir::interp::Arg;
use kvq_ir::ir::Kernel;
use kvq_ir::lower::InputType;

use super::profile::{profile_traced, Ctx, ProfileShape, MAX_SIM_BYTES};
use super::profile_report::KernelReport;

/// Deterministic values in [-scale, scale] for a `[heads, tokens, dim]` tensor.
fn synthetic(heads: usize, tokens: usize, dim: usize, seed: u64, scale: f32) -> Result<Tensor3> {
    let data = (0..heads * tokens * dim)
        .map(|i| {
            let h = (i as u64 ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(2_654_435_761) % 2001;
            (h as f32 / 1000.0 - 1.0) * scale
        })
        .collect();
    Ok(Tensor3::new([heads, tokens, dim], data)?)
}

/// The reports of the attention kernels for `shape` (batch, kv heads, span tokens, head_dim,
/// group), with `fp_tokens` full-precision tokens per sequence.
pub fn profile_attention(
    ctx: &Ctx,
    [key, value]: [Scheme; 2],
    calibrate: Option<f32>,
    shape: &ProfileShape,
    fp_tokens: usize,
) -> Result<Vec<KernelReport>> {
    let calibrate = match calibrate {
        None => None,
        Some(d) => Some(Calibration::new(d).context("--calibrate must be positive")?),
    };
    let scheme = CacheScheme {
        key,
        value,
        calibrate,
    };
    let ashape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: shape.head_dim,
        group: shape.group,
    };
    let schedule = AttentionSchedule::gpu_default(&scheme, ashape);
    let kernels = attention(&scheme, ashape, &schedule).context("attention kernels")?;
    let (kv, d) = (shape.kv_heads, shape.head_dim as usize);
    // The batch's K and V as f32 (span and full-precision tokens), checked before allocating.
    let fits = [shape.batch, kv, d, 2 * 4]
        .iter()
        .try_fold(shape.tokens as u64 + fp_tokens as u64, |acc, &n| {
            acc.checked_mul(n as u64)
        })
        .is_some_and(|bytes| bytes <= MAX_SIM_BYTES);
    if !fits {
        anyhow::bail!(
            "the synthetic batch ({} x {kv} kv heads x {} + {fp_tokens} tokens x {d}) needs more than the {MAX_SIM_BYTES} bytes of host memory allowed",
            shape.batch,
            shape.tokens
        );
    }
    let q_heads = kv * shape.group as usize;
    let mut seqs = Vec::with_capacity(shape.batch);
    for i in 0..shape.batch as u64 {
        let q = synthetic(q_heads, 1, d, 100 + i, 0.7)?.data().to_vec();
        let fp = match fp_tokens {
            0 => None,
            n => Some((
                synthetic(kv, n, d, 200 + i, 1.0)?,
                synthetic(kv, n, d, 300 + i, 0.3)?,
            )),
        };
        let k = synthetic(kv, shape.tokens, d, 400 + i, 1.0)?;
        let v = synthetic(kv, shape.tokens, d, 500 + i, 0.3)?;
        let span = (
            quantize(&k, InputType::F32, &scheme.key, Backend::Host)?,
            quantize(&v, InputType::F32, &scheme.value, Backend::Host)?,
        );
        seqs.push((q, fp, span));
    }
    let data: Vec<SeqData<'_>> = seqs
        .iter()
        .map(|(q, fp, (k, v))| SeqData {
            q,
            fp: fp.as_ref().map(|(k, v)| (k, v)),
            span: Some((k, v)),
        })
        .collect();
    let mut args = AttentionArgs::new(&scheme, ashape, &schedule, kv, &data)?;
    let mut reports = Vec::new();
    args.launch(
        &kernels,
        |kernel: &Kernel, kernel_args: &mut [Arg], grid| {
            let role = if kernels
                .stats
                .as_ref()
                .is_some_and(|s| s.name == kernel.name)
            {
                "attention stats"
            } else if kernel.name == kernels.partial.name {
                "attention partial"
            } else {
                "attention combine"
            };
            // The copy bound of a kernel here: every buffer it is given, read or written once.
            let bytes: u64 = kernel_args
                .iter()
                .filter_map(Arg::buffer)
                .map(|b| (b.len() * b.elem().size()) as u64)
                .sum();
            let report = profile_traced(ctx, role, kernel, kernel_args, grid, bytes)?;
            reports.push(report);
            Ok::<(), anyhow::Error>(())
        },
    )?;
    Ok(reports)
}
