//! The verifier: checks every invariant of the kernel IR and reports *all* the ways a kernel
//! breaks them, each as a [`VerifyFinding`] with a typed [`FindingKind`].
//!
//! Findings name instructions as the text form ([`super::print`]) does: `v12` is the 13th value
//! in program order, so a finding can be found in a dump. An instruction without a result is
//! named by its own text in backquotes (``store codes[v1], v9``); a handle that is out of range
//! or not placed in the program is named `v?#12` (its arena index). Findings about the kernel as
//! a whole have no instruction (`at == None`); findings about an instruction have `at ==
//! Some(its handle)`. Findings come in a deterministic order: the kernel's declarations, then
//! the instructions in program order, then unplaced instructions in arena order.
//!
//! # Invariants
//! The invariant whose breach each [`FindingKind`] reports is given in brackets.
//!
//! 1. **Handles are in range.** Every handle in a block and every operand is an index of the
//!    kernel's arena. [`FindingKind::EntryOutOfRange`] (at the Loop or If whose block holds it,
//!    or `None` for the top-level block), [`FindingKind::OperandOutOfRange`].
//! 2. **Placement.** Every instruction of the arena is placed in exactly one position of one
//!    block reached from the top-level block: never twice (in one block, in two, or in its own
//!    body), never in none. [`FindingKind::PlacedMoreThanOnce`] (at the instruction, once, when
//!    it is reached again; its blocks are walked only the first time),
//!    [`FindingKind::NotPlaced`].
//! 3. **Definition before use.** An operand is defined earlier in the same block or in an
//!    enclosing block (the dominance of structured code), or is the value of an enclosing Loop
//!    (its induction variable, visible only inside its body, not in its own `start`/`end`).
//!    [`FindingKind::UseBeforeDef`] (defined later in program order, or the instruction itself),
//!    [`FindingKind::NotInScope`] (defined in a block that does not enclose the use: an inner
//!    block already closed, or the other branch of an If), [`FindingKind::UseOfUnplaced`] (the
//!    operand is not placed in the program), [`FindingKind::LoopValueOutsideBody`].
//! 4. **Operands have results.** A value used as an operand comes from an operation with a
//!    result (not Store, WriteLocal, If or Barrier) and has a recorded type.
//!    [`FindingKind::OperandWithoutResult`].
//! 5. **Recorded result types.** The `ty` of each instruction is what its operation produces:
//!    Const: the constant's type; ScalarParam: the parameter's type; Special: u32; Unary:
//!    the operand's type, IsFinite: bool; Binary: the operand's type; Cmp: bool; Select: the
//!    arms' type; Convert(t): t; Load: the memory's element type, a vector of `lanes` when
//!    `lanes > 1`; Extract: the vector's element type; Vector: a vector of the elements' type
//!    and count; ReadLocal: the local's element type; PackBits, UnpackBits: u8; SelectRank:
//!    f32; Loop: u32; Store, WriteLocal, If, Barrier: no type. (Checked only when the operands
//!    and memory it depends on are themselves valid, to avoid cascades.)
//!    [`FindingKind::WrongResultType`].
//! 6. **Operand types.** Scalars everywhere except Extract's operand, a stored value and
//!    Vector's result. Binary: operands of one type; Add/Sub/Mul/Div/Min/Max on an integer or
//!    float, Rem/Shl/Shr on an integer, And/Or on bool or an integer. Unary: Neg/RoundEven/
//!    Floor/IsFinite on a float, Not on bool or an integer. Cmp: operands of one type; Eq/Ne on
//!    any scalar, Lt/Le/Gt/Ge on an integer or float. Select: a bool condition, arms of one
//!    scalar type. Convert: between integer and float types, or from bool to an integer.
//!    Bitcast: see invariant 14.
//!    Indices (Load/Store index, ReadLocal/WriteLocal index, SelectRank base/stride/count/rank,
//!    Loop start/end) are u32. Extract: a vector operand and `lane < lanes`. Vector: 2 to 16
//!    scalars of one type. PackBits: exactly `8 / bits` u8 codes. UnpackBits: a u8 byte and
//!    `lane < 8 / bits`. If: a bool condition. [`FindingKind::BadOperandType`],
//!    [`FindingKind::OperandsDiffer`], [`FindingKind::InvalidConversion`],
//!    [`FindingKind::ExtractLaneOutOfRange`], [`FindingKind::BadVectorLength`],
//!    [`FindingKind::PackBitsCount`], [`FindingKind::UnpackLaneOutOfRange`].
//! 7. **Memory.** `Memory::Param(i)` names an existing parameter that is a buffer;
//!    `Memory::Shared(i)` an existing shared array. Load and SelectRank read (the buffer's access
//!    is Read or ReadWrite), Store writes (Write or ReadWrite). A stored value (a scalar or a
//!    vector) has the memory's element type. Load moves 1, 2, 4, 8 or 16 elements. SelectRank
//!    reads float memory. A constant index into a shared array stays within its length
//!    (`index + lanes <= len`). [`FindingKind::ParamOutOfRange`], [`FindingKind::NotABuffer`],
//!    [`FindingKind::SharedOutOfRange`], [`FindingKind::ReadFromWriteOnly`],
//!    [`FindingKind::WriteToReadOnly`], [`FindingKind::StoreTypeMismatch`],
//!    [`FindingKind::BadLoadLanes`], [`FindingKind::SelectRankNotFloat`],
//!    [`FindingKind::ConstIndexOutOfBounds`].
//! 8. **Locals.** ReadLocal/WriteLocal name an existing local; a written value has type
//!    `Scalar(local.elem)`; every local has `len > 0`; a constant element index is below `len`.
//!    [`FindingKind::LocalOutOfRange`], [`FindingKind::WriteLocalTypeMismatch`],
//!    [`FindingKind::EmptyLocal`], [`FindingKind::ConstIndexOutOfBounds`].
//! 9. **Scalar parameters.** `ScalarParam(i)` names an existing parameter that is a scalar;
//!    every scalar parameter is u32 or f32. [`FindingKind::ParamOutOfRange`],
//!    [`FindingKind::NotAScalarParam`], [`FindingKind::BadScalarParamType`].
//! 10. **Synchronisation** (see [`super::sync`]). A sync point (a Barrier or a warp collective)
//!     is placed where every thread of the block reaches it: in the top-level block or in the
//!     body of a *sync loop*, a Loop holding a sync point, whose `start` and `end` are uniform
//!     values; never inside an If. Sync points, and the start and end of every sync loop's body,
//!     split the program into regions; a value defined in one region is used in another only
//!     when it is uniform (values of nested blocks belong to the region that holds them).
//!     [`FindingKind::SyncInsideIf`], [`FindingKind::SyncLoopNotUniform`],
//!     [`FindingKind::CrossesBarrier`].
//! 11. **Kernel shape.** A Loop's step is above 0; `block_size` is in 1..=1024; shared arrays
//!     have `len > 0` and take at most 48 KiB together (`sum(len * elem.size())`), or else at most
//!     163 KiB laid out at 16-byte boundaries, in dynamic shared memory; the kernel's
//!     name and the names of its parameters, shared arrays and locals are C identifiers
//!     (`[A-Za-z_][A-Za-z0-9_]*`); no two parameters, no two shared arrays and no two locals
//!     share a name (a parameter and a shared array may: the text form writes shared arrays as
//!     `shared.NAME`, and code generators mangle names).
//!     [`FindingKind::LoopStepZero`], [`FindingKind::BadBlockSize`],
//!     [`FindingKind::EmptyShared`], [`FindingKind::SharedMemoryTooLarge`],
//!     [`FindingKind::InvalidName`], [`FindingKind::DuplicateName`].
//!
//! 12. **Warp collectives.** A kernel with a warp collective has a `block_size` that is a
//!     multiple of 32. Its locals exist; shuffles read and write locals of one element type
//!     (u8, u32 or f32) and length, with a xor mask below 32 and a u32 lane local; reductions
//!     take a u32 or f32 local; a matrix multiply-accumulate takes f16 locals of 8 and 4
//!     elements and an f32 local of 4. [`FindingKind::PartialWarp`],
//!     [`FindingKind::LocalOutOfRange`], [`FindingKind::BadWarpLocal`],
//!     [`FindingKind::WarpLocalsDiffer`], [`FindingKind::ShuffleMaskTooLarge`],
//!     [`FindingKind::MmaFragmentLength`].
//! 13. **Alignment.** An aligned Load or Store has an index proven a multiple of its lanes
//!     ([`super::sync::SyncFacts::is_multiple`]: constants, products, sums, shifts, and loop
//!     values whose start and step are multiples). [`FindingKind::UnalignedIndex`].
//! 14. **Bit casts.** A Bitcast is between f32 and u32, between f16 or bf16 and u16, or between
//!     `u8x4`/`u8x8`/`u8x16` and `u32`/`u32x2`/`u32x4` of the same size. [`FindingKind::InvalidBitcast`].
//!
//! 15. **Clusters.** `cluster_size` is in 1..=[`MAX_CLUSTER_SIZE`]; `min_blocks_per_sm` blocks
//!     hold at most [`MAX_THREADS_PER_SM`] threads together. A ClusterBarrier or
//!     LoadRemote appears only in a kernel with `cluster_size > 1`; a ClusterBarrier only in the
//!     top-level block (it is a sync point: invariant 10 applies); a LoadRemote names an
//!     existing shared array, takes a u32 rank and index, gives a scalar of the array's element
//!     type, and is followed in program order by a ClusterBarrier (so that no block of the
//!     cluster leaves, and its shared memory with it, while another still reads it).
//!     [`FindingKind::BadClusterSize`], [`FindingKind::ClusterOpWithoutCluster`],
//!     [`FindingKind::ClusterBarrierNotTopLevel`], [`FindingKind::RemoteLoadNotFollowed`],
//!     [`FindingKind::SharedOutOfRange`], [`FindingKind::BadOperandType`].
//! 16. **Sizes.** A stated buffer length or grid bound ([`super::length::Len`]) refers only to
//!     u32 scalar parameters and divides only by constants above zero.
//!     [`FindingKind::BadSize`].
//!
//! For a kernel with no finding, [`verify`] returns the [`KernelInfo`] backends need.

use std::fmt;

use super::kernel::{
    Access, BinaryOp, CmpOp, Const, Inst, Kernel, Local, Memory, Op, Param, ScalarType, Type,
    UnaryOp, Value, WarpOp, MAX_CLUSTER_SIZE, MMA_ACC_LEN, MMA_A_LEN, MMA_B_LEN, WARP_SIZE,
};
use super::print::{
    has_result, local_name, param_name, type_text, walk, BlockKind, Entry, Names, Visit,
};
use super::sync::SyncFacts;

/// Whether `len` refers only to u32 scalar parameters and divides only by nonzero constants.
fn size_is_valid(len: &super::length::Len, params: &[Param]) -> bool {
    use super::length::Len;
    let scalar_ok = |i: u32| {
        matches!(
            params.get(i as usize),
            Some(Param::Scalar {
                ty: ScalarType::U32,
                ..
            })
        )
    };
    match len {
        Len::Const(_) | Len::Plan(_) => true,
        Len::Scalar(i) => scalar_ok(*i),
        Len::Product(f) => f.iter().all(|x| size_is_valid(x, params)),
        Len::CeilDiv(a, b) => *b > 0 && size_is_valid(a, params),
    }
}

/// The largest `block_size`.
pub const MAX_BLOCK_SIZE: u32 = 1024;

/// Threads an SM can hold (sm_80 and sm_90: 2,048), the bound of `min_blocks_per_sm`.
pub const MAX_THREADS_PER_SM: u32 = 2048;

/// The most *static* shared memory a block may use, in bytes (48 KiB): above it, backends place
/// the shared arrays in dynamic shared memory, whose size the launch passes.
pub const MAX_SHARED_BYTES: u64 = 48 * 1024;

/// The most shared memory a block may use at all, in bytes, laid out by
/// [`shared_layout`](super::kernel::shared_layout): 163 KiB, the per-block opt-in maximum of
/// sm_80 (sm_90 allows 227 KiB), so that every kernel runs on both.
pub const MAX_DYNAMIC_SHARED_BYTES: u64 = 163 * 1024;

/// Facts about a verified kernel that backends need. Only [`verify`] makes one, so a backend
/// that takes a `&KernelInfo` cannot see an unverified kernel.
#[derive(Debug, Clone, PartialEq)]
// The private `_sealed` field (not `#[non_exhaustive]`) states the intent: no one else builds one.
#[allow(clippy::manual_non_exhaustive)]
pub struct KernelInfo {
    /// Result type of every instruction, indexed by `Value::index()`.
    pub types: Vec<Option<Type>>,
    /// Bytes of shared memory per block (the arrays' sizes summed).
    pub shared_bytes: u32,
    /// Bytes of dynamic shared memory a launch passes: 0 when the arrays fit in static shared
    /// memory ([`MAX_SHARED_BYTES`]), else their [`shared_layout`](super::kernel::shared_layout)
    /// total.
    pub dynamic_shared_bytes: u32,
    /// Number of regions: sync points and sync-loop body boundaries, plus 1.
    pub regions: u32,
    /// The kernel's synchronisation structure, uniform values and index alignments.
    pub sync: SyncFacts,
    _sealed: (),
}

/// Every invariant a kernel breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("kernel `{kernel}` is invalid ({}):{}", count_text(.errors.len()), lines(.errors))]
pub struct VerifyError {
    /// The kernel's name.
    pub kernel: String,
    /// Every finding, in a deterministic order (see the module documentation).
    pub errors: Vec<VerifyFinding>,
}

fn count_text(n: usize) -> String {
    if n == 1 {
        "1 finding".to_string()
    } else {
        format!("{n} findings")
    }
}

fn lines(errors: &[VerifyFinding]) -> String {
    errors
        .iter()
        .map(|e| format!("\n  {}", e.message))
        .collect()
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct VerifyFinding {
    /// The instruction it concerns; `None` for the kernel's declarations or its top-level block.
    pub at: Option<Value>,
    /// What is wrong.
    pub kind: FindingKind,
    /// The finding as text, instructions and values named as in the text form, e.g.
    /// `v12: operand v7 is used before it is defined`.
    pub message: String,
}

/// A declared item of a kernel, for findings about declarations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// The kernel itself (its name).
    Kernel,
    /// The parameter with this ABI index.
    Param(u32),
    /// The shared array with this index.
    Shared(u32),
    /// The local with this index.
    Local(u32),
}

/// What a type must be, in [`FindingKind::BadOperandType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TypeClass {
    /// Scalar bool.
    Bool,
    /// Scalar u8.
    U8,
    /// Scalar u32.
    U32,
    /// Scalar u8, u16 or u32.
    Int,
    /// Scalar f16, bf16, f32 or f64.
    Float,
    /// An integer or float scalar.
    Numeric,
    /// Bool or an integer scalar.
    BoolOrInt,
    /// Any scalar.
    Scalar,
    /// Any vector.
    Vector,
}

impl TypeClass {
    /// Whether `ty` belongs to the class.
    pub fn accepts(self, ty: Type) -> bool {
        match (self, ty) {
            (TypeClass::Vector, t) => matches!(t, Type::Vector(..)),
            (_, Type::Vector(..)) => false,
            (TypeClass::Bool, Type::Scalar(s)) => s == ScalarType::Bool,
            (TypeClass::U8, Type::Scalar(s)) => s == ScalarType::U8,
            (TypeClass::U32, Type::Scalar(s)) => s == ScalarType::U32,
            (TypeClass::Int, Type::Scalar(s)) => s.is_int(),
            (TypeClass::Float, Type::Scalar(s)) => s.is_float(),
            (TypeClass::Numeric, Type::Scalar(s)) => s.is_int() || s.is_float(),
            (TypeClass::BoolOrInt, Type::Scalar(s)) => s == ScalarType::Bool || s.is_int(),
            (TypeClass::Scalar, Type::Scalar(_)) => true,
        }
    }
}

impl fmt::Display for TypeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TypeClass::Bool => "bool",
            TypeClass::U8 => "u8",
            TypeClass::U32 => "u32",
            TypeClass::Int => "an integer scalar",
            TypeClass::Float => "a float scalar",
            TypeClass::Numeric => "an integer or float scalar",
            TypeClass::BoolOrInt => "bool or an integer scalar",
            TypeClass::Scalar => "a scalar",
            TypeClass::Vector => "a vector",
        })
    }
}

/// What is wrong, one variant per kind of breach; the module documentation lists which
/// invariant each reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FindingKind {
    // 1. Handles in range.
    /// A block entry is not an index of the arena.
    EntryOutOfRange {
        /// The entry.
        entry: Value,
        /// Number of instructions in the arena.
        arena_len: usize,
    },
    /// An operand is not an index of the arena.
    OperandOutOfRange {
        /// The operand.
        operand: Value,
        /// Number of instructions in the arena.
        arena_len: usize,
    },

    // 2. Placement.
    /// The instruction is reached a second time.
    PlacedMoreThanOnce,
    /// The instruction is in the arena but not placed in the program.
    NotPlaced,

    // 3. Definition before use.
    /// The operand is defined later in program order (or is the instruction itself).
    UseBeforeDef {
        /// The operand.
        operand: Value,
    },
    /// The operand is defined in a block that does not enclose the use.
    NotInScope {
        /// The operand.
        operand: Value,
    },
    /// The operand is an instruction that is not placed in the program.
    UseOfUnplaced {
        /// The operand.
        operand: Value,
    },
    /// The operand is a Loop's induction variable, used outside the loop's body.
    LoopValueOutsideBody {
        /// The operand (the Loop).
        operand: Value,
    },

    // 4. Operands have results.
    /// The operand's operation has no result, or its recorded type is none.
    OperandWithoutResult {
        /// The operand.
        operand: Value,
    },

    // 5. Recorded result types.
    /// The recorded type is not what the operation produces.
    WrongResultType {
        /// The instruction's `ty`.
        recorded: Option<Type>,
        /// What the operation produces.
        expected: Option<Type>,
    },

    // 6. Operand types.
    /// An operand's type is not of the class the operation requires.
    BadOperandType {
        /// The operand.
        operand: Value,
        /// Its type.
        ty: Type,
        /// What it must be.
        expected: TypeClass,
    },
    /// Two operands that must have one type do not.
    OperandsDiffer {
        /// The first operand.
        first: Value,
        /// Its type.
        first_ty: Type,
        /// The other operand.
        second: Value,
        /// Its type.
        second_ty: Type,
    },
    /// A Convert between types that do not convert.
    InvalidConversion {
        /// The operand's type.
        from: Type,
        /// The target type.
        to: ScalarType,
    },
    /// Extract of a lane the vector does not have.
    ExtractLaneOutOfRange {
        /// The lane.
        lane: u8,
        /// The vector's lanes.
        lanes: u8,
    },
    /// A Vector of fewer than 2 or more than 16 elements.
    BadVectorLength {
        /// Number of elements.
        len: usize,
    },
    /// A PackBits with other than `8 / bits` codes.
    PackBitsCount {
        /// Codes given.
        count: usize,
        /// Codes a byte holds.
        expected: usize,
    },
    /// An UnpackBits of a code the byte does not hold.
    UnpackLaneOutOfRange {
        /// The lane.
        lane: u8,
        /// Codes a byte holds.
        codes: u8,
    },

    // 7. Memory.
    /// A parameter index that does not exist (in a memory or a ScalarParam).
    ParamOutOfRange {
        /// The index.
        param: u32,
        /// Number of parameters.
        count: usize,
    },
    /// `Memory::Param` names a scalar parameter.
    NotABuffer {
        /// The parameter.
        param: u32,
    },
    /// `Memory::Shared` names a shared array that does not exist.
    SharedOutOfRange {
        /// The index.
        shared: u32,
        /// Number of shared arrays.
        count: usize,
    },
    /// A Load or SelectRank of a write-only buffer.
    ReadFromWriteOnly {
        /// The parameter.
        param: u32,
    },
    /// A Store to a read-only buffer.
    WriteToReadOnly {
        /// The parameter.
        param: u32,
    },
    /// A stored value whose element type is not the memory's.
    StoreTypeMismatch {
        /// The value's type.
        ty: Type,
        /// The memory's element type.
        elem: ScalarType,
    },
    /// A Load of other than 1, 2, 4, 8 or 16 elements.
    BadLoadLanes {
        /// The lanes.
        lanes: u8,
    },
    /// A SelectRank of non-float memory.
    SelectRankNotFloat {
        /// The memory's element type.
        elem: ScalarType,
    },
    /// A constant index past the end of a shared array or local.
    ConstIndexOutOfBounds {
        /// The constant index.
        index: u32,
        /// Elements accessed from it.
        lanes: u32,
        /// The array's length.
        len: u32,
    },

    // 8. Locals.
    /// A local index that does not exist.
    LocalOutOfRange {
        /// The index.
        local: u32,
        /// Number of locals.
        count: usize,
    },
    /// A WriteLocal whose value is not a scalar of the local's element type.
    WriteLocalTypeMismatch {
        /// The value's type.
        ty: Type,
        /// The local's element type.
        elem: ScalarType,
    },
    /// A local of length 0.
    EmptyLocal {
        /// The local.
        local: u32,
    },

    // 9. Scalar parameters.
    /// `ScalarParam` names a buffer parameter.
    NotAScalarParam {
        /// The parameter.
        param: u32,
    },
    /// A scalar parameter of a type other than u32 and f32.
    BadScalarParamType {
        /// The parameter.
        param: u32,
        /// Its type.
        ty: ScalarType,
    },

    // 10. Synchronisation.
    /// A Barrier or warp collective inside an If.
    SyncInsideIf,
    /// A Loop holding a sync point whose start or end is not uniform.
    SyncLoopNotUniform {
        /// The bound that is not uniform.
        operand: Value,
    },
    /// An operand defined in another barrier region.
    CrossesBarrier {
        /// The operand.
        operand: Value,
        /// Its region (0 before the first barrier).
        defined_in: u32,
        /// The region of the use.
        used_in: u32,
    },

    // 11. Kernel shape.
    /// A Loop with step 0.
    LoopStepZero,
    /// `block_size` outside 1..=1024.
    BadBlockSize {
        /// The block size.
        block_size: u32,
    },
    /// A shared array of length 0.
    EmptyShared {
        /// The array.
        shared: u32,
    },
    /// Shared arrays larger than 163 KiB together (laid out).
    SharedMemoryTooLarge {
        /// Their bytes.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A name that is not a C identifier.
    InvalidName {
        /// Whose.
        item: Item,
        /// The name.
        name: String,
    },
    /// Two parameters, two shared arrays or two locals with one name.
    DuplicateName {
        /// The name.
        name: String,
        /// The item declared first.
        first: Item,
        /// The item declared later.
        second: Item,
    },

    // 12. Warp collectives.
    /// A kernel with a warp collective whose block size is not a multiple of 32.
    PartialWarp {
        /// The block size.
        block_size: u32,
    },
    /// A warp collective on a local of an element type it does not take.
    BadWarpLocal {
        /// The local.
        local: u32,
        /// Its element type.
        elem: ScalarType,
    },
    /// A shuffle between locals of different element types or lengths.
    WarpLocalsDiffer {
        /// The source.
        src: u32,
        /// The destination.
        dst: u32,
    },
    /// A xor shuffle with a mask of 32 or more.
    ShuffleMaskTooLarge {
        /// The mask.
        mask: u32,
    },
    /// A matrix multiply-accumulate fragment local of the wrong length.
    MmaFragmentLength {
        /// The local.
        local: u32,
        /// Its length.
        len: u32,
        /// The fragment's length.
        want: u32,
    },

    // 13. Alignment.
    /// An aligned access whose index is not a proven multiple of its lanes.
    UnalignedIndex {
        /// The index.
        index: Value,
        /// The lanes it must be a multiple of.
        lanes: u32,
    },

    // 14. Bit casts.
    /// A Bitcast between types it does not reinterpret.
    InvalidBitcast {
        /// The operand's type.
        from: Type,
        /// The target type.
        to: Type,
    },

    // 15. Clusters.
    /// `cluster_size` outside 1..=MAX_CLUSTER_SIZE.
    BadClusterSize {
        /// The cluster size.
        cluster_size: u32,
    },
    /// `min_blocks_per_sm` blocks of `block_size` threads cannot be resident on one SM.
    BadMinBlocks {
        /// The requested blocks.
        blocks: u32,
        /// Threads per block.
        block_size: u32,
    },
    /// A ClusterBarrier or LoadRemote in a kernel without clusters.
    ClusterOpWithoutCluster,
    /// A ClusterBarrier outside the top-level block.
    ClusterBarrierNotTopLevel,
    /// A LoadRemote with no ClusterBarrier after it.
    RemoteLoadNotFollowed,

    // 16. Sizes.
    /// A stated size refers to a parameter that is not a u32 scalar, or divides by zero.
    BadSize {
        /// The parameter whose length it is (`None`: the grid bound).
        param: Option<u32>,
    },
}

/// Checks `kernel` against every invariant of the module documentation; on success describes
/// it for backends, else reports every finding.
pub fn verify(kernel: &Kernel) -> Result<KernelInfo, VerifyError> {
    let names = Names::new(kernel);
    let len = kernel.insts.len();
    let facts = SyncFacts::of(kernel);
    let mut checker = Checker {
        kernel,
        facts: &facts,
        open_ifs: 0,
        names: &names,
        found: Vec::new(),
        pending_remote: None,
        state: vec![Def::NotYet; len],
        region_of: vec![0; len],
        region: 0,
        scopes: vec![Vec::new()],
    };
    let shared_bytes = checker.check_declarations();
    let reached = walk(kernel, &mut checker);
    if let Some(h) = checker.pending_remote {
        checker.push(Some(h), FindingKind::RemoteLoadNotFollowed);
    }
    for (h, _) in kernel.insts.iter() {
        if !reached.get(h.index()).copied().unwrap_or(false) {
            checker.push(Some(h), FindingKind::NotPlaced);
        }
    }
    let regions = checker.region.saturating_add(1);
    let found = checker.found;
    if found.is_empty() {
        return Ok(KernelInfo {
            types: kernel.insts.iter().map(|(_, i)| i.ty).collect(),
            shared_bytes: u32::try_from(shared_bytes).unwrap_or(u32::MAX),
            dynamic_shared_bytes: match shared_bytes > MAX_SHARED_BYTES {
                true => {
                    let (_, total) = super::kernel::shared_layout(&kernel.shared);
                    u32::try_from(total).unwrap_or(u32::MAX)
                }
                false => 0,
            },
            regions,
            sync: facts,
            _sealed: (),
        });
    }
    let errors = found
        .into_iter()
        .map(|(at, kind)| {
            let text = describe(kernel, &names, &kind);
            let message = match at {
                Some(h) => format!("{}: {text}", names.inst(kernel, h)),
                None => text,
            };
            VerifyFinding { at, kind, message }
        })
        .collect();
    Err(VerifyError {
        kernel: kernel.name.clone(),
        errors,
    })
}

/// Whether `name` is a C identifier.
fn is_c_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where a value stands in the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Def {
    /// Not reached yet.
    NotYet,
    /// Defined, in an enclosing block (or an enclosing Loop's value, inside its body).
    Live,
    /// Defined in a block that has closed.
    Dead,
}

/// Whether a memory access reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

struct Checker<'k> {
    kernel: &'k Kernel,
    facts: &'k SyncFacts,
    /// Number of If blocks enclosing the current position.
    open_ifs: u32,
    names: &'k Names,
    found: Vec<(Option<Value>, FindingKind)>,
    /// The last LoadRemote not yet followed by a ClusterBarrier.
    pending_remote: Option<Value>,
    /// By arena index.
    state: Vec<Def>,
    /// By arena index: the barrier region where the value was defined.
    region_of: Vec<u32>,
    /// The current barrier region (top-level barriers seen so far).
    region: u32,
    /// Values defined in each open block, innermost last.
    scopes: Vec<Vec<Value>>,
}

impl<'k> Visit<'k> for Checker<'k> {
    fn inst(&mut self, e: Entry<'k>) {
        let Some(inst) = e.inst else {
            let arena_len = self.kernel.insts.len();
            self.push(
                e.parent,
                FindingKind::EntryOutOfRange {
                    entry: e.handle,
                    arena_len,
                },
            );
            return;
        };
        if !e.first {
            self.push(Some(e.handle), FindingKind::PlacedMoreThanOnce);
            return;
        }
        self.check_inst(e.handle, inst, e.depth);
    }

    fn enter(&mut self, owner: Value, kind: BlockKind, _depth: usize) {
        let mut scope = Vec::new();
        if kind == BlockKind::LoopBody && self.facts.holds_sync(owner) {
            self.region = self.region.saturating_add(1);
        }
        if kind != BlockKind::LoopBody {
            self.open_ifs = self.open_ifs.saturating_add(1);
        }
        if kind == BlockKind::LoopBody {
            self.define(owner);
            scope.push(owner);
        }
        self.scopes.push(scope);
    }

    fn leave(&mut self, owner: Value, kind: BlockKind, _depth: usize) {
        if kind == BlockKind::LoopBody && self.facts.holds_sync(owner) {
            self.region = self.region.saturating_add(1);
        }
        if kind != BlockKind::LoopBody {
            self.open_ifs = self.open_ifs.saturating_sub(1);
        }
        if let Some(scope) = self.scopes.pop() {
            for v in scope {
                if let Some(s) = self.state.get_mut(v.index()) {
                    *s = Def::Dead;
                }
            }
        }
    }
}

impl<'k> Checker<'k> {
    fn push(&mut self, at: Option<Value>, kind: FindingKind) {
        self.found.push((at, kind));
    }

    fn define(&mut self, v: Value) {
        if let Some(s) = self.state.get_mut(v.index()) {
            *s = Def::Live;
        }
        if let Some(r) = self.region_of.get_mut(v.index()) {
            *r = self.region;
        }
    }

    /// The kernel's declarations (invariants 8, 9 and 11); returns the shared bytes.
    fn check_declarations(&mut self) -> u64 {
        let k = self.kernel;
        if !is_c_identifier(&k.name) {
            self.push(
                None,
                FindingKind::InvalidName {
                    item: Item::Kernel,
                    name: k.name.clone(),
                },
            );
        }
        if !(1..=MAX_BLOCK_SIZE).contains(&k.block_size) {
            self.push(
                None,
                FindingKind::BadBlockSize {
                    block_size: k.block_size,
                },
            );
        }
        if u64::from(k.min_blocks_per_sm) * u64::from(k.block_size) > u64::from(MAX_THREADS_PER_SM)
        {
            self.push(
                None,
                FindingKind::BadMinBlocks {
                    blocks: k.min_blocks_per_sm,
                    block_size: k.block_size,
                },
            );
        }
        let sizes = k
            .params
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Param::Buffer { len: Some(l), .. } => Some((Some(i as u32), l)),
                _ => None,
            })
            .chain(k.max_grid.as_ref().map(|l| (None, l)));
        for (param, len) in sizes {
            if !size_is_valid(len, &k.params) {
                self.push(None, FindingKind::BadSize { param });
            }
        }
        if !(1..=MAX_CLUSTER_SIZE).contains(&k.cluster_size) {
            self.push(
                None,
                FindingKind::BadClusterSize {
                    cluster_size: k.cluster_size,
                },
            );
        }
        let has_warp_op = k.insts.iter().any(|(_, i)| matches!(i.op, Op::Warp(_)));
        if has_warp_op && k.block_size % WARP_SIZE != 0 {
            self.push(
                None,
                FindingKind::PartialWarp {
                    block_size: k.block_size,
                },
            );
        }
        let mut declared: Vec<(Item, &str)> = Vec::new();
        for (i, p) in k.params.iter().enumerate() {
            declared.push((Item::Param(i as u32), p.name()));
            if let Param::Scalar { ty, .. } = p {
                if !matches!(ty, ScalarType::U32 | ScalarType::F32) {
                    self.push(
                        None,
                        FindingKind::BadScalarParamType {
                            param: i as u32,
                            ty: *ty,
                        },
                    );
                }
            }
        }
        for (i, s) in k.shared.iter().enumerate() {
            declared.push((Item::Shared(i as u32), &s.name));
            if s.len == 0 {
                self.push(None, FindingKind::EmptyShared { shared: i as u32 });
            }
        }
        let shared_bytes = k.shared_bytes();
        let (_, laid_out) = super::kernel::shared_layout(&k.shared);
        if shared_bytes > MAX_SHARED_BYTES && laid_out > MAX_DYNAMIC_SHARED_BYTES {
            self.push(
                None,
                FindingKind::SharedMemoryTooLarge {
                    bytes: laid_out,
                    limit: MAX_DYNAMIC_SHARED_BYTES,
                },
            );
        }
        for (i, l) in k.locals.iter().enumerate() {
            declared.push((Item::Local(i as u32), &l.name));
            if l.len == 0 {
                self.push(None, FindingKind::EmptyLocal { local: i as u32 });
            }
        }
        for (n, &(item, name)) in declared.iter().enumerate() {
            if !is_c_identifier(name) {
                self.push(
                    None,
                    FindingKind::InvalidName {
                        item,
                        name: name.to_string(),
                    },
                );
            }
            let same_kind =
                |a: Item, b: Item| std::mem::discriminant(&a) == std::mem::discriminant(&b);
            if let Some(&(first, _)) = declared
                .iter()
                .take(n)
                .find(|&&(other_item, other)| other == name && same_kind(other_item, item))
            {
                self.push(
                    None,
                    FindingKind::DuplicateName {
                        name: name.to_string(),
                        first,
                        second: item,
                    },
                );
            }
        }
        shared_bytes
    }

    /// Checks operand `v` of `at` (invariants 1, 3, 4, 10) and returns its type when usable.
    fn operand(&mut self, at: Value, v: Value) -> Option<Type> {
        let Some(inst) = self.kernel.insts.try_get(v) else {
            let arena_len = self.kernel.insts.len();
            self.push(
                Some(at),
                FindingKind::OperandOutOfRange {
                    operand: v,
                    arena_len,
                },
            );
            return None;
        };
        if !has_result(&inst.op) {
            self.push(Some(at), FindingKind::OperandWithoutResult { operand: v });
            return None;
        }
        let state = self.state.get(v.index()).copied().unwrap_or(Def::NotYet);
        let is_loop = matches!(inst.op, Op::Loop { .. });
        match state {
            Def::Live => {
                let defined_in = self.region_of.get(v.index()).copied().unwrap_or(0);
                if defined_in != self.region && !self.facts.is_uniform(v) {
                    self.push(
                        Some(at),
                        FindingKind::CrossesBarrier {
                            operand: v,
                            defined_in,
                            used_in: self.region,
                        },
                    );
                }
            }
            _ if is_loop => {
                self.push(Some(at), FindingKind::LoopValueOutsideBody { operand: v });
                return None;
            }
            Def::Dead => {
                self.push(Some(at), FindingKind::NotInScope { operand: v });
                return None;
            }
            Def::NotYet => {
                let kind = if self.names.reached(v) {
                    FindingKind::UseBeforeDef { operand: v }
                } else {
                    FindingKind::UseOfUnplaced { operand: v }
                };
                self.push(Some(at), kind);
                return None;
            }
        }
        if inst.ty.is_none() {
            self.push(Some(at), FindingKind::OperandWithoutResult { operand: v });
        }
        inst.ty
    }

    /// Checks that operand `v` (of type `ty`, when known) is in `class`; returns `ty` if so.
    fn want(&mut self, at: Value, v: Value, ty: Option<Type>, class: TypeClass) -> Option<Type> {
        let ty = ty?;
        if class.accepts(ty) {
            Some(ty)
        } else {
            self.push(
                Some(at),
                FindingKind::BadOperandType {
                    operand: v,
                    ty,
                    expected: class,
                },
            );
            None
        }
    }

    /// Checks operand `v` and that it is in `class`.
    fn operand_of(&mut self, at: Value, v: Value, class: TypeClass) -> Option<Type> {
        let ty = self.operand(at, v);
        self.want(at, v, ty, class)
    }

    /// Checks that two operands (already checked against their class) have one type.
    fn same(&mut self, at: Value, a: (Value, Option<Type>), b: (Value, Option<Type>)) {
        if let ((first, Some(first_ty)), (second, Some(second_ty))) = (a, b) {
            if first_ty != second_ty {
                self.push(
                    Some(at),
                    FindingKind::OperandsDiffer {
                        first,
                        first_ty,
                        second,
                        second_ty,
                    },
                );
            }
        }
    }

    /// Checks a memory reference (invariant 7); returns its element type and, for a shared
    /// array, its length.
    fn memory(&mut self, at: Value, mem: Memory, need: Need) -> Option<(ScalarType, Option<u32>)> {
        let k = self.kernel;
        match mem {
            Memory::Param(param) => match k.params.get(param as usize) {
                None => {
                    let count = k.params.len();
                    self.push(Some(at), FindingKind::ParamOutOfRange { param, count });
                    None
                }
                Some(Param::Scalar { .. }) => {
                    self.push(Some(at), FindingKind::NotABuffer { param });
                    None
                }
                Some(Param::Buffer { elem, access, .. }) => {
                    match (need, access) {
                        (Need::Read, Access::Write) => {
                            self.push(Some(at), FindingKind::ReadFromWriteOnly { param });
                        }
                        (Need::Write, Access::Read) => {
                            self.push(Some(at), FindingKind::WriteToReadOnly { param });
                        }
                        _ => {}
                    }
                    Some((*elem, None))
                }
            },
            Memory::Shared(shared) => match k.shared.get(shared as usize) {
                None => {
                    let count = k.shared.len();
                    self.push(Some(at), FindingKind::SharedOutOfRange { shared, count });
                    None
                }
                Some(s) => Some((s.elem, Some(s.len))),
            },
        }
    }

    /// Checks a local reference (invariant 8).
    fn local(&mut self, at: Value, local: u32) -> Option<&'k Local> {
        let k = self.kernel;
        match k.locals.get(local as usize) {
            Some(l) => Some(l),
            None => {
                let count = k.locals.len();
                self.push(Some(at), FindingKind::LocalOutOfRange { local, count });
                None
            }
        }
    }

    /// Checks a constant `index` accessing `lanes` elements of an array of `len`.
    fn const_bounds(&mut self, at: Value, index: Value, lanes: u32, len: Option<u32>) {
        let Some(len) = len else { return };
        if let Some(Inst {
            op: Op::Const(Const::U32(i)),
            ..
        }) = self.kernel.insts.try_get(index)
        {
            if u64::from(*i) + u64::from(lanes) > u64::from(len) {
                self.push(
                    Some(at),
                    FindingKind::ConstIndexOutOfBounds {
                        index: *i,
                        lanes,
                        len,
                    },
                );
            }
        }
    }

    /// A sync point must not be inside an If (invariant 10).
    fn sync_point(&mut self, h: Value) {
        if self.open_ifs > 0 {
            self.push(Some(h), FindingKind::SyncInsideIf);
        }
    }

    /// A cluster operation needs a kernel with clusters (invariant 15; a size of 0 is reported
    /// once, as a bad cluster size).
    fn cluster_op(&mut self, h: Value) {
        if self.kernel.cluster_size == 1 {
            self.push(Some(h), FindingKind::ClusterOpWithoutCluster);
        }
    }

    /// An aligned access's index must be a proven multiple of its lanes (invariant 13).
    fn aligned(&mut self, h: Value, index: Value, lanes: u32) {
        if !self.facts.is_multiple(index, lanes) {
            self.push(Some(h), FindingKind::UnalignedIndex { index, lanes });
        }
    }

    /// The locals of a warp collective (invariant 12).
    fn warp(&mut self, h: Value, w: WarpOp) {
        use ScalarType as S;
        let elem_of = |this: &mut Self, local: u32, ok: &[ScalarType]| {
            let l = this.local(h, local)?;
            if !ok.contains(&l.elem) {
                let elem = l.elem;
                this.push(Some(h), FindingKind::BadWarpLocal { local, elem });
            }
            Some((l.elem, l.len))
        };
        let shuffle = [S::U8, S::U32, S::F32];
        match w {
            WarpOp::ShuffleXor { src, dst, mask } => {
                let a = elem_of(self, src, &shuffle);
                let b = elem_of(self, dst, &shuffle);
                if let (Some(a), Some(b)) = (a, b) {
                    if a != b {
                        self.push(Some(h), FindingKind::WarpLocalsDiffer { src, dst });
                    }
                }
                if mask >= WARP_SIZE {
                    self.push(Some(h), FindingKind::ShuffleMaskTooLarge { mask });
                }
            }
            WarpOp::ShuffleIdx { src, dst, lane } => {
                let a = elem_of(self, src, &shuffle);
                let b = elem_of(self, dst, &shuffle);
                if let (Some(a), Some(b)) = (a, b) {
                    if a != b {
                        self.push(Some(h), FindingKind::WarpLocalsDiffer { src, dst });
                    }
                }
                elem_of(self, lane, &[S::U32]);
            }
            WarpOp::Reduce { local, .. } => {
                elem_of(self, local, &[S::U32, S::F32]);
            }
            WarpOp::Mma { a, b, acc } => {
                for (local, elem, want) in [
                    (a, S::F16, MMA_A_LEN),
                    (b, S::F16, MMA_B_LEN),
                    (acc, S::F32, MMA_ACC_LEN),
                ] {
                    if let Some((_, len)) = elem_of(self, local, &[elem]) {
                        if len != want {
                            self.push(Some(h), FindingKind::MmaFragmentLength { local, len, want });
                        }
                    }
                }
            }
        }
    }

    /// Checks one instruction, reached for the first time at `depth`, and defines its value.
    fn check_inst(&mut self, h: Value, inst: &Inst, depth: usize) {
        use TypeClass as C;
        let k = self.kernel;
        let scalar = |s| Some(Some(Type::Scalar(s)));
        // `None`: what the operation produces cannot be told (a broken operand or reference).
        let expected: Option<Option<Type>> = match &inst.op {
            Op::Const(c) => scalar(c.ty()),
            Op::ScalarParam(param) => match k.params.get(*param as usize) {
                None => {
                    let count = k.params.len();
                    self.push(
                        Some(h),
                        FindingKind::ParamOutOfRange {
                            param: *param,
                            count,
                        },
                    );
                    None
                }
                Some(Param::Buffer { .. }) => {
                    self.push(Some(h), FindingKind::NotAScalarParam { param: *param });
                    None
                }
                Some(Param::Scalar { ty, .. }) => scalar(*ty),
            },
            Op::Special(_) => scalar(ScalarType::U32),
            Op::Unary(op, a) => {
                let class = match op {
                    UnaryOp::Neg
                    | UnaryOp::RoundEven
                    | UnaryOp::Floor
                    | UnaryOp::IsFinite
                    | UnaryOp::Exp => C::Float,
                    UnaryOp::Not => C::BoolOrInt,
                    UnaryOp::PopCount => C::Int,
                };
                let ta = self.operand_of(h, *a, class);
                match op {
                    UnaryOp::IsFinite => scalar(ScalarType::Bool),
                    _ => ta.map(Some),
                }
            }
            Op::Binary(op, a, b) => {
                let class = match op {
                    BinaryOp::Add
                    | BinaryOp::Sub
                    | BinaryOp::Mul
                    | BinaryOp::Div
                    | BinaryOp::Min
                    | BinaryOp::Max => C::Numeric,
                    BinaryOp::Rem | BinaryOp::Shl | BinaryOp::Shr => C::Int,
                    BinaryOp::Minimum | BinaryOp::Maximum => C::Float,
                    BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => C::BoolOrInt,
                };
                let ta = self.operand_of(h, *a, class);
                let tb = self.operand_of(h, *b, class);
                self.same(h, (*a, ta), (*b, tb));
                ta.map(Some)
            }
            Op::Cmp(op, a, b) => {
                let class = match op {
                    CmpOp::Eq | CmpOp::Ne => C::Scalar,
                    CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => C::Numeric,
                };
                let ta = self.operand_of(h, *a, class);
                let tb = self.operand_of(h, *b, class);
                self.same(h, (*a, ta), (*b, tb));
                scalar(ScalarType::Bool)
            }
            Op::Select {
                cond,
                if_true,
                if_false,
            } => {
                self.operand_of(h, *cond, C::Bool);
                let tt = self.operand_of(h, *if_true, C::Scalar);
                let tf = self.operand_of(h, *if_false, C::Scalar);
                self.same(h, (*if_true, tt), (*if_false, tf));
                tt.map(Some)
            }
            Op::Bitcast(to, a) => {
                if let Some(from) = self.operand(h, *a) {
                    if !bitcast_ok(from, *to) {
                        self.push(Some(h), FindingKind::InvalidBitcast { from, to: *to });
                    }
                }
                Some(Some(*to))
            }
            Op::Convert(to, a) => {
                if let Some(from) = self.operand(h, *a) {
                    let ok = match from {
                        Type::Scalar(s) => {
                            let numeric = |t: ScalarType| t.is_int() || t.is_float();
                            (numeric(s) && numeric(*to)) || (s == ScalarType::Bool && to.is_int())
                        }
                        Type::Vector(..) => false,
                    };
                    if !ok {
                        self.push(Some(h), FindingKind::InvalidConversion { from, to: *to });
                    }
                }
                scalar(*to)
            }
            Op::Load {
                mem,
                index,
                lanes,
                aligned,
            } => {
                self.operand_of(h, *index, C::U32);
                if *aligned {
                    self.aligned(h, *index, u32::from(*lanes));
                }
                let memory = self.memory(h, *mem, Need::Read);
                if !matches!(lanes, 1 | 2 | 4 | 8 | 16) {
                    self.push(Some(h), FindingKind::BadLoadLanes { lanes: *lanes });
                }
                if let Some((_, len)) = memory {
                    self.const_bounds(h, *index, u32::from(*lanes), len);
                }
                memory.map(|(elem, _)| {
                    Some(if *lanes == 1 {
                        Type::Scalar(elem)
                    } else {
                        Type::Vector(elem, *lanes)
                    })
                })
            }
            Op::Store {
                mem,
                index,
                value,
                aligned,
            } => {
                self.operand_of(h, *index, C::U32);
                let tv = self.operand(h, *value);
                if let (true, Some(ty)) = (*aligned, tv) {
                    let lanes = match ty {
                        Type::Scalar(_) => 1,
                        Type::Vector(_, n) => u32::from(n),
                    };
                    self.aligned(h, *index, lanes);
                }
                let memory = self.memory(h, *mem, Need::Write);
                if let (Some(ty), Some((elem, len))) = (tv, memory) {
                    if ty.elem() != elem {
                        self.push(Some(h), FindingKind::StoreTypeMismatch { ty, elem });
                    }
                    let lanes = match ty {
                        Type::Scalar(_) => 1,
                        Type::Vector(_, n) => u32::from(n),
                    };
                    self.const_bounds(h, *index, lanes, len);
                }
                Some(None)
            }
            Op::Extract(a, lane) => {
                let ta = self.operand_of(h, *a, C::Vector);
                if let Some(Type::Vector(elem, lanes)) = ta {
                    if *lane >= lanes {
                        self.push(
                            Some(h),
                            FindingKind::ExtractLaneOutOfRange { lane: *lane, lanes },
                        );
                    }
                    scalar(elem)
                } else {
                    None
                }
            }
            Op::Vector(values) => {
                let len = values.len();
                if !(2..=16).contains(&len) {
                    self.push(Some(h), FindingKind::BadVectorLength { len });
                }
                let mut first: Option<(Value, Option<Type>)> = None;
                let mut all_known = true;
                for &v in values {
                    let t = self.operand_of(h, v, C::Scalar);
                    all_known &= t.is_some();
                    match first {
                        None => first = Some((v, t)),
                        Some(f) => self.same(h, f, (v, t)),
                    }
                }
                match first {
                    Some((_, Some(t))) if all_known && (2..=16).contains(&len) => {
                        Some(Some(Type::Vector(t.elem(), len as u8)))
                    }
                    _ => None,
                }
            }
            Op::ReadLocal { local, index } => {
                self.operand_of(h, *index, C::U32);
                let local = self.local(h, *local).map(|l| (l.elem, l.len));
                if let Some((_, len)) = local {
                    self.const_bounds(h, *index, 1, Some(len));
                }
                local.map(|(elem, _)| Some(Type::Scalar(elem)))
            }
            Op::WriteLocal {
                local,
                index,
                value,
            } => {
                self.operand_of(h, *index, C::U32);
                let tv = self.operand(h, *value);
                let local = self.local(h, *local).map(|l| (l.elem, l.len));
                if let Some((elem, len)) = local {
                    if let Some(ty) = tv {
                        if ty != Type::Scalar(elem) {
                            self.push(Some(h), FindingKind::WriteLocalTypeMismatch { ty, elem });
                        }
                    }
                    self.const_bounds(h, *index, 1, Some(len));
                }
                Some(None)
            }
            Op::PackBits { codes, bits, .. } => {
                let expected = (8 / bits.width()) as usize;
                if codes.len() != expected {
                    self.push(
                        Some(h),
                        FindingKind::PackBitsCount {
                            count: codes.len(),
                            expected,
                        },
                    );
                }
                for &c in codes {
                    self.operand_of(h, c, C::U8);
                }
                scalar(ScalarType::U8)
            }
            Op::UnpackBits {
                byte, lane, bits, ..
            } => {
                self.operand_of(h, *byte, C::U8);
                let codes = (8 / bits.width()) as u8;
                if *lane >= codes {
                    self.push(
                        Some(h),
                        FindingKind::UnpackLaneOutOfRange { lane: *lane, codes },
                    );
                }
                scalar(ScalarType::U8)
            }
            Op::SelectRank {
                mem,
                base,
                stride,
                count,
                rank,
            } => {
                for v in [base, stride, count, rank] {
                    self.operand_of(h, *v, C::U32);
                }
                if let Some((elem, _)) = self.memory(h, *mem, Need::Read) {
                    if !elem.is_float() {
                        self.push(Some(h), FindingKind::SelectRankNotFloat { elem });
                    }
                }
                scalar(ScalarType::F32)
            }
            Op::Loop {
                start, end, step, ..
            } => {
                self.operand_of(h, *start, C::U32);
                self.operand_of(h, *end, C::U32);
                if self.facts.holds_sync(h) {
                    for bound in [*start, *end] {
                        if !self.facts.is_uniform(bound) {
                            let operand = bound;
                            self.push(Some(h), FindingKind::SyncLoopNotUniform { operand });
                        }
                    }
                }
                if *step == 0 {
                    self.push(Some(h), FindingKind::LoopStepZero);
                }
                scalar(ScalarType::U32)
            }
            Op::If { cond, .. } => {
                self.operand_of(h, *cond, C::Bool);
                Some(None)
            }
            Op::Barrier => {
                self.sync_point(h);
                Some(None)
            }
            Op::Warp(w) => {
                self.sync_point(h);
                self.warp(h, *w);
                Some(None)
            }
            Op::ClusterBarrier => {
                self.sync_point(h);
                self.cluster_op(h);
                // The top-level block's instructions are at depth 1.
                if depth > 1 {
                    self.push(Some(h), FindingKind::ClusterBarrierNotTopLevel);
                }
                self.pending_remote = None;
                Some(None)
            }
            Op::LoadRemote {
                shared,
                rank,
                index,
            } => {
                self.cluster_op(h);
                self.pending_remote = Some(h);
                self.operand_of(h, *rank, C::U32);
                self.operand_of(h, *index, C::U32);
                let memory = self.memory(h, Memory::Shared(*shared), Need::Read);
                if let Some((_, len)) = memory {
                    self.const_bounds(h, *index, 1, len);
                }
                memory.map(|(elem, _)| Some(Type::Scalar(elem)))
            }
        };
        if let Some(expected) = expected {
            if inst.ty != expected {
                self.push(
                    Some(h),
                    FindingKind::WrongResultType {
                        recorded: inst.ty,
                        expected,
                    },
                );
            }
        }
        let _ = depth;
        match inst.op {
            Op::Barrier | Op::Warp(_) | Op::ClusterBarrier => {
                self.region = self.region.saturating_add(1)
            }
            // A Loop's value is defined when its body is entered.
            Op::Loop { .. } => {}
            ref op if has_result(op) => {
                self.define(h);
                if let Some(scope) = self.scopes.last_mut() {
                    scope.push(h);
                }
            }
            _ => {}
        }
    }
}

fn item_text(kernel: &Kernel, item: Item) -> String {
    match item {
        Item::Kernel => "the kernel".to_string(),
        Item::Param(i) => format!("parameter {i} (`{}`)", param_name(kernel, i)),
        Item::Shared(i) => format!(
            "shared array {i} (`{}`)",
            kernel
                .shared
                .get(i as usize)
                .map_or("?", |s| s.name.as_str())
        ),
        Item::Local(i) => format!("local {i} (`{}`)", local_name(kernel, i)),
    }
}

/// `parameter 2`, without the name.
fn item_label(item: Item) -> String {
    match item {
        Item::Kernel => "the kernel".to_string(),
        Item::Param(i) => format!("parameter {i}"),
        Item::Shared(i) => format!("shared array {i}"),
        Item::Local(i) => format!("local {i}"),
    }
}

fn opt_type_text(ty: Option<Type>) -> String {
    match ty {
        Some(t) => format!("type {}", type_text(t)),
        None => "no type".to_string(),
    }
}

/// The text of a finding, without its location prefix.
fn describe(kernel: &Kernel, names: &Names, kind: &FindingKind) -> String {
    use FindingKind as F;
    let v = |x: &Value| names.inst(kernel, *x);
    let param = |i: &u32| item_text(kernel, Item::Param(*i));
    match kind {
        F::EntryOutOfRange { entry, arena_len } => format!(
            "block entry {} is out of range of the arena ({arena_len} instructions)",
            v(entry)
        ),
        F::OperandOutOfRange { operand, arena_len } => format!(
            "operand {} is out of range of the arena ({arena_len} instructions)",
            v(operand)
        ),
        F::PlacedMoreThanOnce => "instruction is placed in more than one block position".into(),
        F::NotPlaced => "instruction is in the arena but in no block of the program".into(),
        F::UseBeforeDef { operand } => {
            format!("operand {} is used before it is defined", v(operand))
        }
        F::NotInScope { operand } => format!(
            "operand {} is defined in a block that does not enclose this use",
            v(operand)
        ),
        F::UseOfUnplaced { operand } => format!(
            "operand {} is not placed in any block of the program",
            v(operand)
        ),
        F::LoopValueOutsideBody { operand } => format!(
            "operand {} is a loop's induction variable, used outside the loop's body",
            v(operand)
        ),
        F::OperandWithoutResult { operand } => {
            format!("operand {} has no result type", v(operand))
        }
        F::WrongResultType { recorded, expected } => format!(
            "recorded {} but the operation produces {}",
            opt_type_text(*recorded),
            match expected {
                Some(t) => type_text(*t),
                None => "no result".to_string(),
            }
        ),
        F::BadOperandType {
            operand,
            ty,
            expected,
        } => format!(
            "operand {} has type {} but must be {expected}",
            v(operand),
            type_text(*ty)
        ),
        F::OperandsDiffer {
            first,
            first_ty,
            second,
            second_ty,
        } => format!(
            "operands {} ({}) and {} ({}) must have the same type",
            v(first),
            type_text(*first_ty),
            v(second),
            type_text(*second_ty)
        ),
        F::InvalidConversion { from, to } => {
            format!("cannot convert {} to {}", type_text(*from), to.name())
        }
        F::ExtractLaneOutOfRange { lane, lanes } => {
            format!("lane {lane} is out of range of a vector of {lanes} lanes")
        }
        F::BadVectorLength { len } => {
            format!("a vector has 2 to 16 elements, not {len}")
        }
        F::PackBitsCount { count, expected } => {
            format!("pack_bits takes exactly {expected} codes, not {count}")
        }
        F::UnpackLaneOutOfRange { lane, codes } => {
            format!("code {lane} is out of range: a byte holds {codes} codes")
        }
        F::ParamOutOfRange { param, count } => {
            format!("parameter {param} does not exist (the kernel has {count})")
        }
        F::NotABuffer { param: p } => format!("{} is not a buffer", param(p)),
        F::SharedOutOfRange { shared, count } => {
            format!("shared array {shared} does not exist (the kernel has {count})")
        }
        F::ReadFromWriteOnly { param: p } => format!("{} is write-only but is read", param(p)),
        F::WriteToReadOnly { param: p } => format!("{} is read-only but is written", param(p)),
        F::StoreTypeMismatch { ty, elem } => format!(
            "stored value of type {} does not have the memory's element type {}",
            type_text(*ty),
            elem.name()
        ),
        F::BadLoadLanes { lanes } => {
            format!("a load moves 1, 2, 4, 8 or 16 elements, not {lanes}")
        }
        F::SelectRankNotFloat { elem } => {
            format!("select_rank needs float memory, not {}", elem.name())
        }
        F::ConstIndexOutOfBounds { index, lanes, len } => format!(
            "constant index {index} accesses elements {index}..{} of an array of {len}",
            u64::from(*index) + u64::from(*lanes)
        ),
        F::LocalOutOfRange { local, count } => {
            format!("local {local} does not exist (the kernel has {count})")
        }
        F::WriteLocalTypeMismatch { ty, elem } => format!(
            "written value of type {} is not the local's element type {}",
            type_text(*ty),
            elem.name()
        ),
        F::EmptyLocal { local } => {
            format!("{} has length 0", item_text(kernel, Item::Local(*local)))
        }
        F::NotAScalarParam { param: p } => format!("{} is not a scalar parameter", param(p)),
        F::BadScalarParamType { param: p, ty } => format!(
            "{} has type {}; scalar parameters are u32 or f32",
            param(p),
            ty.name()
        ),
        F::SyncInsideIf => {
            "barrier or warp collective inside an if: not every thread may reach it".into()
        }
        F::SyncLoopNotUniform { operand } => format!(
            "loop holds a barrier or warp collective but its bound {} is not uniform",
            v(operand)
        ),
        F::PartialWarp { block_size } => format!(
            "block_size {block_size} is not a multiple of {WARP_SIZE}, but the kernel has a warp collective"
        ),
        F::BadWarpLocal { local, elem } => format!(
            "{} of {} cannot take part in this warp collective",
            item_text(kernel, Item::Local(*local)),
            elem.name()
        ),
        F::WarpLocalsDiffer { src, dst } => format!(
            "shuffle from {} to {} of different element types or lengths",
            item_text(kernel, Item::Local(*src)),
            item_text(kernel, Item::Local(*dst))
        ),
        F::ShuffleMaskTooLarge { mask } => format!("shuffle mask {mask} is not below 32"),
        F::MmaFragmentLength { local, len, want } => format!(
            "{} has {len} elements, not the {want} of its matrix multiply-accumulate fragment",
            item_text(kernel, Item::Local(*local))
        ),
        F::UnalignedIndex { index, lanes } => format!(
            "aligned access at index {} that is not a proven multiple of {lanes}",
            v(index)
        ),
        F::BadClusterSize { cluster_size } => {
            format!("cluster_size {cluster_size} is not in 1..={MAX_CLUSTER_SIZE}")
        }
        F::BadMinBlocks { blocks, block_size } => format!(
            "min_blocks_per_sm {blocks} x block_size {block_size} is over the \
             {MAX_THREADS_PER_SM} threads of an SM"
        ),
        F::ClusterOpWithoutCluster => "cluster operation in a kernel without clusters".into(),
        F::ClusterBarrierNotTopLevel => "cluster barrier outside the top-level block".into(),
        F::BadSize { param } => format!(
            "the stated size of {} refers to a non-u32-scalar parameter or divides by zero",
            param.map_or_else(|| "the grid".to_string(), |p| param_name(kernel, p).into_owned())
        ),
        F::RemoteLoadNotFollowed => {
            "remote shared load with no cluster barrier after it".into()
        }
        F::InvalidBitcast { from, to } => format!(
            "cannot reinterpret {} as {}",
            type_text(*from),
            type_text(*to)
        ),
        F::CrossesBarrier {
            operand,
            defined_in,
            used_in,
        } => format!(
            "operand {} is defined in barrier region {defined_in} but used in region {used_in}",
            v(operand)
        ),
        F::LoopStepZero => "loop step is 0".into(),
        F::BadBlockSize { block_size } => {
            format!("block_size {block_size} is not in 1..={MAX_BLOCK_SIZE}")
        }
        F::EmptyShared { shared } => {
            format!("{} has length 0", item_text(kernel, Item::Shared(*shared)))
        }
        F::SharedMemoryTooLarge { bytes, limit } => {
            format!("shared arrays take {bytes} bytes, more than the {limit} allowed")
        }
        F::InvalidName { item, name } => {
            format!(
                "name {name:?} of {} is not a C identifier",
                item_label(*item)
            )
        }
        F::DuplicateName {
            name,
            first,
            second,
        } => format!(
            "name `{name}` of {} is already the name of {}",
            item_label(*second),
            item_label(*first)
        ),
    }
}

/// Whether a Bitcast from `from` to `to` is allowed (invariant 14).
fn bitcast_ok(from: Type, to: Type) -> bool {
    use ScalarType as S;
    let words = |t: Type| match t {
        Type::Scalar(S::U32) => Some(1),
        Type::Vector(S::U32, n @ (2 | 4)) => Some(u32::from(n)),
        _ => None,
    };
    let bytes = |t: Type| match t {
        Type::Vector(S::U8, n @ (4 | 8 | 16)) => Some(u32::from(n) / 4),
        _ => None,
    };
    let half = |t: Type| matches!(t, Type::Scalar(S::F16 | S::BF16));
    matches!(
        (from, to),
        (Type::Scalar(S::F32), Type::Scalar(S::U32)) | (Type::Scalar(S::U32), Type::Scalar(S::F32))
    ) || (half(from) && to == Type::Scalar(S::U16))
        || (from == Type::Scalar(S::U16) && half(to))
        || matches!((bytes(from), words(to)), (Some(a), Some(b)) if a == b)
        || matches!((words(from), bytes(to)), (Some(a), Some(b)) if a == b)
}
