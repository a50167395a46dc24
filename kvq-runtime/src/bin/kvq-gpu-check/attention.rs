//! Decode-attention cases: `kvq attention-case` writes the kernels' input buffers (by parameter
//! name), the launch sizes and the host backend's outputs; here they run on the GPU and the
//! outputs are compared within float tolerance (the kernels' `exp` is approximate, so results
//! are not bit-exact across backends).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use kvq_ir::ir::{PlanSize, PlanSizes};
use kvq_ir::metrics::max_head_deviation;
use kvq_runtime::cuda::{Bundle, CudaRuntime, DeviceBuffer, Elem, Kernel, LaunchArg, ParamSpec};
use safetensors::{Dtype, SafeTensors};

/// Largest accepted deviation: over (sequence, query head), max |got - expected| / max |expected|.
pub const TOLERANCE: f64 = 1e-4;

/// One host buffer of a case.
#[derive(Debug)]
enum HostData {
    U8(Vec<u8>),
    U32(Vec<u32>),
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// The batch plan's sizes as the case file states them.
#[derive(Debug, Default)]
struct CasePlan(HashMap<PlanSize, u64>);

impl PlanSizes for CasePlan {
    fn plan_size(&self, size: PlanSize) -> u64 {
        // Every size is read at load; a missing one would have failed there.
        self.0.get(&size).copied().unwrap_or(0)
    }
}

/// A case file, loaded.
#[derive(Debug)]
pub struct AttentionCase {
    pub path: PathBuf,
    inputs: HashMap<String, HostData>,
    expected: Vec<f32>,
    /// Entry names, in launch order (stats when present, partial, combine).
    pub kernels: Vec<String>,
    sizes: HashMap<String, u32>,
    /// The plan sizes the kernels' buffer lengths refer to.
    plan: CasePlan,
    pub description: String,
    head_dim: usize,
    group: usize,
}

fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().unwrap_or([0; N])))
        .collect()
}

/// Reads a case file written by `kvq attention-case`.
pub fn load(path: &Path) -> Result<AttentionCase> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("parsing {}", path.display()))?;
    let meta = header
        .metadata()
        .clone()
        .with_context(|| format!("{}: no metadata", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let get = |k: &str| -> Result<&String> {
        meta.get(k)
            .with_context(|| format!("{}: metadata {k} missing", path.display()))
    };
    let num = |k: &str| -> Result<u32> {
        get(k)?
            .parse()
            .with_context(|| format!("{}: metadata {k}", path.display()))
    };
    let mut inputs = HashMap::new();
    let mut expected = None;
    for (name, t) in st.tensors() {
        let data = t.data();
        let host = match t.dtype() {
            Dtype::U8 => HostData::U8(data.to_vec()),
            Dtype::U32 => HostData::U32(le(data, u32::from_le_bytes)),
            Dtype::F16 => HostData::F16(le(data, |b: [u8; 2]| f16::from_le_bytes(b))),
            Dtype::F32 => HostData::F32(le(data, f32::from_le_bytes)),
            other => bail!("{}: tensor {name} has dtype {other:?}", path.display()),
        };
        if name == "expected" {
            let HostData::F32(v) = host else {
                bail!("{}: expected is not f32", path.display());
            };
            expected = Some(v);
        } else {
            inputs.insert(name, host);
        }
    }
    let mut sizes = HashMap::new();
    for k in ["kv_heads", "chunks", "batch", "span_chunk"] {
        sizes.insert(k.to_string(), num(k)?);
    }
    let mut plan = CasePlan::default();
    for size in PlanSize::ALL {
        plan.0
            .insert(size, u64::from(num(&format!("plan_{}", size.name()))?));
    }
    let case = AttentionCase {
        plan,
        path: path.to_path_buf(),
        inputs,
        expected: expected.with_context(|| format!("{}: no expected tensor", path.display()))?,
        kernels: get("kernels")?.split(',').map(String::from).collect(),
        description: format!(
            "{} x ({} span + {} fp) tok, {} kv x g{}",
            num("batch")?,
            num("span_tokens")?,
            num("fp_tokens")?,
            num("kv_heads")?,
            num("group")?
        ),
        head_dim: num("head_dim")? as usize,
        group: num("group")? as usize,
        sizes,
    };
    let q_heads = case.sizes["kv_heads"] as usize * case.group;
    ensure!(
        case.expected.len() == case.sizes["batch"] as usize * q_heads * case.head_dim,
        "{}: expected has {} values",
        path.display(),
        case.expected.len()
    );
    Ok(case)
}

/// Elements of buffer `name` as `kernel`'s signature states them for the case's sizes and plan.
fn stated_len(case: &AttentionCase, kernel: &Kernel, name: &str) -> Result<usize> {
    let params = &kernel.signature.params;
    let len = params.iter().find_map(|p| match p {
        ParamSpec::Buffer { name: n, len, .. } if n == name => len.as_ref(),
        _ => None,
    });
    let len = len.with_context(|| {
        format!(
            "kernel {}: no stated length of {name}",
            kernel.signature.name
        )
    })?;
    let scalar = |i: u32| {
        let name = params.get(i as usize)?.name();
        case.sizes.get(name).copied()
    };
    let n = len.eval(&scalar, Some(&case.plan))?;
    Ok(usize::try_from(n)?)
}

fn upload(rt: &CudaRuntime, data: &HostData) -> Result<DeviceBuffer> {
    Ok(match data {
        HostData::U8(v) => rt.upload(v)?,
        HostData::U32(v) => rt.upload(v)?,
        HostData::F16(v) => rt.upload(v)?,
        HostData::F32(v) => rt.upload(v)?,
    })
}

/// Launches `kernel` with its buffers taken from `buffers` by parameter name and its scalars from
/// `sizes`; with `timed`, between two events, returning the kernel's time in ms (else 0).
fn launch_named(
    rt: &CudaRuntime,
    kernel: &Kernel,
    buffers: &mut HashMap<String, DeviceBuffer>,
    case: &AttentionCase,
    timed: bool,
) -> Result<f32> {
    let sizes = &case.sizes;
    let params = &kernel.signature.params;
    let mut taken = Vec::new();
    for p in params {
        if let ParamSpec::Buffer { name, .. } = p {
            let b = buffers
                .remove(name)
                .with_context(|| format!("kernel {}: no buffer {name}", kernel.signature.name))?;
            taken.push((name.clone(), b));
        }
    }
    let result = {
        let mut slots = taken.iter_mut();
        let mut args = Vec::with_capacity(params.len());
        for p in params {
            match p {
                ParamSpec::Buffer { access, .. } => {
                    let (_, b) = slots.next().context("buffer count")?;
                    args.push(if access.writes() {
                        LaunchArg::BufferMut(b)
                    } else {
                        LaunchArg::Buffer(b)
                    });
                }
                ParamSpec::Scalar {
                    name,
                    ty: Elem::U32,
                } => {
                    let v = sizes.get(name).with_context(|| format!("no size {name}"))?;
                    args.push(LaunchArg::U32(*v));
                }
                ParamSpec::Scalar { name, ty } => bail!("scalar {name} of type {ty} unsupported"),
            }
        }
        // SAFETY: `seqs` and `work_seq` are the case's tables, written by `kvq attention-case`
        // from the batch plan whose sizes `case.plan` holds.
        let mut launch = || unsafe { rt.launch_planned(kernel, &mut args, &case.plan) };
        match timed {
            true => rt.time(&kernel.signature.name, launch),
            false => launch().map(|()| 0.0),
        }
    };
    for (name, b) in taken {
        buffers.insert(name, b);
    }
    Ok(result?)
}

/// A result row.
pub struct AttentionRow {
    pub case: String,
    pub deviation: f64,
    /// Median of the launch sequence's summed kernel times.
    pub micros: f32,
    /// Each kernel's median time, in launch order.
    pub kernel_micros: Vec<(String, f32)>,
    /// Median time of one launch sequence when [`BACK_TO_BACK`] run between two events (the
    /// launches overlap the kernels before them, as in a decode loop; SDPA's baseline is timed
    /// so too).
    pub back_to_back_micros: f32,
}

/// Launch sequences per timed event pair in the back-to-back figure.
pub const BACK_TO_BACK: usize = 20;

/// Runs a case: uploads, launches the kernels once and compares, then times `runs` launches
/// of the sequence (each kernel event-timed; medians per kernel and of their sum) and `runs`
/// times [`BACK_TO_BACK`] sequences between two events (the median per sequence).
pub fn run(
    rt: &CudaRuntime,
    bundles: &[Bundle],
    case: &AttentionCase,
    runs: usize,
    log: &mut String,
) -> Result<AttentionRow> {
    let mut kernels = Vec::new();
    for name in &case.kernels {
        let bundle = bundles
            .iter()
            .find(|b| b.kernel(name).is_ok())
            .with_context(|| format!("kernel {name} is in none of the bundles"))?;
        kernels.push(rt.load(bundle, name)?);
    }
    let mut buffers = HashMap::new();
    for (name, data) in &case.inputs {
        buffers.insert(name.clone(), upload(rt, data)?);
    }
    for k in &kernels {
        for p in &k.signature.params {
            if let ParamSpec::Buffer { name, access, .. } = p {
                if access.writes() && !buffers.contains_key(name) {
                    // Written by this kernel, read by later ones: the longest stated length.
                    let mut len = 1;
                    for other in &kernels {
                        if other.signature.params.iter().any(|q| q.name() == name) {
                            len = len.max(stated_len(case, other, name)?);
                        }
                    }
                    buffers.insert(name.clone(), rt.zeros::<f32>(len)?);
                }
            }
        }
    }
    let sequence = |buffers: &mut HashMap<String, DeviceBuffer>, timed| -> Result<Vec<f32>> {
        kernels
            .iter()
            .map(|k| launch_named(rt, k, buffers, case, timed))
            .collect()
    };
    sequence(&mut buffers, true)?;
    rt.synchronize()?;
    let out = buffers.get("out").context("no out buffer")?;
    let got = rt.download::<f32>(out)?;
    let dev = max_head_deviation(&got, &case.expected, case.head_dim);
    let mut totals = Vec::with_capacity(runs);
    let mut per_kernel: Vec<Vec<f32>> = vec![Vec::with_capacity(runs); kernels.len()];
    for i in 0..runs + 3 {
        let ms = sequence(&mut buffers, true)?;
        if i >= 3 {
            totals.push(ms.iter().sum::<f32>());
            for (times, t) in per_kernel.iter_mut().zip(ms) {
                times.push(t);
            }
        }
    }
    // Back to back: BACK_TO_BACK sequences between two events, `runs` times.
    let mut steady = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut launched: Result<()> = Ok(());
        let ms = rt.time("the attention launch sequence", || {
            launched = (0..BACK_TO_BACK).try_for_each(|_| sequence(&mut buffers, false).map(drop));
            Ok(())
        })?;
        launched?;
        steady.push(ms / BACK_TO_BACK as f32);
    }
    // `--runs` is at least 1 (checked with the options), so no median is of nothing.
    let micros = crate::median(totals) * 1000.0;
    let back_to_back_micros = crate::median(steady) * 1000.0;
    let kernel_micros: Vec<(String, f32)> = kernels
        .iter()
        .zip(per_kernel)
        .map(|(k, times)| (k.signature.name.clone(), crate::median(times) * 1000.0))
        .collect();
    let _ = writeln!(
        log,
        "  attention {}: deviation {dev:.2e} (tolerance {TOLERANCE:e}); median {micros:.1} µs ({}); \
         back to back {back_to_back_micros:.1} µs",
        case.description,
        per_kernel_text(&kernel_micros)
    );
    Ok(AttentionRow {
        case: case.description.clone(),
        deviation: dev,
        micros,
        kernel_micros,
        back_to_back_micros,
    })
}

/// `stats 3.1, partial 10.2, combine 2.0`: each kernel's role (the word after `kvq_attend_`)
/// and median µs.
fn per_kernel_text(kernels: &[(String, f32)]) -> String {
    kernels
        .iter()
        .map(|(name, us)| {
            let role = name
                .strip_prefix("kvq_attend_")
                .and_then(|r| r.split('_').next())
                .unwrap_or(name);
            format!("{role} {us:.1}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The markdown table of attention rows.
pub fn table(rows: &[AttentionRow]) -> String {
    let mut s = String::from(
        "| attention case | max deviation | within 1e-4 | time µs (sum) | per kernel µs | back to back µs |\n| --- | ---: | --- | ---: | --- | ---: |\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.2e} | {} | {:.1} | {} | {:.1} |",
            r.case,
            r.deviation,
            if r.deviation <= TOLERANCE {
                "yes"
            } else {
                "no"
            },
            r.micros,
            per_kernel_text(&r.kernel_micros),
            r.back_to_back_micros
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_times_are_named_by_role() {
        let k = [
            ("kvq_attend_stats_blocks_kb1".to_string(), 3.06),
            ("kvq_attend_partial_kb1".to_string(), 10.0),
            ("other".to_string(), 1.0),
        ];
        assert_eq!(per_kernel_text(&k), "stats 3.1, partial 10.0, other 1.0");
    }

    #[test]
    fn deviation_is_relative_per_head() {
        assert_eq!(max_head_deviation(&[1.0, 2.0], &[1.0, 2.0], 2), 0.0);
        assert!((max_head_deviation(&[1.0, 2.2], &[1.0, 2.0], 2) - 0.1).abs() < 1e-6);
        assert_eq!(max_head_deviation(&[1.0], &[1.0, 2.0], 2), f64::INFINITY);
    }
}
