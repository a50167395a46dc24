//! `kvq-gpu-check`: runs kvq's PTX quantize kernels on a GPU and compares their output bit for
//! bit with the host backend's, then times them.
//!
//! The CPU side (`scripts/gpu-check.sh prepare`) compiles bundles with `kvq compile --target
//! sm_90` and writes the host backend's results with `kvq quantize --backend host`; this binary
//! needs neither LLVM nor kvq, only the driver. See `--help` for the arguments.

mod attention;
mod cache;
mod synthetic;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use half::{bf16, f16};
use kvq_runtime::cuda::{
    Bundle, CudaError, CudaRuntime, DeviceBuffer, Elem, Kernel, KernelEntry, LaunchArg, ParamSpec,
};
use safetensors::{Dtype, SafeTensors};
use synthetic::SyntheticSpec;

const HELP: &str = "\
kvq-gpu-check: run kvq quantize kernels on the GPU and compare with the host backend bit for bit

USAGE:
    kvq-gpu-check --bundle DIR [--bundle DIR ...] --case SPEC [--case SPEC ...] --out DIR
                  [--runs N] [--device N]
    kvq-gpu-check --bundle DIR [--bundle DIR ...] --attention CASE [--attention CASE ...] --out DIR
    kvq-gpu-check --bundle DIR [--bundle DIR ...] --synthetic SPEC [--synthetic SPEC ...] --out DIR
    kvq-gpu-check --bundle DIR --cache DIR [--cache DIR ...] --out DIR
    kvq-gpu-check --bundle DIR [--bundle DIR ...] --list

OPTIONS:
    --bundle DIR   output of `kvq compile --target sm_90 -o DIR` (manifest.json + *.ptx); repeatable
    --case SPEC    CAPTURE.safetensors,k|v,LAYER,EXPECTED.safetensors,KERNEL; repeatable
                     CAPTURE:  f16 k/v [layers, heads, tokens, head_dim] (tests/data/*.safetensors)
                     EXPECTED: `kvq quantize --backend host` output (codes u8, zero/scale f32)
                     KERNEL:   a quantize entry name from one of the bundles' manifests
    --synthetic SPEC  KERNEL,HEADS,TOKENS,SEED: seeded f16 input of that shape (head_dim from the
                   bundle) made here, expected codes and parameters from kvq-ir's reference
                   quantizer (SPEC.md) on this machine's CPU; checked bit for bit and timed like
                   --case; repeatable
    --attention F  a decode-attention case written by `kvq attention-case` (inputs by kernel
                   parameter name, sizes, host outputs); its kernels run in order and the output
                   must match within 1e-4 relative per query head; repeatable
    --cache DIR    a bundle compiled with `--input f32 --group G` (quantize and attention kernels of
                   one pair): runs kvq_runtime's cache conformance suite on the GPU (the Cuda
                   device): exported spans bit-identical to the reference quantizer's, attention
                   within 1e-4 of the reference, refused calls change nothing; repeatable
    --out DIR      writes results.md (the table) and log.txt there
    --runs N       timed launches per kernel, the median is reported (default 50)
    --device N     CUDA device index (default 0)
    --list         print the bundles' quantize kernels (name, role, scheme) and exit; no GPU needed
    --help         this text

Exits non-zero on any mismatch or error, and with a clear message when there is no CUDA driver.
";

#[derive(Debug)]
struct Options {
    bundles: Vec<PathBuf>,
    cases: Vec<CaseSpec>,
    synthetic: Vec<SyntheticSpec>,
    attention: Vec<PathBuf>,
    caches: Vec<PathBuf>,
    out: Option<PathBuf>,
    runs: usize,
    device: usize,
    list: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct CaseSpec {
    capture: PathBuf,
    tensor: String,
    layer: usize,
    expected: PathBuf,
    kernel: String,
}

impl CaseSpec {
    fn parse(spec: &str) -> Result<CaseSpec> {
        let parts: Vec<&str> = spec.split(',').collect();
        let [capture, tensor, layer, expected, kernel] = parts[..] else {
            bail!("--case {spec:?}: expected CAPTURE,k|v,LAYER,EXPECTED,KERNEL");
        };
        ensure!(
            tensor == "k" || tensor == "v",
            "--case {spec:?}: tensor must be k or v, not {tensor:?}"
        );
        let layer = layer
            .parse()
            .with_context(|| format!("--case {spec:?}: layer {layer:?}"))?;
        ensure!(!kernel.is_empty(), "--case {spec:?}: empty kernel name");
        Ok(CaseSpec {
            capture: capture.into(),
            tensor: tensor.into(),
            layer,
            expected: expected.into(),
            kernel: kernel.into(),
        })
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Options>> {
    let mut opts = Options {
        bundles: Vec::new(),
        cases: Vec::new(),
        synthetic: Vec::new(),
        attention: Vec::new(),
        caches: Vec::new(),
        out: None,
        runs: 50,
        device: 0,
        list: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--bundle" => opts.bundles.push(value()?.into()),
            "--case" => opts.cases.push(CaseSpec::parse(&value()?)?),
            "--synthetic" => opts.synthetic.push(SyntheticSpec::parse(&value()?)?),
            "--attention" => opts.attention.push(value()?.into()),
            "--cache" => opts.caches.push(value()?.into()),
            "--out" => opts.out = Some(value()?.into()),
            "--runs" => opts.runs = value()?.parse().context("--runs")?,
            "--device" => opts.device = value()?.parse().context("--device")?,
            "--list" => opts.list = true,
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(!opts.bundles.is_empty(), "at least one --bundle is needed");
    if !opts.list {
        ensure!(
            !opts.cases.is_empty()
                || !opts.synthetic.is_empty()
                || !opts.attention.is_empty()
                || !opts.caches.is_empty(),
            "at least one --case, --synthetic, --attention or --cache is needed"
        );
        ensure!(opts.out.is_some(), "--out is needed");
        ensure!(opts.runs > 0, "--runs must be at least 1");
    }
    Ok(Some(opts))
}

/// A case with its host data loaded.
#[derive(Debug)]
struct Case {
    /// Where the input and the expectation come from, for the log.
    label: String,
    kernel: String,
    bundle: usize,
    heads: usize,
    tokens: usize,
    x: Vec<f16>,
    codes: Vec<u8>,
    zero: Vec<f32>,
    scale: Vec<f32>,
}

/// The bundle holding quantize kernel `kernel` (compiled for f16 input), and its manifest entry.
fn find_quantize<'a>(kernel: &str, bundles: &'a [Bundle]) -> Result<(usize, &'a KernelEntry)> {
    let bundle = bundles
        .iter()
        .position(|b| b.kernel(kernel).is_ok())
        .with_context(|| format!("kernel {kernel} is in none of the bundles"))?;
    let (entry, _) = bundles[bundle].kernel(kernel)?;
    ensure!(
        entry.role.is_quantize(),
        "kernel {kernel} is a {} kernel; only quantize kernels are checked",
        entry.role.name()
    );
    let manifest = &bundles[bundle].manifest;
    ensure!(
        manifest.input == "f16",
        "bundle {} was compiled for {} input; compile with --input f16 to feed f16 input",
        bundles[bundle].dir.display(),
        manifest.input
    );
    Ok((bundle, entry))
}

/// A synthetic case: seeded input, the reference quantizer's output as the expectation.
fn load_synthetic(spec: &SyntheticSpec, bundles: &[Bundle]) -> Result<Case> {
    let (bundle, entry) = find_quantize(&spec.kernel, bundles)?;
    let dim = bundles[bundle].manifest.head_dim as usize;
    let x = synthetic::input(spec.heads, spec.tokens, dim, spec.seed)?;
    let span = synthetic::expected(&entry.scheme, &x, spec.heads, spec.tokens, dim)?;
    Ok(Case {
        label: format!(
            "synthetic {} x {} x {dim}, seed {}, vs kvq-ir's reference quantizer",
            spec.heads, spec.tokens, spec.seed
        ),
        kernel: spec.kernel.clone(),
        bundle,
        heads: spec.heads,
        tokens: spec.tokens,
        x,
        codes: span.codes,
        zero: span.zero,
        scale: span.scale,
    })
}

fn load_case(spec: &CaseSpec, bundles: &[Bundle]) -> Result<Case> {
    let (bundle, _) = find_quantize(&spec.kernel, bundles)?;
    let manifest = &bundles[bundle].manifest;

    let bytes = std::fs::read(&spec.capture)
        .with_context(|| format!("reading {}", spec.capture.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("parsing {}", spec.capture.display()))?;
    let t = st
        .tensor(&spec.tensor)
        .with_context(|| format!("{}: tensor {}", spec.capture.display(), spec.tensor))?;
    let [layers, heads, tokens, dim] = t.shape()[..] else {
        bail!("{}: {} is not 4-d", spec.capture.display(), spec.tensor);
    };
    ensure!(
        t.dtype() == Dtype::F16,
        "{}: {} is not f16",
        spec.capture.display(),
        spec.tensor
    );
    ensure!(spec.layer < layers, "layer {} of {layers}", spec.layer);
    ensure!(
        dim as u32 == manifest.head_dim,
        "capture head_dim {dim}, bundle compiled for {}",
        manifest.head_dim
    );
    let per = heads * tokens * dim * 2;
    let x = t.data()[spec.layer * per..(spec.layer + 1) * per]
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]))
        .collect();

    let bytes = std::fs::read(&spec.expected)
        .with_context(|| format!("reading {}", spec.expected.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("parsing {}", spec.expected.display()))?;
    let tensor = |name: &str, dtype: Dtype| -> Result<Vec<u8>> {
        let t = st
            .tensor(name)
            .with_context(|| format!("{}: tensor {name}", spec.expected.display()))?;
        ensure!(
            t.dtype() == dtype,
            "{}: {name} is not {dtype:?}",
            spec.expected.display()
        );
        Ok(t.data().to_vec())
    };
    let codes = tensor("codes", Dtype::U8)?;
    let f32s = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let zero = f32s(tensor("zero", Dtype::F32)?);
    let scale = f32s(tensor("scale", Dtype::F32)?);
    ensure!(
        codes.len() % (heads * tokens) == 0 && zero.len() == scale.len() && !zero.is_empty(),
        "{}: shapes do not fit {heads} heads x {tokens} tokens",
        spec.expected.display()
    );
    Ok(Case {
        label: format!(
            "{} {} layer {} vs {}",
            spec.capture.display(),
            spec.tensor,
            spec.layer,
            spec.expected.display()
        ),
        kernel: spec.kernel.clone(),
        bundle,
        heads,
        tokens,
        x,
        codes,
        zero,
        scale,
    })
}

/// Expected f32 parameter values as bit patterns of the kernel's parameter type; `None` for a
/// value that type cannot hold exactly (the host backend stores values of that type).
fn param_bits(values: &[f32], elem: Elem) -> Result<Vec<Option<u32>>> {
    let exact = |v: f32, back: f32| v.to_bits() == back.to_bits() || (v.is_nan() && back.is_nan());
    values
        .iter()
        .map(|&v| {
            Ok(match elem {
                Elem::F32 => Some(v.to_bits()),
                Elem::F16 => {
                    let h = f16::from_f32(v);
                    exact(v, h.to_f32()).then_some(h.to_bits() as u32)
                }
                Elem::Bf16 => {
                    let h = bf16::from_f32(v);
                    exact(v, h.to_f32()).then_some(h.to_bits() as u32)
                }
                other => bail!("parameters of type {other} are not supported"),
            })
        })
        .collect()
}

/// Number of differing elements and the first difference (index, expected, got).
fn diff<T: PartialEq + Copy>(
    expected: &[Option<T>],
    got: &[T],
) -> (usize, Option<(usize, Option<T>, T)>) {
    let mut count = expected.len().abs_diff(got.len());
    let mut first = None;
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        if *e != Some(*g) {
            count += 1;
            first.get_or_insert((i, *e, *g));
        }
    }
    (count, first)
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    kernel: String,
    role: &'static str,
    shape: String,
    exact: bool,
    micros: f32,
    gbps: f64,
}

fn param_elem(kernel: &Kernel, index: usize) -> Result<Elem> {
    match kernel.signature.params.get(index) {
        Some(ParamSpec::Buffer { elem, .. }) => Ok(*elem),
        _ => bail!(
            "kernel {}: parameter {index} is not a buffer",
            kernel.signature.name
        ),
    }
}

fn run_case(
    rt: &CudaRuntime,
    kernel: &Kernel,
    case: &Case,
    runs: usize,
    log: &mut String,
) -> Result<Row> {
    let name = &kernel.signature.name;
    let (zero_elem, scale_elem) = (param_elem(kernel, 2)?, param_elem(kernel, 3)?);
    let zeros = |elem: Elem, len: usize| -> Result<DeviceBuffer> {
        Ok(match elem {
            Elem::F16 => rt.zeros::<f16>(len)?,
            Elem::Bf16 => rt.zeros::<bf16>(len)?,
            Elem::F32 => rt.zeros::<f32>(len)?,
            other => bail!("kernel {name}: parameters of type {other} are not supported"),
        })
    };
    let x = rt.upload(&case.x)?;
    let mut codes = rt.zeros::<u8>(case.codes.len())?;
    let mut zero = zeros(zero_elem, case.zero.len())?;
    let mut scale = zeros(scale_elem, case.scale.len())?;
    let mut status = rt.zeros::<u32>(1)?;
    let (heads, tokens) = (case.heads as u32, case.tokens as u32);
    let launch = |codes: &mut DeviceBuffer,
                  zero: &mut DeviceBuffer,
                  scale: &mut DeviceBuffer,
                  status: &mut DeviceBuffer|
     -> Result<f32> {
        let mut args = [
            LaunchArg::Buffer(&x),
            LaunchArg::BufferMut(codes),
            LaunchArg::BufferMut(zero),
            LaunchArg::BufferMut(scale),
            LaunchArg::BufferMut(status),
            LaunchArg::U32(heads),
            LaunchArg::U32(tokens),
        ];
        Ok(rt.launch_timed(kernel, &mut args)?)
    };
    // A codes buffer one byte short is refused before the driver sees it (the signature's
    // stated length), and the launch after it still writes into zeroed buffers.
    if let Some(short) = case.codes.len().checked_sub(1).filter(|&n| n > 0) {
        let mut short = rt.zeros::<u8>(short)?;
        match launch(&mut short, &mut zero, &mut scale, &mut status) {
            Err(e) if matches!(e.downcast_ref(), Some(CudaError::Size(_))) => {
                let _ = writeln!(log, "  short codes buffer refused: {e}");
            }
            other => bail!("kernel {name}: a short codes buffer was not refused: {other:?}"),
        }
    }
    // The compared output comes from the first launch into zeroed buffers.
    launch(&mut codes, &mut zero, &mut scale, &mut status)?;
    rt.synchronize()?;
    let download_bits = |b: &DeviceBuffer| -> Result<Vec<u32>> {
        Ok(match b.elem() {
            Elem::F16 => rt
                .download::<f16>(b)?
                .iter()
                .map(|v| v.to_bits() as u32)
                .collect(),
            Elem::Bf16 => rt
                .download::<bf16>(b)?
                .iter()
                .map(|v| v.to_bits() as u32)
                .collect(),
            _ => rt.download::<f32>(b)?.iter().map(|v| v.to_bits()).collect(),
        })
    };
    let got_codes = rt.download::<u8>(&codes)?;
    let got_zero = download_bits(&zero)?;
    let got_scale = download_bits(&scale)?;
    let got_status = rt.download::<u32>(&status)?[0];

    let mut exact = true;
    let expected_codes: Vec<Option<u8>> = case.codes.iter().copied().map(Some).collect();
    let checks = [
        {
            let (n, first) = diff(&expected_codes, &got_codes);
            (
                "codes",
                n,
                first.map(|(i, e, g)| format!("byte {i}: expected {e:?}, got {g}")),
            )
        },
        {
            let (n, first) = diff(&param_bits(&case.zero, zero_elem)?, &got_zero);
            (
                "zero",
                n,
                first.map(|(i, e, g)| {
                    format!(
                        "element {i}: expected bits {e:x?} ({}), got {g:#x}",
                        case.zero[i]
                    )
                }),
            )
        },
        {
            let (n, first) = diff(&param_bits(&case.scale, scale_elem)?, &got_scale);
            (
                "scale",
                n,
                first.map(|(i, e, g)| {
                    format!(
                        "element {i}: expected bits {e:x?} ({}), got {g:#x}",
                        case.scale[i]
                    )
                }),
            )
        },
    ];
    for (what, n, first) in checks {
        if n > 0 {
            exact = false;
            let _ = writeln!(
                log,
                "  MISMATCH {what}: {n} elements differ; first at {}",
                first.unwrap_or_default()
            );
        }
    }
    if got_status != 0 {
        exact = false;
        let _ = writeln!(
            log,
            "  MISMATCH status: kernel reported {got_status} (host backend succeeded)"
        );
    }
    // Then warm-up and timed launches over the same buffers.
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 3 {
        let ms = launch(&mut codes, &mut zero, &mut scale, &mut status)?;
        if i >= 3 {
            times.push(ms);
        }
    }
    if rt.download::<u8>(&codes)? != got_codes {
        let _ = writeln!(
            log,
            "  note: codes changed over repeated launches (the kernel accumulates into its outputs)"
        );
    }
    let micros = median(times) * 1000.0;
    let input_bytes = (case.x.len() * 2) as f64;
    Ok(Row {
        kernel: name.clone(),
        role: kernel.role.name(),
        shape: format!("{} x {}", case.heads, case.tokens),
        exact,
        micros,
        gbps: input_bytes / (micros as f64 * 1e-6) / 1e9,
    })
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from("| kernel | role | heads x tokens | bit-exact | time µs | GB/s of input |\n| --- | --- | --- | --- | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.1} |",
            r.kernel,
            r.role,
            r.shape,
            if r.exact { "yes" } else { "no" },
            r.micros,
            r.gbps
        );
    }
    s
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let Some(opts) = parse_args(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let bundles = opts
        .bundles
        .iter()
        .map(|d| Bundle::load(d).with_context(|| format!("bundle {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    if opts.list {
        for b in &bundles {
            for k in b.manifest.kernels.iter().filter(|k| k.role.is_quantize()) {
                println!("{}\t{}\t{}", k.entry.name, k.role.name(), k.scheme);
            }
        }
        return Ok(());
    }
    // Host data first, so a bad case fails before the GPU is touched.
    let mut cases = opts
        .cases
        .iter()
        .map(|s| load_case(s, &bundles).with_context(|| format!("case {}", s.kernel)))
        .collect::<Result<Vec<_>>>()?;
    for s in &opts.synthetic {
        cases.push(
            load_synthetic(s, &bundles).with_context(|| format!("synthetic case {}", s.kernel))?,
        );
    }
    let attention_cases = opts
        .attention
        .iter()
        .map(|p| attention::load(p))
        .collect::<Result<Vec<_>>>()?;
    let out = opts.out.as_deref().unwrap_or(Path::new("."));
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let mut log = String::new();
    let rt = match CudaRuntime::new(opts.device) {
        Ok(rt) => rt,
        Err(e) => {
            // Leave the reason in --out too: it is what comes back from a device run.
            let _ = std::fs::write(out.join("log.txt"), format!("error: {e}\n"));
            return Err(e.into());
        }
    };
    let device = rt.device_name()?;
    println!("device: {device}");
    let _ = writeln!(log, "device {}: {device}", opts.device);
    let mut rows = Vec::new();
    let mut failures = 0;
    for case in &cases {
        let _ = writeln!(log, "case {}: {}", case.kernel, case.label);
        let result = rt
            .load(&bundles[case.bundle], &case.kernel)
            .map_err(anyhow::Error::from)
            .and_then(|k| run_case(&rt, &k, case, opts.runs, &mut log));
        match result {
            Ok(row) => {
                failures += usize::from(!row.exact);
                let _ = writeln!(
                    log,
                    "  bit-exact: {}; median {:.2} µs",
                    row.exact, row.micros
                );
                rows.push(row);
            }
            Err(e) => {
                failures += 1;
                let _ = writeln!(log, "  ERROR: {e:#}");
            }
        }
    }
    let mut attention_rows = Vec::new();
    for case in &attention_cases {
        let _ = writeln!(log, "attention case {}", case.path.display());
        match attention::run(&rt, &bundles, case, opts.runs, &mut log) {
            Ok(row) => {
                failures += usize::from(row.deviation > attention::TOLERANCE);
                attention_rows.push(row);
            }
            Err(e) => {
                failures += 1;
                let _ = writeln!(log, "  ERROR: {e:#}");
            }
        }
    }
    let mut cache_rows = Vec::new();
    for dir in &opts.caches {
        let _ = writeln!(log, "cache bundle {}", dir.display());
        let result = Bundle::load(dir)
            .map_err(anyhow::Error::from)
            .and_then(|b| cache::run(opts.device, &b, &mut log));
        match result {
            Ok(row) => cache_rows.push(row),
            Err(e) => {
                failures += 1;
                let _ = writeln!(log, "  ERROR: {e:#}");
            }
        }
    }
    let mut table = format!("device: {device}\n\n{}", table(&rows));
    if !attention_rows.is_empty() {
        table += &format!("\n{}", attention::table(&attention_rows));
    }
    if !opts.caches.is_empty() {
        table += &format!("\n{}", cache::table(&cache_rows));
    }
    print!("{table}");
    eprint!("{log}");
    std::fs::write(out.join("results.md"), &table)?;
    std::fs::write(out.join("log.txt"), &log)?;
    ensure!(
        failures == 0,
        "{failures} of {} cases failed or mismatched (see {})",
        cases.len() + attention_cases.len() + opts.caches.len(),
        out.join("log.txt").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case() {
        let c = CaseSpec::parse("a.safetensors,v,3,e.safetensors,kvq_q").unwrap();
        assert_eq!(c.tensor, "v");
        assert_eq!(c.layer, 3);
        assert_eq!(c.kernel, "kvq_q");
        assert!(CaseSpec::parse("a,x,0,e,k").is_err());
        assert!(CaseSpec::parse("a,k,zero,e,k").is_err());
        assert!(CaseSpec::parse("a,k,0,e").is_err());
    }

    #[test]
    fn parses_args() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(parse_args(args("--help")).unwrap().is_none());
        let o = parse_args(args("--bundle b --list")).unwrap().unwrap();
        assert!(o.list);
        assert!(parse_args(args("--bundle b")).is_err());
        assert!(parse_args(args("--bundle b --case a,k,0,e,k")).is_err());
        let o = parse_args(args("--bundle b --case a,k,0,e,k --out o --runs 5"))
            .unwrap()
            .unwrap();
        assert_eq!((o.runs, o.cases.len()), (5, 1));
        assert!(parse_args(args("--bundle")).is_err());
        assert!(parse_args(args("--bogus")).is_err());
    }

    #[test]
    fn param_bits_convert_exactly() {
        let v = [0.5f32, -1.25, 65504.0];
        let bits = param_bits(&v, Elem::F16).unwrap();
        assert_eq!(bits[0], Some(f16::from_f32(0.5).to_bits() as u32));
        assert!(bits.iter().all(Option::is_some));
        // Not an f16 value: the expectation can never match.
        assert_eq!(param_bits(&[0.1], Elem::F16).unwrap(), vec![None]);
        assert_eq!(
            param_bits(&[0.1], Elem::F32).unwrap(),
            vec![Some(0.1f32.to_bits())]
        );
        assert!(param_bits(&[1.0], Elem::U8).is_err());
    }

    #[test]
    fn diff_counts_and_locates() {
        assert_eq!(diff(&[Some(1u8), Some(2)], &[1, 2]), (0, None));
        assert_eq!(
            diff(&[Some(1u8), Some(2)], &[1, 3]),
            (1, Some((1, Some(2), 3)))
        );
        assert_eq!(diff(&[None, Some(2u8)], &[1, 2]), (1, Some((0, None, 1))));
        assert_eq!(diff(&[Some(1u8)], &[1, 2]).0, 1);
    }

    #[test]
    fn median_of_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
