//! `kvq compile`: a scheme pair's quantize and dequantize kernels for one target, plus a manifest;
//! with `--group`, also the fused decode-attention kernels.

use std::path::PathBuf;

use super::Input;
use anyhow::{bail, Context, Result};
use kvq::output::StagedDir;
use kvq::Scheme;
use kvq_codegen::{ptxas, Arch, Passes, Target};
use kvq_ir::ir::{verify, Kernel};
use kvq_ir::lower::{InputType, ShapeClass};
use kvq_ir::Calibration;
use kvq_runtime::cuda::{Entry, KernelEntry, Manifest, PtxasResources, Role};

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
    /// Element type of the full-precision rows the attention kernels read (a cache that stores
    /// its prefix and suffix as f16 or bf16; its bundle needs `--input` of the same type).
    #[arg(long, value_enum, default_value = "f32", requires = "group")]
    fp: Input,
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
    let attention_of = match args.group {
        None => None,
        Some(group) => {
            let calibrate = match args.calibrate {
                None => None,
                Some(d) => Some(Calibration::new(d).context("--calibrate must be positive")?),
            };
            Some(kvq::bundle::AttentionOf {
                group,
                calibrate,
                fp: InputType::from(args.fp),
            })
        }
    };
    let lowered = kvq::bundle::lower_pair(key, value, target, shape, attention_of)?;
    // Every file is staged beside the output folder and moved in only when all are written.
    let mut out = StagedDir::new(&args.output)?;
    let mut kernels = Vec::new();
    for l in lowered {
        // Host attention kernels are optimized as `HostAttention` compiles them.
        let passes = match (target, l.role) {
            (
                Target::Host,
                Role::AttentionStats | Role::AttentionPartial | Role::AttentionCombine,
            ) => kvq::attention::ATTENTION_PASSES,
            _ => Passes::default(),
        };
        let entry = write_kernel(
            &mut out,
            (target, passes),
            emit,
            &l.kernel,
            ptxas.as_deref(),
        )?;
        kernels.push(KernelEntry {
            role: l.role,
            scheme: l.scheme,
            schedule: l.schedule,
            entry,
        });
    }
    let manifest = Manifest {
        kvq: env!("CARGO_PKG_VERSION").to_string(),
        target: target_name(target).to_string(),
        emit: format!("{emit:?}").to_lowercase(),
        head_dim: args.head_dim,
        input: input.name().to_string(),
        group: args.group,
        kernels,
    };
    let path = args.output.join("manifest.json");
    out.write(
        "manifest.json",
        (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes(),
    )?;
    out.commit()?;
    println!(
        "wrote {} kernels and {}",
        manifest.kernels.len(),
        path.display()
    );
    Ok(())
}

fn target_name(target: Target) -> &'static str {
    match target {
        Target::Host => "host",
        Target::Ptx(arch) => arch.name(),
    }
}

/// Writes one kernel in the requested form and returns its manifest entry.
fn write_kernel(
    out: &mut StagedDir,
    (target, passes): (Target, Passes),
    emit: Emit,
    kernel: &Kernel,
    ptxas_path: Option<&std::path::Path>,
) -> Result<Entry> {
    let info = verify(kernel)?;
    let (ext, text) = match emit {
        Emit::Ir => ("kvqir", kvq_ir::ir::print(kernel)),
        Emit::Llvm => ("ll", kvq_codegen::llvm_ir(kernel, &info, target, passes)?),
        Emit::Ptx => {
            let Target::Ptx(arch) = target else {
                bail!("--emit ptx needs a GPU target")
            };
            ("ptx", kvq_codegen::ptx::emit(kernel, &info, arch)?.text)
        }
    };
    let file = format!("{}.{ext}", kernel.name);
    out.write(&file, text.as_bytes())?;
    let mut report = None;
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
        report = Some(PtxasResources {
            registers: r.registers,
            spill_stores: r.spill_stores,
            spill_loads: r.spill_loads,
            stack_frame: r.stack_frame,
            shared: r.shared,
        });
    }
    Ok(Entry {
        ptxas: report,
        ..kvq::bundle::entry(kernel, file)?
    })
}
