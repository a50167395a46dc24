//! The kernel data model. See the module documentation of [`crate::ir`] for the execution model.

use super::arena::{Arena, Handle};
use super::length::Len;
use crate::scheme::{BitOrder, Bits};

/// A scalar element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ScalarType {
    /// true / false.
    Bool,
    /// Unsigned 8-bit integer (codes, packed bytes).
    U8,
    /// Unsigned 16-bit integer (order keys of 16-bit floats, narrow counters); arithmetic wraps.
    U16,
    /// Unsigned 32-bit integer (indices, sizes, flags); arithmetic wraps.
    U32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
}

impl ScalarType {
    /// The low bits of the f32 total-order key of a value of this type (its bits widened to
    /// f32, then ordered) that every value leaves equal: 13 for F16 (a 10-bit significand in
    /// f32's 23), 16 for BF16 (7 in 23), 0 otherwise. Selections over the key skip them.
    pub fn constant_key_bits(self) -> u32 {
        match self {
            ScalarType::F16 => 13,
            ScalarType::BF16 => 16,
            _ => 0,
        }
    }

    /// True for F16, BF16, F32, F64.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            ScalarType::F16 | ScalarType::BF16 | ScalarType::F32 | ScalarType::F64
        )
    }

    /// True for U8, U16 and U32.
    pub fn is_int(self) -> bool {
        matches!(self, ScalarType::U8 | ScalarType::U16 | ScalarType::U32)
    }

    /// Size in bytes of one element in memory (Bool: 1).
    pub fn size(self) -> usize {
        match self {
            ScalarType::Bool | ScalarType::U8 => 1,
            ScalarType::U16 | ScalarType::F16 | ScalarType::BF16 => 2,
            ScalarType::U32 | ScalarType::F32 => 4,
            ScalarType::F64 => 8,
        }
    }

    /// The lowercase name used by the text form (`u32`, `f16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::Bool => "bool",
            ScalarType::U8 => "u8",
            ScalarType::U16 => "u16",
            ScalarType::U32 => "u32",
            ScalarType::F16 => "f16",
            ScalarType::BF16 => "bf16",
            ScalarType::F32 => "f32",
            ScalarType::F64 => "f64",
        }
    }
}

/// The type of a value: a scalar or a short vector of scalars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// One element.
    Scalar(ScalarType),
    /// `lanes` elements (2..=16), as produced by a vector load.
    Vector(ScalarType, u8),
}

impl Type {
    /// The element type.
    pub fn elem(self) -> ScalarType {
        match self {
            Type::Scalar(s) | Type::Vector(s, _) => s,
        }
    }
}

/// Who may access a buffer parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Access {
    /// Loads only.
    Read,
    /// Stores only.
    Write,
    /// Loads and stores.
    ReadWrite,
}

/// A kernel parameter, in ABI order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Param {
    /// A pointer to global memory holding elements of `elem`.
    Buffer {
        /// Name, for the text form and the manifest.
        name: String,
        /// Element type.
        elem: ScalarType,
        /// Allowed access.
        access: Access,
        /// Elements a launch must pass (`None`: not stated; only an unchecked launch runs the
        /// kernel). The kernel's accesses stay below it, which the interpreter enforces.
        len: Option<Len>,
    },
    /// A scalar passed by value.
    Scalar {
        /// Name.
        name: String,
        /// Its type (U32 or F32).
        ty: ScalarType,
    },
}

impl Param {
    /// The parameter's name.
    pub fn name(&self) -> &str {
        match self {
            Param::Buffer { name, .. } | Param::Scalar { name, .. } => name,
        }
    }
}

/// A block-shared array (GPU shared memory; one instance per block).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedArray {
    /// Name.
    pub name: String,
    /// Element type.
    pub elem: ScalarType,
    /// Number of elements.
    pub len: u32,
}

/// A per-thread variable: a scalar (`len` = 1) or a small array. Its value survives barriers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Local {
    /// Name.
    pub name: String,
    /// Element type.
    pub elem: ScalarType,
    /// Number of elements.
    pub len: u32,
    /// Zero when a block starts (true), or left as the memory holds it: the kernel writes each
    /// element before reading it (the interpreter fails a read of an element its thread has not
    /// written since the block started; generated code skips the fill).
    pub zeroed: bool,
}

/// Memory a load or store addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    /// The buffer parameter with this ABI index.
    Param(u32),
    /// The shared array with this index.
    Shared(u32),
}

/// A constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Const {
    /// A boolean.
    Bool(bool),
    /// A byte.
    U8(u8),
    /// A 16-bit unsigned integer.
    U16(u16),
    /// A 32-bit unsigned integer.
    U32(u32),
    /// An f32, by its bits.
    F32(u32),
    /// An f64, by its bits.
    F64(u64),
}

impl Const {
    /// The constant's type.
    pub fn ty(self) -> ScalarType {
        match self {
            Const::Bool(_) => ScalarType::Bool,
            Const::U8(_) => ScalarType::U8,
            Const::U16(_) => ScalarType::U16,
            Const::U32(_) => ScalarType::U32,
            Const::F32(_) => ScalarType::F32,
            Const::F64(_) => ScalarType::F64,
        }
    }
}

/// Execution coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Special {
    /// Index of the thread within its block, `0..block_size`.
    ThreadId,
    /// Index of the block within the grid, `0..grid_size`.
    BlockId,
    /// Number of blocks in the grid (chosen at launch).
    GridSize,
    /// Index of the thread within its warp: `thread_id % 32`.
    LaneId,
    /// Index of the thread's warp within its block: `thread_id / 32`.
    WarpId,
}

/// The number of threads in a warp.
pub const WARP_SIZE: u32 = 32;

/// The most blocks of a cluster: the portable cluster size of sm_90 (CUDA C++ Programming
/// Guide, "Thread Block Clusters").
pub const MAX_CLUSTER_SIZE: u32 = 8;

/// One-operand operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// Float negation (exact).
    Neg,
    /// Float round to nearest integer, ties to even.
    RoundEven,
    /// Float round toward negative infinity.
    Floor,
    /// Bool / integer bitwise not.
    Not,
    /// Float: true when neither NaN nor infinite.
    IsFinite,
    /// Float: `e^x`, **approximate** (relative error below 2^-20 on F32; backends may differ in
    /// the last bits, so it must not feed stored codes). Used by softmax.
    Exp,
    /// Integer: the number of bits set (same type as the operand).
    PopCount,
}

/// Two-operand operations on equal types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// Float: correctly rounded, never fused with another operation. Integer: wrapping.
    Add,
    /// As `Add`.
    Sub,
    /// As `Add`.
    Mul,
    /// Float: correctly rounded IEEE division (never a reciprocal). Integer: quotient; the
    /// divisor must not be zero.
    Div,
    /// Integer remainder; the divisor must not be zero.
    Rem,
    /// `if b < a { b } else { a }`.
    Min,
    /// `if b > a { b } else { a }`.
    Max,
    /// Float only: IEEE 754-2019 `minimum`: NaN when either operand is NaN, -0 below +0, else
    /// the smaller (one machine instruction on NVPTX, `min.NaN`; `Min` takes two there).
    Minimum,
    /// Float only: IEEE 754-2019 `maximum`: NaN when either operand is NaN, +0 above -0, else
    /// the larger.
    Maximum,
    /// Bool / integer bitwise and.
    And,
    /// Bool / integer bitwise or.
    Or,
    /// Integer shift left (shift amount below the bit width).
    Shl,
    /// Integer logical shift right (shift amount below the bit width).
    Shr,
    /// Bool / integer bitwise exclusive or.
    Xor,
}

/// A warp-wide reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// [`BinaryOp::Add`].
    Sum,
    /// [`BinaryOp::Min`].
    Min,
    /// [`BinaryOp::Max`].
    Max,
}

impl ReduceOp {
    /// The binary operation each step of the reduction applies.
    pub fn binary(self) -> BinaryOp {
        match self {
            ReduceOp::Sum => BinaryOp::Add,
            ReduceOp::Min => BinaryOp::Min,
            ReduceOp::Max => BinaryOp::Max,
        }
    }
}

/// The distances of the steps of a warp reduction, in order.
pub const REDUCE_STEPS: [u32; 5] = [16, 8, 4, 2, 1];

/// A collective operation of all 32 lanes of every warp of a block, on per-thread locals.
///
/// Like a barrier it is a synchronisation point: it is placed only where every thread of the
/// block reaches it (the top-level block or the body of a block-uniform loop), the block size
/// is a multiple of [`WARP_SIZE`], and its operands are locals, not values, so that no value
/// crosses it (a CPU backend runs the threads before it, then the collective, then the threads
/// after it). Shuffles' locals hold U8, U32 or F32 elements; `Reduce` takes U32 or F32. Every
/// element of the local takes part independently, except in `Mma`, whose locals are the lanes'
/// fragments of three matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarpOp {
    /// Lane `l` receives `src` of lane `l ^ mask` into `dst` (`mask < 32`).
    ShuffleXor {
        /// The local read.
        src: u32,
        /// The local written (same element type and length as `src`).
        dst: u32,
        /// The lane mask.
        mask: u32,
    },
    /// Lane `l` receives `src` of lane `lane[0] % 32` (its own U32 local `lane`) into `dst`.
    ShuffleIdx {
        /// The local read.
        src: u32,
        /// The local written (same element type and length as `src`).
        dst: u32,
        /// A U32 local holding, in element 0, the lane each thread reads from.
        lane: u32,
    },
    /// Every lane's `local` becomes the reduction of the 32 lanes' values, in a **fixed order**:
    /// for `s` in [`REDUCE_STEPS`] (16, 8, 4, 2, 1), every lane `l` takes
    /// `op(v[l & !s], v[l | s])` (the lower lane's value first). Every lane ends with the same
    /// bits, and every backend computes the same tree, so a float sum is reproducible.
    Reduce {
        /// The operation.
        op: ReduceOp,
        /// The local, read and written.
        local: u32,
    },
    /// The warp's matrix multiply-accumulate `D = A B + C` of shape m16n8k16 (PTX
    /// `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`): `A` is 16 x 16 and `B` 16 x 8 of
    /// F16, `C` and `D` 16 x 8 of F32, each spread over the 32 lanes in PTX's fragment layout
    /// ([`mma_a_at`], [`mma_b_at`], [`mma_acc_at`]). Each element of `D` is its `C` plus the 16
    /// products `A[r][k] B[k][c]` (exact in f32), added in increasing `k` with f32 rounding after
    /// each add in the interpreter and host code; tensor cores add in an order and with an
    /// internal precision of their own, so a GPU's result may differ in the last bits of each
    /// sum (like `Exp`, an approximate operation: kernels use it where a tolerance applies).
    Mma {
        /// F16 local of [`MMA_A_LEN`] elements: this lane's fragment of `A`.
        a: u32,
        /// F16 local of [`MMA_B_LEN`] elements: this lane's fragment of `B`.
        b: u32,
        /// F32 local of [`MMA_ACC_LEN`] elements: this lane's fragment of `C`, replaced by `D`'s.
        acc: u32,
    },
}

/// Elements of a lane's fragment of [`WarpOp::Mma`]'s `A`.
pub const MMA_A_LEN: u32 = 8;
/// Elements of a lane's fragment of [`WarpOp::Mma`]'s `B`.
pub const MMA_B_LEN: u32 = 4;
/// Elements of a lane's fragment of [`WarpOp::Mma`]'s `C` and `D`.
pub const MMA_ACC_LEN: u32 = 4;
/// [`WarpOp::Mma`]'s shape: `A` is `MMA_M x MMA_K`, `B` `MMA_K x MMA_N`, `C` `MMA_M x MMA_N`.
pub const MMA_M: u32 = 16;
/// See [`MMA_M`].
pub const MMA_N: u32 = 8;
/// See [`MMA_M`].
pub const MMA_K: u32 = 16;

/// `(row, column)` of `A` held by element `i` of lane `lane`'s fragment: with `g = lane / 4`,
/// `t = lane % 4`, row `g` (+ 8 for `i % 4 >= 2`), column `2t + i % 2` (+ 8 for `i >= 4`).
pub fn mma_a_at(lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = (lane / 4, lane % 4);
    let row = g + if i % 4 >= 2 { 8 } else { 0 };
    let col = 2 * t + i % 2 + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// `(row, column)` of `B` held by element `i` of lane `lane`'s fragment: row `2t + i % 2`
/// (+ 8 for `i >= 2`), column `g`.
pub fn mma_b_at(lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = (lane / 4, lane % 4);
    (2 * t + i % 2 + if i >= 2 { 8 } else { 0 }, g)
}

/// `(row, column)` of `C` and `D` held by element `i` of lane `lane`'s fragment: row `g`
/// (+ 8 for `i >= 2`), column `2t + i % 2`.
pub fn mma_acc_at(lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = (lane / 4, lane % 4);
    (g + if i >= 2 { 8 } else { 0 }, 2 * t + i % 2)
}

#[cfg(test)]
mod mma_tests {
    use super::*;

    /// Host code places element `i` of lane `l` at `(g, 2t)` (`(2t, g)` for `B`) plus lane 0's
    /// place of element `i`: the layouts must be that sum for every lane and element.
    #[test]
    fn fragment_layouts_are_lane_0_shifted_by_the_lane_group() {
        for lane in 0..WARP_SIZE {
            let (g, t2) = (lane / 4, 2 * (lane % 4));
            let shifted = |(r, c): (u32, u32), (dr, dc): (u32, u32)| (r + dr, c + dc);
            for i in 0..MMA_A_LEN {
                assert_eq!(mma_a_at(lane, i), shifted((g, t2), mma_a_at(0, i)));
            }
            for i in 0..MMA_B_LEN {
                assert_eq!(mma_b_at(lane, i), shifted((t2, g), mma_b_at(0, i)));
            }
            for i in 0..MMA_ACC_LEN {
                assert_eq!(mma_acc_at(lane, i), shifted((g, t2), mma_acc_at(0, i)));
            }
        }
    }
}

/// Comparisons, giving Bool. Floats compare as IEEE (ordered) values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// ==
    Eq,
    /// !=
    Ne,
    /// <
    Lt,
    /// <=
    Le,
    /// >
    Gt,
    /// >=
    Ge,
}

/// A sequence of instructions executed in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Block(pub Vec<Value>);

/// What an instruction does. Operand fields hold [`Value`]s defined earlier (see the verifier's
/// module documentation for the exact rules).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A constant.
    Const(Const),
    /// The value of the scalar parameter with this ABI index.
    ScalarParam(u32),
    /// An execution coordinate (U32).
    Special(Special),
    /// A one-operand operation.
    Unary(UnaryOp, Value),
    /// A two-operand operation.
    Binary(BinaryOp, Value, Value),
    /// A comparison (Bool).
    Cmp(CmpOp, Value, Value),
    /// `if cond { a } else { b }` on scalars of one type.
    Select {
        /// Bool condition.
        cond: Value,
        /// Value when true.
        if_true: Value,
        /// Value when false.
        if_false: Value,
    },
    /// Numeric conversion to a scalar type: float to float rounds to nearest even; integer to
    /// float rounds to nearest even; float to integer truncates toward zero (the operand must be
    /// in range); integer to integer zero-extends or truncates; Bool to integer gives 0 or 1.
    Convert(ScalarType, Value),
    /// Reinterprets bits as another type of the same size, little-endian: F32 to U32 and back
    /// (used to order floats by their bits), F16 or BF16 to U16 and back, and bytes to words:
    /// `u8x4` <-> `u32`, `u8x8` <-> `u32x2`, `u8x16` <-> `u32x4` (byte `i` is bits
    /// `8 * (i % 4)..` of word `i / 4`).
    Bitcast(Type, Value),
    /// Loads `lanes` consecutive elements starting at element `index` (a vector when lanes > 1).
    Load {
        /// Where.
        mem: Memory,
        /// Element index (U32).
        index: Value,
        /// 1, 2, 4, 8 or 16.
        lanes: u8,
        /// An aligned access: the verifier proves `index` a multiple of `lanes`, and buffer
        /// bases are 16-byte aligned (the runtime's contract), so backends emit one access of
        /// `min(lanes * size, 16)`-byte alignment (`ld.global.nc.v4.u32` on NVPTX).
        aligned: bool,
    },
    /// Stores a scalar or a vector at element `index` (no result).
    Store {
        /// Where.
        mem: Memory,
        /// Element index (U32).
        index: Value,
        /// What; its element type is the memory's.
        value: Value,
        /// As for [`Op::Load`]: the index is a proven multiple of the value's lanes.
        aligned: bool,
    },
    /// Lane `lane` of a vector.
    Extract(Value, u8),
    /// The vector of these scalars of one type (2..=16 of them).
    Vector(Vec<Value>),
    /// Element `index` (U32) of a local.
    ReadLocal {
        /// The local.
        local: u32,
        /// Element index.
        index: Value,
    },
    /// Writes element `index` of a local (no result).
    WriteLocal {
        /// The local.
        local: u32,
        /// Element index.
        index: Value,
        /// The value; its type is the local's element type.
        value: Value,
    },
    /// Packs `codes.len() == 8 / bits` U8 codes (each `<= 2^bits - 1`) into one byte in `order`
    /// (SPEC.md section 3).
    PackBits {
        /// The codes, element 0 first.
        codes: Vec<Value>,
        /// Code width.
        bits: Bits,
        /// Bit order.
        order: BitOrder,
    },
    /// Code number `lane` of a packed byte (U8).
    UnpackBits {
        /// The byte (U8).
        byte: Value,
        /// Which code, `< 8 / bits`.
        lane: u8,
        /// Code width.
        bits: Bits,
        /// Bit order.
        order: BitOrder,
    },
    /// The exact `rank`-th smallest (0-based) of `count` elements `mem[base + i * stride]`,
    /// converted to f32, in the total order of f32 (-0 before +0): an F32.
    SelectRank {
        /// Where (a float buffer).
        mem: Memory,
        /// First element index (U32).
        base: Value,
        /// Distance between elements (U32).
        stride: Value,
        /// Number of elements (U32, > 0).
        count: Value,
        /// Rank (U32, < count).
        rank: Value,
    },
    /// `for i in (start..end).step_by(step) { body }`; the instruction's own value is `i` (U32),
    /// usable only inside `body` (no result outside).
    Loop {
        /// First value (U32).
        start: Value,
        /// Exclusive bound (U32).
        end: Value,
        /// Increment, > 0.
        step: u32,
        /// The loop body.
        body: Block,
    },
    /// Runs `then` when `cond` holds, else `otherwise` (no result).
    If {
        /// Bool condition.
        cond: Value,
        /// Taken branch.
        then: Block,
        /// Other branch.
        otherwise: Block,
    },
    /// Waits until every thread of the block reaches it; orders shared-memory accesses.
    Barrier,
    /// A warp collective on locals (no result); a synchronisation point like a barrier.
    Warp(WarpOp),
    /// Waits until every thread of every block of the block's cluster reaches it (a barrier
    /// over the cluster, [`Kernel::cluster_size`] > 1); orders shared-memory accesses across the
    /// cluster: a block's stores before it are seen by the [`Op::LoadRemote`]s after it. Placed
    /// only in the top-level block.
    ClusterBarrier,
    /// Element `index` (U32) of shared array `shared` of the block of rank `rank` (U32, below
    /// [`Kernel::cluster_size`]) in this block's cluster: distributed shared memory. A scalar of
    /// the array's element type.
    LoadRemote {
        /// The shared array.
        shared: u32,
        /// Rank of the block within the cluster (`block_id % cluster_size` of that block).
        rank: Value,
        /// Element index.
        index: Value,
    },
}

/// An instruction: an operation and the type of its result (`None` when it has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Inst {
    /// The operation.
    pub op: Op,
    /// The result type.
    pub ty: Option<Type>,
}

/// Where the shared arrays of a kernel lie in one block's shared memory, when a backend places
/// them in one allocation: each at a multiple of 16 bytes, in declaration order. Returns the
/// byte offsets and the total.
pub fn shared_layout(shared: &[SharedArray]) -> (Vec<u64>, u64) {
    let mut offsets = Vec::with_capacity(shared.len());
    let mut end: u64 = 0;
    for s in shared {
        let start = end.saturating_add(15) / 16 * 16;
        offsets.push(start);
        end = start.saturating_add(u64::from(s.len).saturating_mul(s.elem.size() as u64));
    }
    (offsets, end)
}

/// A value: the handle of the instruction that defines it.
pub type Value = Handle<Inst>;

/// A kernel: parameters, memory, and a structured body, run by `grid_size` blocks of
/// `block_size` threads.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// Entry-point name (a C identifier).
    pub name: String,
    /// Threads per block, fixed at compile time.
    pub block_size: u32,
    /// Blocks per cluster (1: none; at most [`MAX_CLUSTER_SIZE`]). Blocks `c * n .. (c + 1) * n`
    /// form cluster `c`: they run at the same time and share [`Op::ClusterBarrier`]s and each
    /// other's shared memory ([`Op::LoadRemote`]). The grid is a multiple of it.
    pub cluster_size: u32,
    /// Blocks that should be resident on one SM at once (0: no request). On a GPU the code
    /// generator declares it (`.minnctapersm`), so that ptxas keeps each thread's registers
    /// within that share of the register file instead of its own budget.
    pub min_blocks_per_sm: u32,
    /// Parameters in ABI order.
    pub params: Vec<Param>,
    /// The most blocks a launch may have, over the scalar parameters (or the batch plan);
    /// `None`: not stated (only an unchecked launch runs the kernel).
    pub max_grid: Option<Len>,
    /// Block-shared arrays, indexed by [`Memory::Shared`].
    pub shared: Vec<SharedArray>,
    /// Per-thread variables, indexed by `local` of [`Op::ReadLocal`] / [`Op::WriteLocal`].
    pub locals: Vec<Local>,
    /// Every instruction; each is placed in exactly one block.
    pub insts: Arena<Inst>,
    /// The top-level block. Barriers and warp collectives appear only here or in the bodies
    /// of block-uniform loops.
    pub body: Block,
}

impl Kernel {
    /// The bytes of its shared arrays, summed without padding (the measure of the static
    /// shared-memory limit; [`shared_layout`] places them).
    pub fn shared_bytes(&self) -> u64 {
        self.shared.iter().fold(0u64, |total, s| {
            total.saturating_add(u64::from(s.len).saturating_mul(s.elem.size() as u64))
        })
    }
}
