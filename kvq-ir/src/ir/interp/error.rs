//! What a kernel run reports instead of panicking.

use thiserror::Error;

use super::{MAX_BLOCK_ELEMS, MAX_NESTING};
use crate::ir::kernel::{Access, Memory, ScalarType, Type, Value};
use crate::scheme::Bits;

/// Whether a parameter or argument is a buffer or a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A buffer.
    Buffer,
    /// A scalar.
    Scalar,
}

/// What a kernel run can report.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum InterpError {
    /// A buffer is shorter, or the grid larger, than the kernel's stated sizes allow.
    #[error(transparent)]
    Size(Box<crate::ir::SizeError>),
    /// The number of arguments is not the number of parameters.
    #[error("the kernel takes {expected} arguments, got {got}")]
    ArgCount {
        /// Parameters.
        expected: usize,
        /// Arguments.
        got: usize,
    },
    /// A buffer where a scalar is expected, or the reverse.
    #[error("argument {index} must be a {expected:?}, got a {got:?}")]
    ArgKind {
        /// ABI index.
        index: usize,
        /// The parameter's kind.
        expected: ParamKind,
        /// The argument's kind.
        got: ParamKind,
    },
    /// A buffer of another element type, or a scalar of another type.
    #[error("argument {index} must be of type {}, got {}", .expected.name(), .got.name())]
    ArgType {
        /// ABI index.
        index: usize,
        /// The parameter's (element) type.
        expected: ScalarType,
        /// The argument's (element) type.
        got: ScalarType,
    },
    /// A load, store or gather outside its memory.
    #[error(
        "{inst:?}: elements {index}..{index}+{lanes} of {mem:?} are out of bounds (length {len})"
    )]
    OutOfBounds {
        /// The instruction.
        inst: Value,
        /// The memory.
        mem: Memory,
        /// First element.
        index: u64,
        /// Number of elements.
        lanes: u32,
        /// The memory's length.
        len: usize,
    },
    /// A grid that is not made of whole clusters, or a cluster size outside 1..=8.
    #[error("a grid of {grid_size} blocks cannot run in clusters of {cluster_size}")]
    ClusterGrid {
        /// The kernel's cluster size.
        cluster_size: u32,
        /// The grid.
        grid_size: u32,
    },
    /// A remote shared load from a rank outside the cluster.
    #[error("{inst:?}: rank {rank} is outside a cluster of {cluster_size} blocks")]
    RemoteRank {
        /// The instruction.
        inst: Value,
        /// The rank.
        rank: u32,
        /// The cluster size.
        cluster_size: u32,
    },
    /// A local read or written outside its length.
    #[error("{inst:?}: element {index} of local {local} is out of bounds (length {len})")]
    LocalOutOfBounds {
        /// The instruction.
        inst: Value,
        /// The local.
        local: u32,
        /// The element index.
        index: u32,
        /// The local's length.
        len: u32,
    },
    /// A read of an unzeroed local's element that its thread has not written since the block
    /// started (generated code would read whatever the memory held).
    #[error("{inst:?}: element {index} of local {local} is read before it is written (the local is not zeroed)")]
    UnwrittenLocal {
        /// The reading instruction.
        inst: Value,
        /// The local.
        local: u32,
        /// The element.
        index: u32,
    },
    /// Integer division or remainder by zero.
    #[error("{inst:?}: integer division by zero")]
    DivisionByZero {
        /// The instruction.
        inst: Value,
    },
    /// A shift by the bit width or more.
    #[error("{inst:?}: shift by {shift} of a {width}-bit integer")]
    ShiftTooLarge {
        /// The instruction.
        inst: Value,
        /// The shift amount.
        shift: u32,
        /// The integer's width.
        width: u32,
    },
    /// A float converted to an integer type that cannot hold it after truncation, or NaN.
    #[error("{inst:?}: {value} does not convert to {}", .to.name())]
    ConvertOutOfRange {
        /// The instruction.
        inst: Value,
        /// The target type.
        to: ScalarType,
        /// The value converted (exact).
        value: f64,
    },
    /// `SelectRank` with `count == 0` or `rank >= count`.
    #[error("{inst:?}: rank {rank} of {count} elements")]
    BadRank {
        /// The instruction.
        inst: Value,
        /// The number of elements.
        count: u32,
        /// The rank asked for.
        rank: u32,
    },
    /// `PackBits` of a code that does not fit its width.
    #[error("{inst:?}: code {code} does not fit in {bits} bits")]
    CodeTooLarge {
        /// The instruction.
        inst: Value,
        /// The code.
        code: u8,
        /// The width.
        bits: Bits,
    },
    /// Shared arrays or locals too large for the interpreter.
    #[error(
        "{what} of one block hold {elems} elements, more than the interpreter's {MAX_BLOCK_ELEMS}"
    )]
    TooLarge {
        /// "shared arrays" or "locals".
        what: &'static str,
        /// How many elements they would hold.
        elems: u64,
    },
    /// An aligned access at an index that is not a multiple of its lanes.
    #[error("aligned access at {inst:?}: index {index} is not a multiple of {lanes}")]
    Misaligned {
        /// The Load or Store.
        inst: Value,
        /// The index.
        index: u32,
        /// Its lanes.
        lanes: u32,
    },
    /// A kernel that breaks the IR's rules.
    #[error("malformed kernel{}: {problem}", .inst.map_or(String::new(), |i| format!(" at {i:?}")))]
    Malformed {
        /// The instruction, when the problem is one.
        inst: Option<Value>,
        /// What is wrong.
        problem: Malformed,
    },
}

/// How a kernel breaks the IR's rules (what [`verify()`](crate::ir::verify()) rejects).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Malformed {
    /// A handle outside the instruction arena.
    #[error("no such instruction")]
    UnknownInst,
    /// An operand without a value here (a result-less instruction, or one not run yet or out
    /// of scope).
    #[error("operand {0:?} has no value here")]
    Undefined(Value),
    /// An operand of a type the operation does not take.
    #[error("operand {operand:?} of type {found:?} does not fit")]
    Operand {
        /// The operand.
        operand: Value,
        /// Its type.
        found: Type,
    },
    /// The declared result type is not the computed one.
    #[error("declared type {declared:?}, computed {computed:?}")]
    ResultType {
        /// `Inst::ty`.
        declared: Option<Type>,
        /// What the operation gives.
        computed: Option<Type>,
    },
    /// No parameter of this index.
    #[error("no parameter {0}")]
    UnknownParam(u32),
    /// Memory naming a scalar parameter.
    #[error("parameter {0} is not a buffer")]
    NotABuffer(u32),
    /// `ScalarParam` naming a buffer parameter.
    #[error("parameter {0} is not a scalar")]
    NotAScalar(u32),
    /// No shared array of this index.
    #[error("no shared array {0}")]
    UnknownShared(u32),
    /// No local of this index.
    #[error("no local {0}")]
    UnknownLocal(u32),
    /// A shared array, or `SelectRank` memory, of an element type it cannot have.
    #[error("memory of element type {} is not supported here", .0.name())]
    Elem(ScalarType),
    /// A load from a write-only or a store to a read-only buffer.
    #[error("parameter {param} does not allow this access ({access:?})")]
    Access {
        /// The parameter.
        param: u32,
        /// Its access.
        access: Access,
    },
    /// A load of a lane count other than 1, 2, 4, 8, 16.
    #[error("a load of {0} lanes")]
    Lanes(u8),
    /// A lane index past the end (`Extract`, `UnpackBits`).
    #[error("lane {lane} of {lanes}")]
    Lane {
        /// The lane.
        lane: u8,
        /// The number of lanes.
        lanes: u32,
    },
    /// A vector of fewer than 2 or more than 16 elements.
    #[error("a vector of {0} elements")]
    VectorLen(usize),
    /// `PackBits` with a code count other than `8 / bits`.
    #[error("{got} codes for a byte of {expected}")]
    CodeCount {
        /// `8 / bits`.
        expected: u32,
        /// `codes.len()`.
        got: usize,
    },
    /// A loop with step 0.
    #[error("a loop with step 0")]
    ZeroStep,
    /// A barrier or warp collective where threads run one by one: inside an if, or inside a
    /// loop that does not hold it as a block-uniform loop.
    #[error("a barrier or warp collective inside an if or a per-thread loop")]
    NestedBarrier,
    /// A warp collective in a block whose size is not a multiple of 32.
    #[error("a warp collective in a block of {0} threads, not a multiple of 32")]
    PartialWarp(u32),
    /// A warp collective on a local it cannot take (missing, of another type or length).
    #[error("warp collective on local {0}, which it cannot take")]
    WarpLocal(u32),
    /// A xor shuffle with a mask of 32 or more.
    #[error("shuffle mask {0} is not below 32")]
    ShuffleMask(u32),
    /// A block-uniform loop bound that is not uniform.
    #[error("the bound {0:?} of a block-uniform loop is not uniform")]
    NotUniform(Value),
    /// Loops and ifs nested deeper than [`MAX_NESTING`].
    #[error("nesting deeper than {MAX_NESTING}")]
    TooDeep,
}

impl From<crate::ir::SizeError> for InterpError {
    fn from(e: crate::ir::SizeError) -> Self {
        InterpError::Size(Box::new(e))
    }
}
