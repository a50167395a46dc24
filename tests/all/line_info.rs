//! `kvq profile` weighs each body of a trace by the machine instructions ptxas made of it, read
//! from the line information of a PTX that tags every kvq IR instruction's code with its index
//! (`ptx::emit_with_lines`). That PTX must assemble to the same machine code as the PTX that
//! runs: the same registers and instruction count (LLVM's `.target <arch>, debug` once made
//! ptxas spill 708 bytes in CalibQuant's `partial`), nearly every instruction with a line, and
//! the lines those of the kernel's instructions. Needs ptxas and nvdisasm (scripts/setup.sh).

use kvq_codegen::{ptx, ptxas, Arch};
use kvq_ir::ir::{verify, Kernel};
use kvq_ir::lower::attention::{attention, AttentionSchedule, AttentionShape};
use kvq_ir::lower::{self, InputType, ShapeClass};
use kvq_ir::scheme::catalogue::catalogue;
use kvq_ir::{CacheScheme, Calibration};

/// The kernels checked: every catalogue quantize kernel at head_dim 128 (GPU schedule, f16
/// input) and the calibrated CalibQuant attention kernels at group 4 (`partial` on tensor
/// cores).
fn kernels() -> Vec<Kernel> {
    let shape = ShapeClass {
        head_dim: 128,
        input: InputType::F16,
    };
    let mut out: Vec<Kernel> = catalogue()
        .into_iter()
        .map(|(_, s)| {
            let schedule = lower::Schedule::gpu_default(&s, shape);
            lower::quantize(&s, shape, &schedule)
                .expect("lowers")
                .kernel
        })
        .collect();
    let cat = catalogue();
    let named = |n: &str| {
        cat.iter()
            .find(|(m, _)| *m == n)
            .expect("in the catalogue")
            .1
    };
    let pair = CacheScheme {
        key: named("calibquant_k"),
        value: named("calibquant_v"),
        calibrate: Calibration::new(3.0),
    };
    let shape = AttentionShape {
        head_dim: 128,
        group: 4,
        fp: InputType::F16,
    };
    let schedule = AttentionSchedule::gpu_default(&pair, shape);
    let k = attention(&pair, shape, &schedule).expect("lowers");
    out.extend(k.all().cloned());
    out
}

#[test]
fn line_information_leaves_the_machine_code_alone() {
    let (Some(ptxas_path), Some(nvdisasm)) = (ptxas::find(), ptxas::find_nvdisasm()) else {
        if std::env::var_os("CI").is_some() {
            panic!("ptxas or nvdisasm not found: run scripts/setup.sh");
        }
        eprintln!("skipped: ptxas or nvdisasm not found (run scripts/setup.sh)");
        return;
    };
    let arch = Arch::Sm90;
    for kernel in kernels() {
        let info = verify(&kernel).unwrap_or_else(|e| panic!("{}: {e}", kernel.name));
        let plain = ptx::emit_with(&kernel, &info, arch, None).unwrap().text;
        let lined = ptx::emit_with_lines(&kernel, &info, arch).unwrap().text;
        assert!(lined.contains(".loc"), "{}: no .loc", kernel.name);
        assert!(
            !lined.contains(", debug"),
            "{}: a debug target",
            kernel.name
        );
        let name = &kernel.name;
        let (r0, n0) = ptxas::assemble_counting(&ptxas_path, &nvdisasm, &plain, arch, name)
            .unwrap_or_else(|e| panic!("{e}"));
        let (r1, lines) =
            ptxas::assemble_counting_lines(&ptxas_path, &nvdisasm, &lined, arch, name)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r0, r1, "{name}: resources differ");
        assert_eq!(n0, lines.total, "{name}: instruction counts differ");
        assert_eq!(lines.by_line.values().sum::<u32>(), lines.total, "{name}");
        let unlined = lines.by_line.get(&0).copied().unwrap_or(0);
        assert!(
            unlined * 20 <= lines.total,
            "{name}: {unlined} of {} instructions without a line",
            lines.total
        );
        let insts = kernel.insts.len() as u32;
        assert!(
            lines.by_line.keys().all(|&l| l <= insts),
            "{name}: a line past the kernel's {insts} instructions"
        );
        for (line, n) in &lines.memory_by_line {
            assert!(
                lines.by_line.get(line).is_some_and(|all| all >= n),
                "{name}: line {line}"
            );
        }
    }
}
