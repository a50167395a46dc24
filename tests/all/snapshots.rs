//! Snapshots of every catalogue scheme's kernels (IR text and PTX), the PTX properties that
//! bit-exactness rests on, and ptxas's resource report for every kernel.
//!
//! One test per catalogue entry (`snapshots::<name>`), so a changed kernel fails on its own.
//! Snapshots live in `tests/all/snapshots/`; bless them with `cargo insta review`, or with
//! `INSTA_UPDATE=always cargo test --test all snapshots` and read the diff. PTX is normalised:
//! LLVM's `//` comment lines (banner, version) and trailing whitespace are dropped. Code
//! generation runs without the compile cache, so the tests are hermetic.

use kvq_codegen::{ptx, ptxas, Arch};
use kvq_ir::ir::{verify, Kernel};
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_ir::scheme::catalogue::{catalogue, CATALOGUE};
use kvq_ir::Scheme;

const ARCHS: [Arch; 2] = [Arch::Sm80, Arch::Sm90];

/// The catalogue entries whose dequantize PTX is snapshotted too (msb with f16 parameters, lsb
/// with f32 parameters); the others' dequantize kernels get the plain asserts only.
const DEQUANTIZE_PTX: [&str; 2] = ["calibquant_k", "kivi2_k_lsb_f32"];

fn scheme(name: &str) -> Scheme {
    catalogue()
        .into_iter()
        .find(|&(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} is not in the catalogue"))
        .1
}

fn shape(head_dim: u32) -> ShapeClass {
    ShapeClass {
        head_dim,
        input: InputType::F16,
    }
}

/// The (quantize, dequantize) kernels of `scheme` for f16 input under the GPU schedule of
/// `arch` (sm_80 has no thread-block clusters).
fn kernels(scheme: &Scheme, head_dim: u32, arch: Arch) -> [Kernel; 2] {
    let shape = shape(head_dim);
    let schedule = match arch {
        Arch::Sm90 => Schedule::gpu_default(scheme, shape),
        Arch::Sm80 => Schedule::gpu_default(scheme, shape).without_clusters(scheme, shape),
    };
    let q = lower::quantize(scheme, shape, &schedule).expect("quantize lowers");
    let d = lower::dequantize(scheme, shape, &schedule).expect("dequantize lowers");
    [q.kernel, d.kernel]
}

/// The kernel's PTX for `arch`, compiled without the on-disk cache.
fn ptx_text(kernel: &Kernel, arch: Arch) -> String {
    let info = verify(kernel).unwrap_or_else(|e| panic!("{}: {e}", kernel.name));
    let ptx = ptx::emit_with(kernel, &info, arch, None)
        .unwrap_or_else(|e| panic!("{} {arch}: {e}", kernel.name));
    assert_eq!(ptx.entry, kernel.name);
    ptx.text
}

/// PTX without `//` comment lines (LLVM's banner names its version) and trailing whitespace.
fn normalise(ptx: &str) -> String {
    let mut out = String::new();
    for line in ptx.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The instructions bit-exactness rests on (crate docs of kvq-codegen): IEEE `add.rn`/`mul.rn`,
/// `div.rn.f32` in quantize kernels, round-half-even conversion, and no contraction or
/// approximate division anywhere.
fn assert_ptx_properties(ptx: &str, kernel: &Kernel, arch: Arch, quantize: bool) {
    let what = format!("{} {arch}", kernel.name);
    let has = |needle: &str| ptx.contains(needle);
    assert!(
        has(&format!(".entry {}(", kernel.name)),
        "{what}: no .entry {}",
        kernel.name
    );
    assert!(
        ptx.lines()
            .any(|l| l.trim() == format!(".target {}", arch.name())),
        "{what}: no .target {}",
        arch.name()
    );
    for banned in ["fma", "div.approx", "div.full", "rcp"] {
        assert!(!has(banned), "{what}: contains {banned}");
    }
    assert!(has("mul.rn.f32"), "{what}: no mul.rn.f32");
    assert!(has("add.rn.f32"), "{what}: no add.rn.f32");
    if quantize {
        assert!(has("div.rn.f32"), "{what}: no div.rn.f32");
        assert!(has("cvt.rni"), "{what}: no cvt.rni (round half even)");
    }
}

/// IR and PTX snapshots of one catalogue entry, with the PTX property asserts.
fn check_scheme(name: &str) {
    let scheme = scheme(name);
    let [quantize, dequantize] = kernels(&scheme, 64, Arch::Sm90);
    insta::assert_snapshot!(format!("ir_{name}"), kvq_ir::ir::print(&quantize));
    insta::assert_snapshot!(
        format!("ir_dequantize_{name}"),
        kvq_ir::ir::print(&dequantize)
    );
    for arch in ARCHS {
        let [quantize, dequantize] = kernels(&scheme, 64, arch);
        let q = ptx_text(&quantize, arch);
        assert_ptx_properties(&q, &quantize, arch, true);
        insta::assert_snapshot!(format!("ptx_{name}_{}", arch.name()), normalise(&q));
        let d = ptx_text(&dequantize, arch);
        assert_ptx_properties(&d, &dequantize, arch, false);
        if DEQUANTIZE_PTX.contains(&name) {
            insta::assert_snapshot!(
                format!("ptx_dequantize_{name}_{}", arch.name()),
                normalise(&d)
            );
        }
    }
}

macro_rules! catalogue_tests {
    ($($name:ident),* $(,)?) => {
        /// The entries that have a test below.
        const COVERED: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                check_scheme(stringify!($name));
            }
        )*
    };
}

catalogue_tests!(
    calibquant_k,
    calibquant_v,
    calibquant_mid_lsb,
    quantile1,
    kivi2_k,
    kivi2_v,
    kivi2_k_lsb_f32,
    tok4,
    tok8,
    mse1,
);

#[test]
fn every_catalogue_entry_has_a_snapshot_test() {
    let names: Vec<&str> = CATALOGUE.iter().map(|&(n, _)| n).collect();
    assert_eq!(COVERED, names.as_slice());
    for name in DEQUANTIZE_PTX {
        assert!(names.contains(&name), "{name}");
    }
}

#[test]
fn normalise_drops_comments_and_trailing_whitespace() {
    let ptx =
        "//\n// Generated by LLVM NVPTX Back-End\n//\n\n.version 7.8  \n\t// note\n.target sm_80\n";
    assert_eq!(normalise(ptx), "\n.version 7.8\n.target sm_80\n");
}

/// Every catalogue kernel (quantize and dequantize, head_dim 64 and 128, f16 input, GPU
/// schedule) assembles for sm_80 and sm_90 without spilling; the resource table is a snapshot so
/// that register counts are reviewed when they change. Needs ptxas (scripts/setup.sh installs it).
#[test]
fn ptxas_accepts_every_kernel_without_spills() {
    let Some(ptxas_path) = ptxas::find() else {
        if std::env::var_os("CI").is_some() {
            panic!("ptxas not found: run scripts/setup.sh (it installs ptxas into .venv) or set KVQ_PTXAS");
        }
        eprintln!("skipped: ptxas not found (run scripts/setup.sh or set KVQ_PTXAS)");
        return;
    };
    let mut table = Vec::new();
    for (_, scheme) in catalogue() {
        for head_dim in [64, 128] {
            for arch in ARCHS {
                for kernel in kernels(&scheme, head_dim, arch) {
                    let ptx = ptx_text(&kernel, arch);
                    let r = ptxas::assemble(&ptxas_path, &ptx, arch, &kernel.name)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(
                        (r.spill_stores, r.spill_loads),
                        (0, 0),
                        "{} {arch} spills: {r}",
                        kernel.name
                    );
                    table.push(format!(
                        "{} {} registers={} stack={} shared={}",
                        kernel.name,
                        arch.name(),
                        r.registers,
                        r.stack_frame,
                        r.shared
                    ));
                }
            }
        }
    }
    table.sort();
    let entries: std::collections::HashSet<_> = table
        .iter()
        .map(|line| line.split(" registers=").next())
        .collect();
    assert_eq!(entries.len(), table.len(), "two kernels share a name");
    insta::assert_snapshot!("ptxas_resources", table.join("\n") + "\n");
}
