//! `kvq compile`: a scheme pair's quantize and dequantize kernels for one target, plus a manifest;
//! with `--group`, also the fused decode-attention kernels.

use std::path::PathBuf;

use super::Input;
use anyhow::{bail, Context, Result};
use kvq::output::StagedDir;
use kvq::Scheme;
use kvq_codegen::{ptxas, Arch, Target};
use kvq_ir::ir::{verify, Access, Kernel, Param};
use kvq_ir::lower::attention::{attention, AttentionLayout, AttentionSchedule, AttentionShape};
use kvq_ir::lower::{self, InputType, Launch, Schedule, ShapeClass};
use kvq_ir::{CacheScheme, Calibration};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetArg {
    #[value(name = "sm_80")]
    Sm80,
    #[value(name = "sm_90")]
    Sm90,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Emit {
    /// PTX assembly (GPU targets).
    Ptx,
    /// kvq's kernel IR text.
    Ir,
    /// Optimized LLVM IR.
    Llvm,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key scheme.
    #[arg(long)]
    key: String,
    /// Value scheme.
    #[arg(long)]
    value: String,
    /// What to compile for.
    #[arg(long, value_enum)]
    target: TargetArg,
    /// What to write (default: ptx for GPU targets, llvm for the host).
    #[arg(long, value_enum)]
    emit: Option<Emit>,
    /// Channels per head the kernels are specialised for.
    #[arg(long, default_value_t = 128, value_parser = super::sizes::head_dim)]
    head_dim: u32,
    /// Element type of the K/V the kernels read.
    #[arg(long, value_enum, default_value = "f16")]
    input: Input,
    /// Also compile the decode-attention kernels, for this many query heads per kv head.
    #[arg(long, value_parser = super::sizes::group)]
    group: Option<u32>,
    /// Calibration `d` of the span's logits for the attention kernels (SPEC.md section 4).
    #[arg(long, requires = "group")]
    calibrate: Option<f32>,
    /// Output directory.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let key = Scheme::parse(&args.key).context("--key")?;
    let value = Scheme::parse(&args.value).context("--value")?;
    let target = match args.target {
        TargetArg::Sm80 => Target::Ptx(Arch::Sm80),
        TargetArg::Sm90 => Target::Ptx(Arch::Sm90),
        TargetArg::Host => Target::Host,
    };
    let emit = args.emit.unwrap_or(match target {
        Target::Host => Emit::Llvm,
        Target::Ptx(_) => Emit::Ptx,
    });
    if target == Target::Host && emit == Emit::Ptx {
        bail!("--emit ptx needs a GPU target (sm_80 or sm_90)");
    }
    let input = InputType::from(args.input);
    let shape = ShapeClass {
        head_dim: args.head_dim,
        input,
    };
    let ptxas = ptxas::find();
    if ptxas.is_none() && matches!(target, Target::Ptx(_)) {
        eprintln!("note: ptxas not found (run scripts/setup.sh or set KVQ_PTXAS); register/spill report skipped");
    }
    // Lower everything first, so a scheme that does not fit writes nothing.
    let mut lowered = Vec::new();
    for (role, scheme) in [("key", key), ("value", value)] {
        let schedule = match target {
            Target::Host => Schedule::host_default(&scheme, shape),
            Target::Ptx(Arch::Sm90) => Schedule::gpu_default(&scheme, shape),
            Target::Ptx(Arch::Sm80) => {
                Schedule::gpu_default(&scheme, shape).without_clusters(&scheme, shape)
            }
        };
        let quantize =
            lower::quantize(&scheme, shape, &schedule).with_context(|| format!("{role} scheme"))?;
        let dequantize = lower::dequantize(&scheme, shape, &schedule)
            .with_context(|| format!("{role} scheme"))?;
        lowered.push((role, scheme, schedule, "quantize", quantize));
        lowered.push((role, scheme, schedule, "dequantize", dequantize));
    }
    let attention_kernels = match args.group {
        None => Vec::new(),
        Some(group) => {
            let calibrate = match args.calibrate {
                None => None,
                Some(d) => Some(Calibration::new(d).context("--calibrate must be positive")?),
            };
            let pair = CacheScheme {
                key,
                value,
                calibrate,
            };
            let shape = AttentionShape {
                head_dim: args.head_dim,
                group,
            };
            let schedule = match target {
                Target::Host => AttentionSchedule::host_default(&pair),
                Target::Ptx(_) => AttentionSchedule::gpu_default(&pair, shape),
            };
            let k = attention(&pair, shape, &schedule).context("attention kernels")?;
            let items = match schedule.layout {
                AttentionLayout::ThreadPerItem => {
                    json!({"kind": "attention_items", "blocks": "ceil(chunks * kv_heads / block_size)"})
                }
                AttentionLayout::BlockPerItem => {
                    json!({"kind": "attention_blocks", "blocks": "chunks * kv_heads"})
                }
            };
            let heads = match schedule.layout {
                AttentionLayout::ThreadPerItem => {
                    json!({"kind": "attention_heads", "blocks": "ceil(batch * kv_heads * group / block_size)", "group": group})
                }
                AttentionLayout::BlockPerItem => {
                    json!({"kind": "attention_head_blocks", "blocks": "batch * kv_heads * group", "group": group})
                }
            };
            let sched = json!({"block_size": schedule.block_size, "chunk": schedule.chunk, "tile": schedule.tile});
            let mut out = Vec::new();
            if let Some(stats) = k.stats {
                out.push(("attention_stats", stats, items.clone()));
            }
            out.push(("attention_partial", k.partial, items));
            out.push(("attention_combine", k.combine, heads));
            out.into_iter()
                .map(|(role, kernel, launch)| {
                    (role, pair.to_string(), sched.clone(), launch, kernel)
                })
                .collect()
        }
    };
    // Every file is staged beside the output folder and moved in only when all are written.
    let mut out = StagedDir::new(&args.output)?;
    let mut kernels = Vec::new();
    for (role, scheme, schedule, kind, lowered) in &lowered {
        let entry = write_kernel(&mut out, target, emit, &lowered.kernel, ptxas.as_deref())?;
        kernels.push(json!({
            "role": format!("{role}_{kind}"),
            "scheme": scheme.to_string(),
            "schedule": {"block_size": schedule.block_size, "channels": schedule.channels, "vector": schedule.vector},
            "launch": launch_json(lowered.launch),
            "entry": entry,
        }));
    }
    for (role, scheme, schedule, launch, kernel) in &attention_kernels {
        let entry = write_kernel(&mut out, target, emit, kernel, ptxas.as_deref())?;
        kernels.push(json!({
            "role": role,
            "scheme": scheme,
            "schedule": schedule,
            "launch": launch,
            "entry": entry,
        }));
    }
    let manifest = json!({
        "kvq": env!("CARGO_PKG_VERSION"),
        "target": target_name(target),
        "emit": format!("{emit:?}").to_lowercase(),
        "head_dim": args.head_dim,
        "input": input.name(),
        "kernels": kernels,
    });
    let path = args.output.join("manifest.json");
    out.write(
        "manifest.json",
        (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes(),
    )?;
    out.commit()?;
    println!(
        "wrote {} kernels and {}",
        kernels_len(&manifest),
        path.display()
    );
    Ok(())
}

fn kernels_len(manifest: &Value) -> usize {
    manifest["kernels"].as_array().map_or(0, Vec::len)
}

fn target_name(target: Target) -> &'static str {
    match target {
        Target::Host => "host",
        Target::Ptx(arch) => arch.name(),
    }
}

fn launch_json(launch: Launch) -> Value {
    match launch {
        Launch::BlockPerColumn { columns } => {
            json!({"kind": "block_per_column", "blocks": "heads * columns", "columns": columns})
        }
        Launch::ThreadPerGroup { columns, group } => json!({
            "kind": "thread_per_group",
            "blocks": "ceil(heads * columns * ceil(tokens / group) / block_size)",
            "columns": columns,
            "group": group
        }),
        Launch::ThreadPerRow => {
            json!({"kind": "thread_per_row", "blocks": "ceil(heads * tokens / block_size)"})
        }
        Launch::ClusterPerColumn { columns, cluster } => json!({
            "kind": "cluster_per_column",
            "blocks": "heads * columns * cluster",
            "columns": columns,
            "cluster": cluster
        }),
    }
}

/// Writes one kernel in the requested form and returns its manifest entry.
fn write_kernel(
    out: &mut StagedDir,
    target: Target,
    emit: Emit,
    kernel: &Kernel,
    ptxas_path: Option<&std::path::Path>,
) -> Result<Value> {
    let info = verify(kernel)?;
    let (ext, text) = match emit {
        Emit::Ir => ("kvqir", kvq_ir::ir::print(kernel)),
        Emit::Llvm => ("ll", kvq_codegen::llvm_ir(kernel, &info, target)?),
        Emit::Ptx => {
            let Target::Ptx(arch) = target else {
                bail!("--emit ptx needs a GPU target")
            };
            ("ptx", kvq_codegen::ptx::emit(kernel, &info, arch)?.text)
        }
    };
    let file = format!("{}.{ext}", kernel.name);
    out.write(&file, text.as_bytes())?;
    let mut report = Value::Null;
    if let (Target::Ptx(arch), Some(ptxas_path)) = (target, ptxas_path) {
        let ptx = if emit == Emit::Ptx {
            text
        } else {
            kvq_codegen::ptx::emit(kernel, &info, arch)?.text
        };
        let r = ptxas::assemble(ptxas_path, &ptx, arch, &kernel.name)?;
        let dynamic = match info.dynamic_shared_bytes {
            0 => String::new(),
            n => format!(", {n} bytes dynamic shared"),
        };
        println!("{}: ptxas {}: {r}{dynamic}", kernel.name, arch.name());
        report = json!({"registers": r.registers, "spill_stores": r.spill_stores, "spill_loads": r.spill_loads, "stack_frame": r.stack_frame, "shared": r.shared});
    }
    let params: Vec<Value> = kernel
        .params
        .iter()
        .map(|p| match p {
            Param::Buffer { name, elem, access } => json!({
                "name": name, "kind": "buffer", "elem": elem.name(),
                "access": match access { Access::Read => "read", Access::Write => "write", Access::ReadWrite => "read_write" },
            }),
            Param::Scalar { name, ty } => json!({"name": name, "kind": "scalar", "type": ty.name()}),
        })
        .collect();
    Ok(json!({
        "name": kernel.name,
        "file": file,
        "block_size": kernel.block_size,
        "shared_bytes": info.shared_bytes,
        "dynamic_shared_bytes": info.dynamic_shared_bytes,
        "params": params,
        "ptxas": report,
    }))
}
