//! `kvq attention-case`: a decode-attention case for `kvq-gpu-check`. A synthetic batch (K/V-like
//! data, spans quantized by the host backend) is laid out exactly as the attention kernels read
//! it under the GPU schedule, every input buffer is written under its kernel parameter's name,
//! and the host backend's outputs are written as `expected`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{ensure, Result};
use kvq::attention::{HostAttention, SeqData};
use kvq::backend::{quantize, Backend};
use kvq::lower::attention::{attention, AttentionArgs, AttentionSchedule};
use kvq::lower::InputType;
use kvq::Tensor3;
use kvq_ir::ir::interp::{Arg, Buffer};
use kvq_ir::ir::{Access, Param};
use kvq_ir::ir::{PlanSize, PlanSizes};
use safetensors::tensor::{Dtype, TensorView};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pair: super::pair::PairArgs,
    /// Key/value heads.
    #[arg(long, default_value_t = 8, value_parser = super::sizes::heads)]
    kv_heads: usize,
    /// Quantized span tokens per sequence.
    #[arg(long, default_value_t = 4096, value_parser = super::sizes::tokens)]
    span_tokens: usize,
    /// Full-precision tokens per sequence (prefix and suffix).
    #[arg(long, default_value_t = 64, value_parser = super::sizes::tokens)]
    fp_tokens: usize,
    /// Sequences.
    #[arg(long, default_value_t = 1, value_parser = super::sizes::batch)]
    batch: usize,
    /// All sequences attend over one K/V (stored once; their queries differ), to keep large
    /// batches small on disk. The kernels read that K/V once per sequence.
    #[arg(long)]
    share_kv: bool,
    /// Output file (safetensors).
    #[arg(short = 'o', long)]
    output: PathBuf,
}

fn synthetic(heads: usize, tokens: usize, dim: usize, seed: u64, offset: f32) -> Result<Tensor3> {
    Ok(kvq::attention::synthetic_kv(
        heads, tokens, dim, seed, offset,
    )?)
}

fn bytes_of(buffer: &Buffer) -> (Dtype, Vec<u8>) {
    match buffer {
        Buffer::U8(v) => (Dtype::U8, v.clone()),
        Buffer::U16(v) => (Dtype::U16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Buffer::U32(v) => (Dtype::U32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Buffer::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Buffer::BF16(v) => (
            Dtype::BF16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Buffer::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Buffer::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

/// The per-sequence data buffers, which `--share-kv` stores once.
const SHARED: [&str; 8] = [
    "fp_k", "fp_v", "k_codes", "k_zero", "k_scale", "v_codes", "v_zero", "v_scale",
];

/// The `seqs` table (little-endian u32 rows) with every sequence's data offsets set to the first
/// sequence's: with `--share-kv` the sequences are identical, so only the first copy is kept.
fn shared_seqs(bytes: &[u8]) -> Vec<u8> {
    use kvq::lower::attention::seq_field as f;
    let mut rows: Vec<u32> = le_u32(bytes);
    let n = f::COUNT as usize;
    let first: Vec<u32> = rows[..n].to_vec();
    for row in rows.chunks_mut(n) {
        for field in [f::FP_BASE, f::K_CODES, f::K_PARAMS, f::V_CODES, f::V_PARAMS] {
            row[field as usize] = first[field as usize];
        }
    }
    rows.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let scheme = args.pair.scheme()?;
    let shape = args.pair.shape();
    let tokens = args.span_tokens.saturating_add(args.fp_tokens);
    ensure!(tokens > 0, "a sequence needs at least one token");
    // Every sequence's K/V lie in one buffer the kernels index: batch x tokens as one tensor.
    let all_tokens = tokens.saturating_mul(args.batch);
    let d = u64::from(shape.head_dim);
    kvq_ir::limits::check_tensor(args.kv_heads as u64, all_tokens as u64, d)?;
    if args.output.is_dir() {
        anyhow::bail!("-o {}: is a directory, not a file", args.output.display());
    }
    let (kv, d) = (args.kv_heads, shape.head_dim as usize);
    let q_heads = kv * shape.group as usize;
    let mut seqs = Vec::new();
    for i in 0..args.batch as u64 {
        let q = synthetic(q_heads, 1, d, 100 + i, 0.7)?.data().to_vec();
        let i = if args.share_kv { 0 } else { i };
        let fp = match args.fp_tokens {
            0 => None,
            n => Some((
                synthetic(kv, n, d, 200 + i, 1.0)?,
                synthetic(kv, n, d, 300 + i, 0.3)?,
            )),
        };
        let span = match args.span_tokens {
            0 => None,
            n => {
                let k = synthetic(kv, n, d, 400 + i, 1.0)?;
                let v = synthetic(kv, n, d, 500 + i, 0.3)?;
                Some((
                    quantize(&k, InputType::F32, &scheme.key, Backend::Host)?,
                    quantize(&v, InputType::F32, &scheme.value, Backend::Host)?,
                ))
            }
        };
        seqs.push((q, fp, span));
    }
    let data: Vec<SeqData<'_>> = seqs
        .iter()
        .map(|(q, fp, span)| SeqData {
            q,
            fp: fp.as_ref().map(|(k, v)| (k, v)),
            span: span.as_ref().map(|(k, v)| (k, v)),
        })
        .collect();
    let expected = HostAttention::new(&scheme, shape, None)?
        .attend(kv, &data)?
        .concat();
    // The layout the GPU kernels read: the plan depends on the schedule's chunk.
    let gpu = AttentionSchedule::gpu_default(&scheme, shape);
    let kernels = attention(&scheme, shape, &gpu)?;
    let launch = AttentionArgs::new(&scheme, shape, &gpu, kv, &data)?;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    // Inputs only: kvq-gpu-check allocates what any of the kernels writes from the sizes in the
    // metadata.
    let written: Vec<&str> = kernels
        .all()
        .flat_map(|k| &k.params)
        .filter_map(|p| match p {
            Param::Buffer { name, access, .. } if *access != Access::Read => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for (param, arg) in kernels.partial.params.iter().zip(launch.partial_args()) {
        if let (Param::Buffer { name, .. }, Arg::Buffer(b)) = (param, arg) {
            if !written.contains(&name.as_str()) {
                let (dtype, mut bytes) = bytes_of(b);
                if args.share_kv && SHARED.contains(&name.as_str()) {
                    bytes.truncate(bytes.len() / args.batch);
                } else if args.share_kv && name == "seqs" {
                    bytes = shared_seqs(&bytes);
                }
                let len = bytes.len() / dtype.size();
                tensors.push((name.clone(), dtype, vec![len], bytes));
            }
        }
    }
    tensors.push((
        "expected".to_string(),
        Dtype::F32,
        vec![expected.len()],
        expected.iter().flat_map(|x| x.to_le_bytes()).collect(),
    ));
    let mut meta = BTreeMap::new();
    meta.insert("scheme".to_string(), scheme.to_string());
    meta.insert("kv_heads".to_string(), kv.to_string());
    meta.insert("chunks".to_string(), launch.plan().chunks().to_string());
    meta.insert(
        "span_chunk".to_string(),
        launch.plan().span_chunk.to_string(),
    );
    meta.insert("batch".to_string(), args.batch.to_string());
    meta.insert("group".to_string(), shape.group.to_string());
    meta.insert("head_dim".to_string(), shape.head_dim.to_string());
    meta.insert("chunk".to_string(), gpu.chunk.to_string());
    meta.insert("span_tokens".to_string(), args.span_tokens.to_string());
    meta.insert("fp_tokens".to_string(), args.fp_tokens.to_string());
    // The plan's sizes the kernels' buffer lengths refer to, as written: with one K/V shared
    // by the batch, the data buffers hold one sequence's.
    for size in PlanSize::ALL {
        let n = launch.plan().plan_size(size);
        let shared = !matches!(size, PlanSize::Sequences | PlanSize::Chunks);
        let n = if args.share_kv && shared {
            n / args.batch as u64
        } else {
            n
        };
        meta.insert(format!("plan_{}", size.name()), n.to_string());
    }
    let names: Vec<String> = kernels.all().map(|k| k.name.clone()).collect();
    meta.insert("kernels".to_string(), names.join(","));
    let views = tensors
        .iter()
        .map(|(n, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| anyhow::anyhow!(kvq_runtime::kv_file::safetensors_reason(&e)))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = kvq::output::safetensors_bytes(views, meta)
        .map_err(|e| anyhow::anyhow!("encoding {}: {e}", args.output.display()))?;
    kvq::output::write_file(&args.output, &bytes)?;
    println!(
        "wrote {} ({} sequences x {} span + {} fp tokens, {} kv heads, group {}, {} chunks)",
        args.output.display(),
        args.batch,
        args.span_tokens,
        args.fp_tokens,
        kv,
        shape.group,
        launch.plan().chunks()
    );
    Ok(())
}
