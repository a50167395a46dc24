//! Target machines and the optimization pipeline.
//!
//! Only the NVPTX and X86 backends are initialized (llvm-sys is built with
//! `disable-alltargets-init`). PTX targets `nvptx64-nvidia-cuda` with CPU `sm_80`/`sm_90` and
//! PTX ISA 7.8, which ptxas 12.x accepts for both. Host code targets the running CPU (its name
//! and features, so f16 conversions use F16C where present), position-independent, so the
//! object links into a shared library. Both run the new pass manager's `default<O3>`.
//!
//! No target machine enables fast-math or FP-op fusion: LLVM's default `FPOpFusion::Standard`
//! fuses only `llvm.fmuladd`, which this crate never emits.

use std::sync::Once;

use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target as LlvmTarget, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

use crate::{CodegenError, Passes, Target};

/// The PTX ISA version requested from the NVPTX backend.
pub(crate) const PTX_FEATURES: &str = "+ptx78";

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let config = InitializationConfig::default();
        LlvmTarget::initialize_nvptx(&config);
        LlvmTarget::initialize_x86(&config);
    });
}

/// The target machine for `target`.
pub(super) fn machine(kernel: &str, target: Target) -> Result<TargetMachine, CodegenError> {
    init();
    let llvm_err = |message: String| CodegenError::Llvm {
        kernel: kernel.to_string(),
        message,
    };
    let (triple, cpu, features, reloc) = match target {
        Target::Ptx(arch) => (
            TargetTriple::create("nvptx64-nvidia-cuda"),
            arch.name().to_string(),
            PTX_FEATURES.to_string(),
            RelocMode::Default,
        ),
        Target::Host => {
            let triple = TargetMachine::get_default_triple();
            let name = triple.as_str().to_string_lossy().into_owned();
            if !name.starts_with("x86_64") {
                return Err(CodegenError::UnsupportedHost { triple: name });
            }
            (
                triple,
                TargetMachine::get_host_cpu_name()
                    .to_string_lossy()
                    .into_owned(),
                format!(
                    "{},{HOST_EXTRA_FEATURES}",
                    TargetMachine::get_host_cpu_features().to_string_lossy()
                ),
                RelocMode::PIC,
            )
        }
    };
    let llvm_target = LlvmTarget::from_triple(&triple).map_err(|e| llvm_err(e.to_string()))?;
    llvm_target
        .create_target_machine(
            &triple,
            &cpu,
            &features,
            OptimizationLevel::Aggressive,
            reloc,
            CodeModel::Default,
        )
        .ok_or_else(|| llvm_err(format!("no target machine for {cpu} ({target:?})")))
}

/// Added to the host CPU's features:
/// - `+prefer-no-gather`: no vectorization through gathers. Table lookups (attention's byte
///   tables) run faster as scalar loads than as the gathers the vectorizer would otherwise
///   build across tokens.
/// - `-prefer-256-bit`: on CPUs with AVX-512, the vectorizers may use 512-bit registers. LLVM
///   tunes Intel's AVX-512 server CPUs (Skylake-SP to Sapphire Rapids) to 256 bits and AMD's
///   Zen 4 to 512 bits; on a 2-core Intel Xeon with AVX-512 the quantize kernels ran up to 1.8
///   times faster with 512 bits and attention the same (docs/performance-history.md).
pub(crate) const HOST_EXTRA_FEATURES: &str = "+prefer-no-gather,-prefer-256-bit";

/// Sets `module`'s triple and data layout from `machine`.
pub(super) fn configure(module: &Module<'_>, machine: &TargetMachine) {
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
}

/// Runs `default<O3>` over `module`, tuned by `passes`.
pub(super) fn optimize(
    module: &Module<'_>,
    machine: &TargetMachine,
    passes: Passes,
) -> Result<(), String> {
    let options = PassBuilderOptions::create();
    options.set_loop_unrolling(passes.unroll_loops);
    module
        .run_passes("default<O3>", machine, options)
        .map_err(|e| e.to_string())
}
