//! `kvq profile`: a scheme pair's GPU kernels through the GPU cost model of
//! `kvq_ir::gpu_model`, without a GPU: ptxas resources, occupancy, a warp-level trace analysis of
//! sampled blocks, and a predicted time beside a bandwidth bound. Every time is predicted.

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use kvq::Scheme;
use kvq_codegen::{ptx, ptxas, Arch};
use kvq_ir::gpu_model::{self, BlockResources, GpuParams};
use kvq_ir::ir::interp::{run_traced, Arg, Buffer};
use kvq_ir::ir::{verify, Kernel};
use kvq_ir::lower::args::{param_values, DequantizeArgs, QuantizeArgs};
use kvq_ir::lower::{self, InputType, Lowered, Schedule, ShapeClass};
use kvq_ir::reference::quantize::{param_shape, row_bytes};
use kvq_ir::Shape3;

use super::profile_report::{self, KernelReport};
use super::Input;

/// The most bytes of argument buffers the interpreter run may allocate.
pub const MAX_SIM_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetArg {
    #[value(name = "sm_80")]
    Sm80,
    #[value(name = "sm_90")]
    Sm90,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GpuArg {
    H100,
    H200,
    A100,
}

/// Options of `kvq profile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key scheme.
    #[arg(long)]
    key: String,
    /// Value scheme.
    #[arg(long)]
    value: String,
    /// GPU architecture.
    #[arg(long, value_enum)]
    target: TargetArg,
    /// GPU whose parameters the model uses (default: a100 for sm_80, h100 for sm_90).
    #[arg(long, value_enum)]
    gpu: Option<GpuArg>,
    /// Tokens of the span.
    #[arg(long, default_value_t = 16384, value_parser = super::sizes::positive_tokens)]
    tokens: usize,
    /// Sequences.
    #[arg(long, default_value_t = 1, value_parser = super::sizes::batch)]
    batch: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 8, value_parser = super::sizes::heads)]
    kv_heads: usize,
    /// Query heads per kv head (recorded with the shape; the SDPA bound leaves the query out).
    #[arg(long, default_value_t = 4, value_parser = super::sizes::group)]
    group: u32,
    /// Channels per head.
    #[arg(long, default_value_t = 128, value_parser = super::sizes::head_dim)]
    head_dim: u32,
    /// Element type of the K/V the kernels read.
    #[arg(long, value_enum, default_value = "f16")]
    input: Input,
    /// Also profile the pair's decode-attention kernels on a synthetic batch (`--batch`
    /// sequences of `--tokens` span tokens plus `--fp-tokens`, `--group` query heads per kv
    /// head); the interpreter runs their sampled blocks, which takes seconds.
    #[arg(long)]
    attention: bool,
    /// With `--attention`: calibration `d` of the span's logits.
    #[arg(long, requires = "attention")]
    calibrate: Option<f32>,
    /// With `--attention`: full-precision tokens per sequence beside the span.
    #[arg(long, default_value_t = 64, requires = "attention", value_parser = super::sizes::tokens)]
    fp_tokens: usize,
    /// With `--attention`: profile the decode-attention kernels only, not the quantize and
    /// dequantize kernels (whose whole-batch launch the interpreter may not have the memory to
    /// simulate where the attention kernels' batch fits).
    #[arg(long, requires = "attention")]
    only_attention: bool,
    /// Write deterministic JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The shape profiled: `batch * kv_heads` heads of `tokens` x `head_dim`.
#[derive(Debug, Clone, Copy)]
pub struct ProfileShape {
    pub batch: usize,
    pub kv_heads: usize,
    pub tokens: usize,
    pub head_dim: u32,
    pub group: u32,
    pub input: InputType,
}

pub fn run(args: Args) -> Result<()> {
    let key = Scheme::parse(&args.key).context("--key")?;
    let value = Scheme::parse(&args.value).context("--value")?;
    let (arch, arch_name) = match args.target {
        TargetArg::Sm80 => (Arch::Sm80, "sm_80"),
        TargetArg::Sm90 => (Arch::Sm90, "sm_90"),
    };
    let gpu = match args.gpu {
        None => GpuParams::default_for(arch_name),
        Some(GpuArg::H100) => Some(gpu_model::H100),
        Some(GpuArg::H200) => Some(gpu_model::H200),
        Some(GpuArg::A100) => Some(gpu_model::A100),
    }
    .context("no GPU for the target")?;
    if gpu.arch.name != arch_name {
        bail!(
            "--gpu {} is {}, not --target {arch_name}",
            gpu.name,
            gpu.arch.name
        );
    }
    let shape = ProfileShape {
        batch: args.batch,
        kv_heads: args.kv_heads,
        tokens: args.tokens,
        head_dim: args.head_dim,
        group: args.group,
        input: args.input.into(),
    };
    let span = span_shape(&shape, !args.only_attention)?;
    let class = ShapeClass {
        head_dim: shape.head_dim,
        input: shape.input,
    };
    let assembler = ptxas::find();
    let disassembler = ptxas::find_nvdisasm();
    let mut reports = Vec::new();
    let quantize_roles = match args.only_attention {
        true => Vec::new(),
        false => vec![("key", key), ("value", value)],
    };
    for (role, scheme) in quantize_roles {
        let schedule = match arch {
            Arch::Sm90 => Schedule::gpu_default(&scheme, class),
            Arch::Sm80 => Schedule::gpu_default(&scheme, class).without_clusters(&scheme, class),
        };
        let q =
            lower::quantize(&scheme, class, &schedule).with_context(|| format!("{role} scheme"))?;
        let d = lower::dequantize(&scheme, class, &schedule)
            .with_context(|| format!("{role} scheme"))?;
        for (kind, lowered) in [("quantize", q), ("dequantize", d)] {
            let ctx = Ctx {
                gpu: &gpu,
                arch,
                assembler: assembler.as_deref(),
                disassembler: disassembler.as_deref(),
                span,
            };
            let r = profile_kernel(
                &ctx,
                &format!("{role} {kind}"),
                &scheme,
                shape.input,
                &lowered,
            )
            .with_context(|| format!("{role} {kind}"))?;
            reports.push(r);
        }
    }
    if args.attention {
        let ctx = Ctx {
            gpu: &gpu,
            arch,
            assembler: assembler.as_deref(),
            disassembler: disassembler.as_deref(),
            span,
        };
        let attention = super::profile_attention::profile_attention(
            &ctx,
            [key, value],
            args.calibrate,
            &shape,
            args.fp_tokens,
        )
        .context("attention")?;
        reports.extend(attention);
    }
    // SDPA attends over the whole cache: with `--attention`, the full-precision tokens too
    // (as the measured baseline, scripts/sdpa_baseline.py, does).
    let sdpa_tokens = if args.attention {
        shape.tokens.checked_add(args.fp_tokens)
    } else {
        Some(shape.tokens)
    };
    let sdpa_bytes = sdpa_tokens
        .and_then(|tokens| {
            gpu_model::sdpa_bf16_bytes(
                shape.batch as u64,
                shape.kv_heads as u64,
                tokens as u64,
                u64::from(shape.head_dim),
            )
        })
        .context("the shape's SDPA byte count overflows")?;
    let report = profile_report::Report {
        gpu: &gpu,
        shape,
        ptxas: assembler.is_some(),
        nvdisasm: assembler.is_some() && disassembler.is_some(),
        kernels: reports,
        sdpa_bytes,
    };
    let mut notes = Vec::new();
    if assembler.is_none() {
        notes.push(
            "note: ptxas not found (run scripts/setup.sh or set KVQ_PTXAS): registers, stack and \
             occupancy's register limit are unknown; shared memory is the IR's",
        );
    }
    if disassembler.is_none() {
        notes.push(
            "note: nvdisasm not found (run scripts/setup.sh or set KVQ_NVDISASM): instructions \
             are IR instructions, not weighed by the machine code ptxas makes of them",
        );
    }
    if args.json {
        for n in &notes {
            eprintln!("{n}");
        }
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        for n in &notes {
            println!("{n}");
        }
        print!("{}", report.text());
    }
    Ok(())
}

/// The span shape, refused when the kernels cannot address it or (where the quantize kernels
/// are `simulated`) it is too large to simulate.
fn span_shape(s: &ProfileShape, simulated: bool) -> Result<Shape3> {
    let heads = (s.batch as u64) * (s.kv_heads as u64);
    let elems = kvq_ir::limits::check_addressable(heads, s.tokens as u64, u64::from(s.head_dim))
        .with_context(|| format!("batch {} x {} kv heads", s.batch, s.kv_heads))?;
    // The largest launch: the input and a f32 output, both whole (only sampled blocks run).
    let bytes = elems * (s.input.scalar().size() as u64 + 4);
    if simulated && bytes > MAX_SIM_BYTES {
        bail!(
            "simulating {elems} elements needs about {bytes} bytes of host memory, more than the {MAX_SIM_BYTES} allowed"
        );
    }
    Ok(Shape3 {
        heads: heads as usize,
        tokens: s.tokens,
        dim: s.head_dim as usize,
    })
}

/// What every kernel's profile needs: the GPU, the target, ptxas and the span's shape.
pub struct Ctx<'a> {
    gpu: &'a GpuParams,
    arch: Arch,
    assembler: Option<&'a std::path::Path>,
    /// nvdisasm, to weigh IR instructions by the machine instructions ptxas made of them.
    disassembler: Option<&'a std::path::Path>,
    span: Shape3,
}

fn profile_kernel(
    ctx: &Ctx,
    role: &str,
    scheme: &Scheme,
    input: InputType,
    lowered: &Lowered,
) -> Result<KernelReport> {
    let kernel = &lowered.kernel;
    let span = ctx.span;
    let grid = lowered
        .launch
        .grid(span.heads as u32, span.tokens as u32, kernel.block_size);
    let grid = u32::try_from(grid).map_err(|_| anyhow::anyhow!("{grid} blocks exceed 2^32 - 1"))?;
    let (mut args, bound_bytes) = if role.ends_with("dequantize") {
        dequantize_args(scheme, span)?
    } else {
        quantize_args(scheme, span, input)?
    };
    profile_traced(ctx, role, kernel, &mut args, grid, bound_bytes, None)
}

/// Which class of work a block of a launch does (blocks of one class do alike), for a
/// stratified sample ([`gpu_model::stratified_sample`]).
pub type BlockClass<'a> = &'a dyn Fn(u32) -> u32;

/// The profile of `kernel` launched with `args` over `grid` blocks: ptxas, occupancy, the trace
/// of the sampled blocks and the prediction, beside the copy bound of `bound_bytes`. The sample
/// is the first, middle and last blocks, or with `classes` those of each class, each weighed
/// by the share of the grid it stands for.
pub fn profile_traced(
    ctx: &Ctx,
    role: &str,
    kernel: &Kernel,
    args: &mut [Arg],
    grid: u32,
    bound_bytes: u64,
    classes: Option<BlockClass<'_>>,
) -> Result<KernelReport> {
    let info = verify(kernel)?;
    let (ptxas, sass) = match (ctx.assembler, ctx.disassembler) {
        (Some(path), Some(nvdisasm)) => {
            let text = ptx::emit_with_lines(kernel, &info, ctx.arch)?.text;
            let (r, n) =
                ptxas::assemble_counting_lines(path, nvdisasm, &text, ctx.arch, &kernel.name)?;
            (Some(r), Some(n))
        }
        (Some(path), None) => {
            let text = ptx::emit(kernel, &info, ctx.arch)?.text;
            (
                Some(ptxas::assemble(path, &text, ctx.arch, &kernel.name)?),
                None,
            )
        }
        (None, _) => (None, None),
    };
    // ptxas reports static shared memory; arrays placed in dynamic shared memory add theirs.
    let shared_bytes = match ptxas {
        Some(r) => r.shared.saturating_add(info.dynamic_shared_bytes),
        None => ir_shared_bytes(kernel)?,
    };
    let block = BlockResources {
        threads: kernel.block_size,
        regs_per_thread: ptxas.map(|r| r.registers),
        shared_bytes,
    };
    let occupancy = gpu_model::occupancy(&ctx.gpu.arch, block)?;
    let buffer_bytes: Vec<u64> = args
        .iter()
        .map(|a| a.buffer().map_or(0, |b| (b.len() * b.elem().size()) as u64))
        .collect();
    let (blocks, copies) = match classes {
        Some(class_of) => gpu_model::stratified_sample(grid, class_of),
        None => (gpu_model::sample_blocks(grid), Default::default()),
    };
    let trace = run_traced(kernel, args, grid, &blocks)?;
    // The blocks traced: with clusters, the sampled blocks' whole clusters.
    let sample: Vec<u32> = trace.blocks.iter().map(|b| b.block).collect();
    let mut stats = gpu_model::analyze_weighted(&trace, &copies);
    let ir_static: u64 = trace.body_insts.iter().sum();
    let ir_warp_insts = stats.warp_insts;
    let sass_per_ir = sass
        .as_ref()
        .filter(|_| ir_static > 0)
        .map(|s| f64::from(s.total) / ir_static as f64);
    if let Some(s) = &sass {
        // Each body weighed by the machine instructions ptxas made of its kvq instructions.
        let lines = gpu_model::LineCounts {
            all: &s.by_line,
            memory: &s.memory_by_line,
        };
        let weights = gpu_model::body_machine_insts(kernel, &trace, lines);
        stats.warp_insts = gpu_model::warp_insts(&trace, &weights, &copies);
    }
    let prediction = gpu_model::predict(ctx.gpu, grid, &occupancy, &stats, &buffer_bytes);
    Ok(KernelReport {
        role: role.to_string(),
        name: kernel.name.clone(),
        grid,
        block: kernel.block_size,
        ptxas,
        shared_bytes,
        occupancy,
        sample,
        stats,
        ir_warp_insts,
        sass_per_ir,
        prediction,
        bound_bytes,
        bound_s: gpu_model::bandwidth_bound_s(ctx.gpu, bound_bytes),
    })
}

fn ir_shared_bytes(kernel: &Kernel) -> Result<u32> {
    let bytes: u64 = kernel
        .shared
        .iter()
        .map(|s| u64::from(s.len) * s.elem.size() as u64)
        .sum();
    u32::try_from(bytes).context("shared memory exceeds 2^32 - 1 bytes")
}

/// Deterministic values in [-1, 1], element `i` of the input.
fn synthetic(i: usize) -> f32 {
    let h = (i as u64).wrapping_mul(2_654_435_761) % 2001;
    h as f32 / 1000.0 - 1.0
}

/// Sizes of a span's packed codes and parameters, bytes: (codes, zero + scale, parameters each).
fn packed_sizes(scheme: &Scheme, span: Shape3) -> (usize, usize, usize) {
    let codes = span.heads * span.tokens * row_bytes(scheme, span.dim);
    let n_params: usize = param_shape(scheme, span).iter().product();
    let size = scheme.params.bits() as usize / 8;
    (codes, 2 * n_params * size, n_params)
}

/// Arguments of a quantize launch (`quantize_abi` order), and its copy bound in bytes: input
/// read, codes and parameters written.
fn quantize_args(scheme: &Scheme, span: Shape3, input: InputType) -> Result<(Vec<Arg>, u64)> {
    let n = span.len();
    let x = match input {
        InputType::F16 => Buffer::F16((0..n).map(|i| f16::from_f32(synthetic(i))).collect()),
        InputType::BF16 => Buffer::BF16((0..n).map(|i| bf16::from_f32(synthetic(i))).collect()),
        InputType::F32 => Buffer::F32((0..n).map(synthetic).collect()),
    };
    let (codes, param_bytes, _) = packed_sizes(scheme, span);
    let bound = (n * input.scalar().size() + codes + param_bytes) as u64;
    let args = QuantizeArgs::new(scheme, x, span)?.into_args();
    Ok((args, bound))
}

/// Arguments of a dequantize launch (`dequantize_abi` order), and its copy bound in bytes:
/// codes and parameters read, f32 output written.
fn dequantize_args(scheme: &Scheme, span: Shape3) -> Result<(Vec<Arg>, u64)> {
    let n = span.len();
    let (codes, param_bytes, n_params) = packed_sizes(scheme, span);
    let bound = (codes + param_bytes + n * 4) as u64;
    let args = DequantizeArgs::new(
        (0..codes).map(|i| (i % 251) as u8).collect(),
        param_values(scheme.params, &vec![-1.0; n_params]),
        param_values(scheme.params, &vec![0.01; n_params]),
        span,
    )?
    .into_args();
    Ok((args, bound))
}
