//! `kvq quantize`: one layer's K or V to packed codes and parameters, written as safetensors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kvq::backend::{self, Backend, ScheduleKind};
use kvq::output;
use kvq::reference::quantize::param_shape;
use kvq::Scheme;
use kvq_ir::lower::InputType;
use kvq_runtime::KvFile;
use safetensors::tensor::{Dtype, TensorView};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    K,
    V,
}

/// A GPU architecture whose schedule `--schedule gpu` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GpuTarget {
    #[value(name = "sm_80")]
    Sm80,
    #[value(name = "sm_90")]
    Sm90,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Safetensors capture (q, k, v).
    #[arg(long)]
    kv: PathBuf,
    /// Which tensor to quantize.
    #[arg(long, value_enum)]
    tensor: Which,
    /// Layer index within the file.
    #[arg(long)]
    layer: usize,
    /// The scheme, e.g. "bits = 1, axis = channel, group = all, rule = quantile(0.2)".
    #[arg(long)]
    scheme: String,
    /// Which implementation quantizes (all give the same bits).
    #[arg(long, value_enum, default_value = "reference")]
    backend: Backend,
    /// With `--backend interp|host`: run the kernels of this schedule (default: interp runs
    /// the GPU schedule, host its own), so that the GPU kernels' output can be checked here.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// With `--schedule gpu`: the GPU architecture whose schedule runs (default sm_90; sm_80
    /// has no thread-block clusters, so its channel-axis group = all kernels differ).
    #[arg(long, value_enum, requires = "schedule")]
    target: Option<GpuTarget>,
    /// Output safetensors file: `codes` (u8), `zero` and `scale` (f32 values of the stored parameters).
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let scheme = Scheme::parse(&args.scheme).context("--scheme")?;
    if args.output.is_dir() {
        bail!("-o {}: is a directory, not a file", args.output.display());
    }
    let file = KvFile::load(&args.kv)?;
    let Some(layer) = file.layers.get(args.layer) else {
        bail!(
            "--layer {} is out of range: the file has {} layers",
            args.layer,
            file.layers.len()
        );
    };
    let x = match args.tensor {
        Which::K => &layer.k,
        Which::V => &layer.v,
    };
    if args.target.is_some() && args.schedule != Some(ScheduleKind::Gpu) {
        bail!("--target selects a GPU schedule: use it with --schedule gpu");
    }
    if args.schedule.is_some() && args.backend == Backend::Reference {
        bail!("--schedule needs --backend interp or host (the reference has no schedule)");
    }
    let span = match args.schedule {
        Some(schedule) => {
            let clusters = args.target != Some(GpuTarget::Sm80);
            backend::quantize_scheduled(
                x,
                InputType::F32,
                &scheme,
                args.backend,
                schedule,
                clusters,
            )
        }
        None => backend::quantize(x, InputType::F32, &scheme, args.backend),
    }
    .with_context(|| format!("layer {}", args.layer))?;
    let shape = span.shape;
    let row = shape.dim * scheme.bits.width() as usize / 8;
    let pshape = param_shape(&scheme, shape).to_vec();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (zero, scale) = (f32_bytes(&span.zero), f32_bytes(&span.scale));
    let view = |dtype, shape, data| {
        TensorView::new(dtype, shape, data)
            .map_err(|e| anyhow::anyhow!(kvq_runtime::kv_file::safetensors_reason(&e)))
    };
    let tensors = vec![
        (
            "codes".to_string(),
            view(Dtype::U8, vec![shape.heads, shape.tokens, row], &span.codes)?,
        ),
        ("zero".to_string(), view(Dtype::F32, pshape.clone(), &zero)?),
        ("scale".to_string(), view(Dtype::F32, pshape, &scale)?),
    ];
    let metadata = BTreeMap::from([
        ("scheme".to_string(), scheme.to_string()),
        (
            "backend".to_string(),
            format!("{:?}", args.backend).to_lowercase(),
        ),
        (
            "schedule".to_string(),
            match (args.schedule, args.target) {
                (Some(ScheduleKind::Gpu), Some(GpuTarget::Sm80)) => "gpu sm_80".to_string(),
                (Some(ScheduleKind::Gpu), Some(GpuTarget::Sm90)) => "gpu sm_90".to_string(),
                (Some(s), _) => format!("{s:?}").to_lowercase(),
                (None, _) => "default".to_string(),
            },
        ),
        (
            "source".to_string(),
            format!(
                "{} {:?} layer {}",
                args.kv.display(),
                args.tensor,
                args.layer
            ),
        ),
        (
            "layout".to_string(),
            "SPEC.md section 3: codes [kv_heads, tokens, head_dim*b/8]; zero/scale as f32"
                .to_string(),
        ),
    ]);
    let bytes = output::safetensors_bytes(tensors, metadata)
        .map_err(|e| anyhow::anyhow!("encoding {}: {e}", args.output.display()))?;
    output::write_file(&args.output, &bytes)?;
    println!(
        "{}: {} x {} x {} -> {} code bytes, {} parameter pairs, {:.4} bits per element",
        args.output.display(),
        shape.heads,
        shape.tokens,
        shape.dim,
        span.codes.len(),
        span.zero.len(),
        span.bits_per_element()
    );
    Ok(())
}
