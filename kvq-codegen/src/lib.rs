//! `kvq-codegen`: lowers verified kvq kernels ([`kvq_ir::ir::Kernel`] with its
//! [`KernelInfo`]) through LLVM to PTX for NVIDIA GPUs and to native code for the host CPU.
//!
//! # Entry points
//! - [`ptx::emit`]: PTX text for `sm_80` or `sm_90`, one `.entry` named like the kernel.
//! - [`host::compile`]: a [`host::HostKernel`] loaded into this process (the kernel verified
//!   when it is built; a compile cache entry was verified when it was stored);
//!   [`host::HostKernel::launch`] runs it over a grid, checking every argument against the
//!   kernel's parameters first.
//! - [`host::HostKernel::record`] / [`host::load_records`]: what a compiled kernel keeps of its
//!   lowered kernel, so that a caller keying a whole lowering itself loads kernels again
//!   without lowering them.
//! - [`llvm_ir`]: the optimized LLVM IR text for either target, for dumps and debugging.
//!
//! Only the private `llvm` module names inkwell; nothing in this crate's public API does, so
//! inkwell's `'ctx` lifetime never leaks into callers. Setting `KVQ_DUMP=dir` writes the kvq IR
//! text, the LLVM IR and the PTX of every kernel compiled into `dir`. Compiled kernels are kept
//! in an on-disk [`cache`] keyed by (IR, target, options, LLVM version); [`ptxas`] validates PTX
//! and reports registers and spills.
//!
//! # Bit-exactness
//! SPEC.md requires every backend to produce the interpreter's codes and parameters bit for bit.
//! The lowering guarantees it by construction rather than by tolerance:
//! - Float `Add`/`Sub`/`Mul`/`Div` are single, correctly rounded IEEE operations with no
//!   fast-math flags, so LLVM never contracts or reassociates them. On NVPTX, f32/f64 add, sub
//!   and mul go through `llvm.nvvm.add.rn.*`/`llvm.nvvm.mul.rn.*` (PTX `add.rn`/`mul.rn`,
//!   which neither LLVM nor ptxas fuses into `fma`) and division through `llvm.nvvm.div.rn.*`
//!   (`div.rn.f32`, never `div.approx`/`div.full` or a reciprocal).
//! - F16 and BF16 arithmetic widens to f32 (exactly), operates in f32, and rounds back to
//!   nearest even, as the interpreter does. BF16 conversions are integer code (no libcalls);
//!   conversions into BF16 from f64 or u32 round once (round-to-odd to f32 first).
//! - `Min`/`Max` are compare-and-select exactly as the IR defines them (`if b < a {b} else {a}`),
//!   `RoundEven`/`Floor` are `llvm.roundeven`/`llvm.floor`, float-to-integer conversion is the
//!   saturating `llvm.fptoui.sat` (Rust's `as`), integer arithmetic wraps.
//! - `SelectRank` is exact: a bisection, or on the host for long runs a radix selection, over the
//!   order-preserving integer key of each f32; counts are integers.
//!
//! # Memory at block start, and what a launch trusts
//! The interpreter starts every block with zeroed shared arrays and locals. Host code does the
//! same; PTX zeroes locals but leaves shared memory undefined (zeroing it would cost a pass and
//! a barrier, and kvq kernels write shared memory before reading it). Neither target checks
//! buffer bounds: like a GPU launch, a host launch trusts the kernel's index arithmetic, and
//! runs blocks concurrently on the premise that each element written is written by one block
//! (see [`host::HostKernel::launch`]).

pub mod cache;
mod error;
pub mod host;
mod llvm;
pub mod ptx;
pub mod ptxas;

pub use error::{ArgKind, CodegenError};

use kvq_ir::ir::{Kernel, KernelInfo};

/// An NVIDIA GPU architecture that PTX is generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Ampere (A100): `sm_80`.
    Sm80,
    /// Hopper (H100, H200): `sm_90`.
    Sm90,
}

impl Arch {
    /// The name ptxas and LLVM use (`sm_80`, `sm_90`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What code is generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The CPU this process runs on (x86-64), threads and blocks lowered to loops.
    Host,
    /// PTX for an NVIDIA GPU.
    Ptx(Arch),
}

/// How LLVM optimizes a kernel within `default<O3>` (a part of the compile cache key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Passes {
    /// LLVM's loop unrollers (partial, runtime and full unrolling; LLVM's
    /// `PipelineTuningOptions::LoopUnrolling`). On by default; off, LLVM unrolls no loop of its
    /// own accord, which halves the host attention kernels' compile time at the same speed.
    pub unroll_loops: bool,
}

impl Default for Passes {
    fn default() -> Passes {
        Passes { unroll_loops: true }
    }
}

/// PTX assembly for one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ptx {
    /// The architecture it targets.
    pub arch: Arch,
    /// The name of its `.entry` (the kernel's name).
    pub entry: String,
    /// The PTX text.
    pub text: String,
}

/// The LLVM IR of `kernel` for `target` optimized with `passes`, as text (for dumps and tests).
pub fn llvm_ir(
    kernel: &Kernel,
    info: &KernelInfo,
    target: Target,
    passes: Passes,
) -> Result<String, CodegenError> {
    llvm::ir_text(kernel, info, target, passes)
}

/// The version of the LLVM kvq-codegen is linked with.
pub fn llvm_version() -> String {
    llvm::llvm_version()
}

/// Writes `text` to `$KVQ_DUMP/<kernel>.<ext>` when `KVQ_DUMP` is set. Dumping is a debugging
/// aid, so a failure to write is reported on stderr and otherwise ignored.
fn dump(kernel: &Kernel, ext: &str, text: &[u8]) {
    let Some(dir) = std::env::var_os("KVQ_DUMP") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let path = dir.join(format!("{}.{ext}", kernel.name));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        eprintln!("kvq-codegen: cannot write {}: {e}", path.display());
    }
}
