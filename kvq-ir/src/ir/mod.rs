//! The kernel IR: what kvq compiles a scheme into, before any target.
//!
//! # Model
//! A [`Kernel`] is run by a grid of `grid_size` blocks (chosen at launch) of `block_size` threads
//! (fixed in the kernel). Every thread executes the kernel's top-level [`Block`].
//!
//! - **Values.** Every instruction lives in the kernel's [`Arena`] of [`Inst`]s and is placed in
//!   exactly one block; an instruction with a result type *is* the value it defines
//!   ([`Value`] = `Handle<Inst>`). Values are immutable (SSA); state that changes lives in
//!   per-thread [`Local`]s (read with [`Op::ReadLocal`], written with [`Op::WriteLocal`]), in
//!   block-[`SharedArray`]s or in buffer parameters.
//! - **Control flow is structured**: [`Op::Loop`] (a counted loop whose own value is the
//!   induction variable) and [`Op::If`] hold nested blocks. There are no jumps.
//! - **Synchronisation points** ([`Op::Barrier`], and the warp collectives [`Op::Warp`]) appear
//!   where every thread of a block reaches them: the top-level block, or the body of a loop whose
//!   bounds are *uniform* (the same for every thread of the block; see [`sync`]). They split the
//!   program into *regions*. A value defined in one region is used in another only when it is
//!   uniform; anything else that crosses goes through locals (per thread) or shared memory (per
//!   block). This lets a CPU backend run a block as one loop over threads per region ("threads
//!   become loops"), with collectives between those loops, and keep the GPU's semantics.
//! - **Clusters** ([`Kernel::cluster_size`] > 1, sm_90's thread-block clusters): groups of
//!   consecutive blocks that run together. An [`Op::ClusterBarrier`] (top-level block only) is a
//!   barrier over the cluster's blocks, and [`Op::LoadRemote`] reads another block's shared
//!   memory; a CPU backend runs a cluster's blocks one after the other between cluster barriers.
//! - **Warps** are the groups of 32 consecutive threads of a block (`lane_id`, `warp_id`).
//!   Shuffles and reductions run over all 32 lanes; a reduction's order is fixed
//!   ([`WarpOp::Reduce`]), so that a float sum has the same bits on every backend.
//! - **Arithmetic** on floats is IEEE, each operation correctly rounded, never contracted into a
//!   fused multiply-add, never approximated (division is true division). Integers are unsigned
//!   and wrap. Conversions round to nearest even. These rules make every backend give the same
//!   bits, which SPEC.md requires of codes and parameters.
//! - **Memory**: buffer parameters (global memory), shared arrays, locals; loads and stores move
//!   1 to 16 consecutive elements (a vector width).
//!
//! [`verify`] checks every invariant (listed in its module documentation) and returns the
//! [`KernelInfo`] that backends require; [`print`] gives the deterministic text form; [`interp`]
//! runs a verified kernel on the CPU, slowly and obviously correctly.

pub mod arena;
pub mod builder;
pub mod interp;
pub mod kernel;
pub mod length;
pub mod print;
pub mod sync;
pub mod verify;

pub use arena::{Arena, Handle};
pub use builder::Builder;
pub use kernel::{mma_a_at, mma_acc_at, mma_b_at};
pub use kernel::{
    Access, BinaryOp, Block, CmpOp, Const, Inst, Kernel, Local, Memory, Op, Param, ReduceOp,
    ScalarType, SharedArray, Special, Type, UnaryOp, Value, WarpOp, MAX_CLUSTER_SIZE, MMA_ACC_LEN,
    MMA_A_LEN, MMA_B_LEN, MMA_K, MMA_M, MMA_N, REDUCE_STEPS, WARP_SIZE,
};
pub use length::{check_launch, ArgSize, Len, PlanSize, PlanSizes, Signature, SizeError};
pub(crate) use print::memory_elem;
pub use print::print;
pub use sync::SyncFacts;
pub use verify::{verify, FindingKind, KernelInfo, VerifyError, VerifyFinding};
