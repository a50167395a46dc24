//! `kvq profile --attention`: the pair's GPU decode-attention kernels (the logit statistics when
//! calibrated, the per-chunk partials, the combine) through the cost model, launched as
//! `AttentionArgs::launch` launches them, on a synthetic batch: a query per sequence, `fp_tokens`
//! full-precision tokens and a span of `tokens` tokens quantized by the host kernels.

use anyhow::{Context, Result};
use kvq::backend::{quantize, Backend};
use kvq::lower::attention::{
    attention, seq_field, AttentionArgs, AttentionSchedule, AttentionShape, SeqData,
};
use kvq::{CacheScheme, Calibration, Scheme, Shape3, Tensor3};
use kvq_ir::ir::interp::Arg;
use kvq_ir::ir::Kernel;
use kvq_ir::lower::InputType;
use kvq_ir::reference::param_shape;
use kvq_ir::reference::quantize::row_bytes;

use super::profile::{profile_traced, BlockClass, Ctx, ProfileShape, MAX_SIM_BYTES};
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

/// The bytes of data the synthetic batch holds at its peak (`None` past `u64`): one sequence's
/// span K and V as f32 (each sequence's are made and quantized in turn, then dropped), and for
/// every sequence twice (its tensors, then the launch's buffers) its quantized span (codes, and
/// parameters as f32) and its full-precision K and V as f32.
fn peak_bytes(scheme: &CacheScheme, shape: &ProfileShape, fp_tokens: usize) -> Option<u64> {
    let (kv, tokens, d) = (
        shape.kv_heads as u64,
        shape.tokens as u64,
        shape.head_dim as u64,
    );
    let span_f32 = [kv, tokens, d, 2 * 4]
        .into_iter()
        .try_fold(1u64, u64::checked_mul)?;
    let mut per_sequence = [kv, fp_tokens as u64, d, 2 * 4]
        .into_iter()
        .try_fold(1u64, u64::checked_mul)?;
    for s in [&scheme.key, &scheme.value] {
        let row = row_bytes(s, shape.head_dim as usize) as u64;
        let codes = kv.checked_mul(tokens)?.checked_mul(row)?;
        let span = Shape3 {
            heads: shape.kv_heads,
            tokens: shape.tokens,
            dim: shape.head_dim as usize,
        };
        let params = param_shape(s, span)
            .into_iter()
            .try_fold(2 * 4u64, |acc, n| acc.checked_mul(n as u64))?;
        per_sequence = per_sequence.checked_add(codes)?.checked_add(params)?;
    }
    per_sequence
        .checked_mul(2)?
        .checked_mul(shape.batch as u64)?
        .checked_add(span_f32)
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
    // Checked before allocating.
    let fits = peak_bytes(&scheme, shape, fp_tokens).is_some_and(|bytes| bytes <= MAX_SIM_BYTES);
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
    // Per work chunk, 1 for a span chunk and 0 for a full-precision one; block `b` of `stats`
    // and `partial` works on item `min(b, items - 1)`, chunk `item / kv heads`.
    let plan = args.plan();
    let span_chunk: Vec<u32> = plan
        .work_seq
        .iter()
        .enumerate()
        .map(|(w, &seq)| {
            let (base, span) = (
                plan.field(seq as usize, seq_field::CHUNK_BASE),
                plan.field(seq as usize, seq_field::SPAN_CHUNKS),
            );
            u32::from((w as u32).wrapping_sub(base) < span)
        })
        .collect();
    let class_of = |b: u32| -> u32 {
        let items = (span_chunk.len() * kv).max(1);
        let item = (b as usize).min(items - 1);
        span_chunk.get(item / kv.max(1)).copied().unwrap_or(0)
    };
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
            // `stats` and `partial` blocks do a span chunk's work or a full-precision chunk's.
            let items = role != "attention combine";
            let report = profile_traced(
                ctx,
                role,
                kernel,
                kernel_args,
                grid,
                bytes,
                items.then_some(&class_of as BlockClass<'_>),
            )?;
            reports.push(report);
            Ok::<(), anyhow::Error>(())
        },
    )?;
    Ok(reports)
}
