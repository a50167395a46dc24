//! PTX: emitted for sm_80 and sm_90, assembled by ptxas without spills, with IEEE arithmetic
//! only (no fma, no approximate division).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use kvq_codegen::{llvm_ir, ptx, Arch, Passes, Ptx, Target};
use kvq_ir::ir::{BinaryOp, Kernel, Op, ScalarType, UnaryOp};
use kvq_ir::{BitOrder, Bits};
use ScalarType::{BF16, F16, F32, F64, U16, U32, U8};

use crate::common::info;

/// ptxas from `KVQ_PTXAS` or the project's .venv, if present.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KVQ_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
        let p = python
            .path()
            .join("site-packages/nvidia/cuda_nvcc/bin/ptxas");
        p.is_file().then_some(p)
    })
}

/// Every kernel of the other test modules.
fn kernels() -> Vec<Kernel> {
    let mut all = vec![];
    for t in [F16, BF16, F32, F64] {
        all.push(crate::arith::float_kernel(t).0);
    }
    for t in [U8, U16, U32] {
        all.push(crate::arith::int_kernel(t).0);
    }
    all.push(crate::convert::u16_kernel());
    all.push(crate::convert::convert_kernel(F64, &[F16, BF16, F32, U32]));
    all.push(crate::convert::convert_kernel(
        U32,
        &[F16, BF16, F32, F64, U8],
    ));
    all.push(crate::convert::convert_kernel(BF16, &[F16, F32, F64, U8]));
    all.push(crate::memory::vector_kernel(F16, 8, 1));
    all.push(crate::memory::vector_kernel(U8, 16, 0));
    for bits in Bits::ALL {
        all.push(crate::memory::pack_kernel(bits, BitOrder::Msb));
    }
    all.push(crate::memory::pack_kernel(Bits::B2, BitOrder::Lsb));
    all.push(crate::memory::rank_kernel(F16, 64));
    all.push(crate::memory::rank_kernel(F32, 128));
    all.push(crate::memory::reduce_kernel());
    all.push(crate::control::loops_kernel());
    all.push(crate::warp::reduce_kernel());
    all.push(crate::warp::shuffle_kernel());
    all.push(crate::warp::tiles_kernel());
    all.push(crate::warp::bytes_kernel());
    all.push(crate::warp::big_shared_kernel());
    all.push(crate::warp::mma_kernel());
    all
}

fn has_op(kernel: &Kernel, pick: impl Fn(&Op, Option<ScalarType>) -> bool) -> bool {
    let info = info(kernel);
    kernel.insts.iter().any(|(_, inst)| {
        let operand = match &inst.op {
            Op::Binary(_, a, _) | Op::Unary(_, a) => info.types[a.index()].map(|t| t.elem()),
            _ => None,
        };
        pick(&inst.op, operand)
    })
}

/// Checks the PTX of `kernel`: its entry and `.reqntid`, no `fma`/approximate division/ftz,
/// `div.rn` where the kernel divides floats, `cvt.rni` where it rounds; then, when ptxas is
/// present, that it assembles for the PTX's architecture with no spills.
pub fn check_ptx(kernel: &Kernel, ptx: &Ptx) {
    check_ptx_spills(kernel, ptx, true);
}

/// [`check_ptx`], asserting zero spills only when `no_spills`: the attention kernels keep
/// per-thread arrays (query, accumulators, byte tables) in local memory, a CPU-shaped schedule.
pub fn check_ptx_spills(kernel: &Kernel, ptx: &Ptx, no_spills: bool) {
    let divides = |width: &[ScalarType]| {
        has_op(kernel, |op, t| {
            matches!(op, Op::Binary(BinaryOp::Div, ..)) && t.is_some_and(|t| width.contains(&t))
        })
    };
    let rounds = has_op(kernel, |op, _| {
        matches!(op, Op::Unary(UnaryOp::RoundEven, _))
    });
    let (name, text, arch) = (&kernel.name, &ptx.text, ptx.arch);
    assert_eq!(ptx.entry, *name);
    assert!(
        text.contains(&format!(".entry {name}(")),
        "{name}: no entry"
    );
    assert!(text.contains(&format!(".target {arch}")), "{name}: target");
    assert!(
        text.contains(&format!(".reqntid {}", kernel.block_size)),
        "{name}: reqntid"
    );
    for banned in ["fma", "div.approx", "div.full", "rcp.approx", ".ftz"] {
        assert!(
            !text.contains(banned),
            "{name} on {arch}: PTX contains `{banned}`"
        );
    }
    if divides(&[F16, BF16, F32]) {
        assert!(text.contains("div.rn.f32"), "{name}: no div.rn.f32");
    }
    if divides(&[F64]) {
        assert!(text.contains("div.rn.f64"), "{name}: no div.rn.f64");
    }
    if rounds {
        assert!(text.contains("cvt.rni"), "{name}: no cvt.rni");
    }
    let Some(ptxas) = ptxas() else {
        eprintln!("ptxas not found (set KVQ_PTXAS): {name} checked but not assembled");
        return;
    };
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kvq-codegen-ptxas-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{name}.{arch}.ptx"));
    std::fs::write(&file, text).expect("write ptx");
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(&file)
        .arg("-o")
        .arg(file.with_extension("cubin"))
        .output()
        .expect("run ptxas");
    let _ = std::fs::remove_dir_all(&dir);
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ptxas rejected {name} for {arch}:\n{report}"
    );
    let spills: Vec<_> = report.lines().filter(|l| l.contains("spill")).collect();
    assert!(!spills.is_empty(), "{name}: no ptxas report:\n{report}");
    for line in spills.into_iter().filter(|_| no_spills) {
        assert!(
            line.contains(" 0 bytes spill stores, 0 bytes spill loads"),
            "{name} on {arch} spills: {line}"
        );
    }
}

#[test]
fn ptx_is_ieee_and_assembles_without_spills() {
    for kernel in kernels() {
        let info = info(&kernel);
        for arch in [Arch::Sm80, Arch::Sm90] {
            let ptx = ptx::emit(&kernel, &info, arch).unwrap_or_else(|e| panic!("{e}"));
            check_ptx(&kernel, &ptx);
        }
    }
}

#[test]
fn cooperative_kernels_use_warp_shuffles_and_128_bit_accesses() {
    let expect = [
        (crate::warp::reduce_kernel(), vec!["shfl.sync.bfly.b32"]),
        (
            crate::warp::shuffle_kernel(),
            vec!["shfl.sync.bfly.b32", "shfl.sync.idx.b32"],
        ),
        (crate::warp::tiles_kernel(), vec!["bar.sync"]),
        (
            crate::warp::bytes_kernel(),
            vec!["ld.global.nc.v4.u32", "st.global.v4.u32", "popc.b32"],
        ),
        (
            crate::warp::big_shared_kernel(),
            vec![".extern .shared .align 16 .b8 kvq_dynamic_shared[]"],
        ),
        (
            crate::warp::mma_kernel(),
            vec!["mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"],
        ),
    ];
    for (kernel, wanted) in expect {
        let info = info(&kernel);
        let ptx = ptx::emit(&kernel, &info, Arch::Sm90).unwrap_or_else(|e| panic!("{e}"));
        for w in wanted {
            assert!(
                ptx.text.contains(w),
                "{}: no `{w}` in\n{}",
                kernel.name,
                ptx.text
            );
        }
        assert!(
            !ptx.text.contains(".local"),
            "{}: local memory in\n{}",
            kernel.name,
            ptx.text
        );
    }
}

#[test]
fn float_arithmetic_uses_rn_intrinsics_on_nvptx_and_plain_ops_on_host() {
    let kernel = crate::arith::float_kernel(F32).0;
    let info = info(&kernel);
    let gpu = llvm_ir(&kernel, &info, Target::Ptx(Arch::Sm90), Passes::default()).expect("ir");
    for intrinsic in [
        "llvm.nvvm.add.rn.f",
        "llvm.nvvm.mul.rn.f",
        "llvm.nvvm.div.rn.f",
        "ptx_kernel",
    ] {
        assert!(gpu.contains(intrinsic), "missing {intrinsic}");
    }
    let host = llvm_ir(&kernel, &info, Target::Host, Passes::default()).expect("ir");
    assert!(
        host.contains("define void @kvq_float_ops_f32(ptr"),
        "host entry"
    );
    for flag in [
        " fast ",
        " contract ",
        " reassoc ",
        " afn ",
        " arcp ",
        "fmuladd",
        "llvm.fma",
    ] {
        assert!(!host.contains(flag), "host IR has `{flag}`");
        assert!(!gpu.contains(flag), "PTX IR has `{flag}`");
    }
}

#[test]
fn attention_kernels_assemble_with_sfu_exp() {
    use kvq_ir::lower::attention::{attention, AttentionLayout, AttentionSchedule, AttentionShape};
    use kvq_ir::lower::InputType;
    let calibquant = "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0";
    let kivi = "key(bits = 2, axis = channel, group = 32, rule = minmax), \
         value(bits = 2, axis = token, group = 32, rule = minmax)";
    // Full-precision rows of f32, and of f16 / bf16 (a cache that stores them narrow).
    for (text, fp) in [
        (calibquant, InputType::F32),
        (kivi, InputType::F32),
        (
            "key(bits = 4, axis = token, group = all, rule = minmax, params = f32), \
         value(bits = 2, axis = channel, group = 32, rule = minmax), calibrate = 3.0",
            InputType::F32,
        ),
        (calibquant, InputType::F16),
        (kivi, InputType::BF16),
    ] {
        let shape = AttentionShape {
            fp,
            head_dim: 128,
            group: 4,
        };
        let scheme = kvq_ir::CacheScheme::parse(text).unwrap();
        let schedule = AttentionSchedule::gpu_default(&scheme, shape);
        let blocks = schedule.layout == AttentionLayout::BlockPerItem;
        let kernels = attention(&scheme, shape, &schedule).unwrap();
        for kernel in kernels.all() {
            let ptx =
                ptx::emit(kernel, &info(kernel), Arch::Sm90).unwrap_or_else(|e| panic!("{e}"));
            // The block-per-item kernels: no spills, no local memory; 128-bit code rows and
            // warp shuffles in stats and partial.
            check_ptx_spills(kernel, &ptx, blocks);
            if blocks {
                assert!(
                    !ptx.text.contains(".local"),
                    "{}: local memory",
                    kernel.name
                );
                if !kernel.name.contains("combine") {
                    for want in ["ld.global.nc.v4.u32", "shfl.sync.bfly"] {
                        assert!(ptx.text.contains(want), "{}: no {want}", kernel.name);
                    }
                }
                // partial asks for 5 resident blocks of 128 threads (registers within 96) with
                // channel-axis keys at group 4, 4 blocks (within 128) with token-axis keys.
                if kernel.name.contains("partial") {
                    let blocks = match scheme.key.axis {
                        kvq_ir::Axis::Channel => 5,
                        kvq_ir::Axis::Token => 4,
                    };
                    let want = format!(".minnctapersm {blocks}");
                    assert!(ptx.text.contains(&want), "{}: no {want}", kernel.name);
                }
            }
            if kernel.name.contains("partial") || kernel.name.contains("combine") {
                assert!(
                    ptx.text.contains("ex2.approx.f32"),
                    "{}: no ex2",
                    kernel.name
                );
            }
            // The narrow rows are read as such and widened (not read as f32).
            if fp != InputType::F32 && !kernel.name.contains("combine") {
                assert!(
                    ptx.text.contains("ld.global.nc.u16"),
                    "{}: no 16-bit loads",
                    kernel.name
                );
                if fp == InputType::F16 {
                    assert!(ptx.text.contains("cvt.f32.f16"), "{}: no cvt", kernel.name);
                }
            }
        }
    }
}
