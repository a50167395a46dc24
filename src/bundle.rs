//! A scheme pair's kernels for one target: the lowering `kvq compile` writes to a folder, and a
//! PTX bundle built in memory for a CUDA cache ([`cuda_cache`]).

use std::collections::HashMap;

use anyhow::{Context, Result};
use kvq_codegen::{Arch, Target};
use kvq_ir::ir::{verify, Kernel};
use kvq_ir::lower::attention::{attention, AttentionSchedule, AttentionShape};
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_ir::{CacheScheme, Calibration, Scheme};
use kvq_runtime::cache::Cuda;
use kvq_runtime::cuda::{Bundle, CudaRuntime, Entry, KernelEntry, Manifest, ParamSpec, Role};
use kvq_runtime::{ModelShape, VisualKvCache};
use serde_json::json;

/// One lowered kernel of a pair: its role, the scheme text the manifest names, the schedule's
/// fields, and the kernel.
#[derive(Debug)]
pub struct Lowered {
    /// Which kernel of the pair.
    pub role: Role,
    /// The scheme's text (the pair's, for attention kernels).
    pub scheme: String,
    /// The schedule, as the manifest records it.
    pub schedule: serde_json::Value,
    /// The kernel.
    pub kernel: Kernel,
}

/// What the decode-attention kernels of a pair are compiled for besides the head dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOf {
    /// Query heads per kv head.
    pub group: u32,
    /// Calibration of the span's logits.
    pub calibrate: Option<Calibration>,
    /// Element type of the full-precision rows.
    pub fp: InputType,
}

/// Lowers the quantize and dequantize kernels of `key` and `value` for `target`, and with
/// `attention_of` the decode-attention kernels too. Nothing is emitted.
pub fn lower_pair(
    key: Scheme,
    value: Scheme,
    target: Target,
    shape: ShapeClass,
    attention_of: Option<AttentionOf>,
) -> Result<Vec<Lowered>> {
    let mut lowered = Vec::new();
    let roles = [
        ("key", key, Role::KeyQuantize, Role::KeyDequantize),
        ("value", value, Role::ValueQuantize, Role::ValueDequantize),
    ];
    for (role, scheme, quantize_role, dequantize_role) in roles {
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
        let fields = json!({"block_size": schedule.block_size, "channels": schedule.channels, "vector": schedule.vector});
        for (role, kernel) in [
            (quantize_role, quantize.kernel),
            (dequantize_role, dequantize.kernel),
        ] {
            lowered.push(Lowered {
                role,
                scheme: scheme.to_string(),
                schedule: fields.clone(),
                kernel,
            });
        }
    }
    if let Some(AttentionOf {
        group,
        calibrate,
        fp,
    }) = attention_of
    {
        let pair = CacheScheme {
            key,
            value,
            calibrate,
        };
        let shape = AttentionShape {
            fp,
            head_dim: shape.head_dim,
            group,
        };
        let schedule = match target {
            Target::Host => AttentionSchedule::host_default(&pair),
            Target::Ptx(_) => AttentionSchedule::gpu_default(&pair, shape),
        };
        let k = attention(&pair, shape, &schedule).context("attention kernels")?;
        // Every field: a runtime plans each batch with `chunk` and `layout`.
        let fields = serde_json::to_value(schedule)?;
        let kernels = k
            .stats
            .map(|s| (Role::AttentionStats, s))
            .into_iter()
            .chain([
                (Role::AttentionPartial, k.partial),
                (Role::AttentionCombine, k.combine),
            ]);
        for (role, kernel) in kernels {
            lowered.push(Lowered {
                role,
                scheme: pair.to_string(),
                schedule: fields.clone(),
                kernel,
            });
        }
    }
    Ok(lowered)
}

/// The manifest entry of `kernel` (file `file`), without a ptxas report.
pub fn entry(kernel: &Kernel, file: String) -> Result<Entry> {
    let info = verify(kernel)?;
    Ok(Entry {
        name: kernel.name.clone(),
        file,
        block_size: kernel.block_size,
        shared_bytes: info.shared_bytes,
        dynamic_shared_bytes: info.dynamic_shared_bytes,
        params: kernel.params.iter().map(ParamSpec::from_ir).collect(),
        max_grid: kernel.max_grid.clone(),
        ptxas: None,
    })
}

/// The PTX bundle a CUDA cache of `shape` under `scheme` storing full-precision rows as `fp`
/// needs (quantize kernels reading `fp`, attention kernels of the shape's group reading `fp`
/// rows), built in memory for `arch`.
pub fn cache_bundle(
    shape: ModelShape,
    scheme: &CacheScheme,
    fp: InputType,
    arch: Arch,
) -> Result<Bundle> {
    let head_dim = u32::try_from(shape.head_dim).context("head_dim exceeds 32 bits")?;
    let group = u32::try_from(shape.group()).context("group exceeds 32 bits")?;
    let class = ShapeClass {
        head_dim,
        input: fp,
    };
    let attention_of = AttentionOf {
        group,
        calibrate: scheme.calibrate,
        fp,
    };
    let lowered = lower_pair(
        scheme.key,
        scheme.value,
        Target::Ptx(arch),
        class,
        Some(attention_of),
    )?;
    let mut ptx = HashMap::new();
    let mut kernels = Vec::new();
    for l in lowered {
        // Equal key and value schemes give one set of kernels (the same names).
        if ptx.contains_key(&l.kernel.name) {
            continue;
        }
        let info = verify(&l.kernel)?;
        let text = kvq_codegen::ptx::emit(&l.kernel, &info, arch)?.text;
        let entry = entry(&l.kernel, format!("{}.ptx", l.kernel.name))?;
        ptx.insert(l.kernel.name.clone(), text);
        kernels.push(KernelEntry {
            role: l.role,
            scheme: l.scheme,
            schedule: l.schedule,
            entry,
        });
    }
    let manifest = Manifest {
        kvq: env!("CARGO_PKG_VERSION").to_string(),
        target: arch.name().to_string(),
        emit: "ptx".to_string(),
        head_dim,
        input: fp.name().to_string(),
        group: Some(group),
        kernels,
    };
    Ok(Bundle::from_parts(manifest, ptx)?)
}

/// A visual KV cache of `shape` under `scheme` on CUDA device `device`, storing full-precision
/// rows as f32 ([`cuda_cache_storing`]).
pub fn cuda_cache(
    shape: ModelShape,
    scheme: CacheScheme,
    device: usize,
) -> Result<VisualKvCache<Cuda>> {
    cuda_cache_storing(shape, scheme, InputType::F32, device)
}

/// A visual KV cache of `shape` under `scheme` on CUDA device `device` whose full-precision
/// prefix and suffix are stored as `fp` (f32, or f16 / bf16 at half the memory; see
/// [`VisualKvCache::on_device_storing`]): the pair's kernels, reading `fp`, are compiled to PTX
/// for the device's architecture (sm_90 from compute capability 9, else sm_80) and loaded.
/// Without a driver or GPU this is an error (`no CUDA driver found`), never a panic.
pub fn cuda_cache_storing(
    shape: ModelShape,
    scheme: CacheScheme,
    fp: InputType,
    device: usize,
) -> Result<VisualKvCache<Cuda>> {
    let rt = CudaRuntime::new(device)?;
    let arch = match rt.compute_capability()? {
        (major, _) if major >= 9 => Arch::Sm90,
        _ => Arch::Sm80,
    };
    let bundle = cache_bundle(shape, &scheme, fp, arch)?;
    let cuda = Cuda::new(rt, &bundle, &scheme)?;
    Ok(VisualKvCache::on_device_storing(shape, scheme, fp, cuda)?)
}
