//! The interpreter: runs a kernel on the CPU, slowly and obviously correctly. It is the oracle
//! that the compiled backends are checked against, so every rule below is the plain Rust
//! expression it names.
//!
//! # Execution
//! [`run`] executes blocks `0..grid_size` one after the other. For each block, every shared array
//! and every thread's copy of every local starts at zero; the top-level body is split at its
//! sync points (barriers, warp collectives, and loops holding them: see [`crate::ir::sync`])
//! into regions, and each region runs for thread 0, then thread 1, ..., then `block_size - 1`
//! before the next sync point. A barrier then does nothing more; a warp collective runs for every
//! warp on the threads' locals (`WarpOp`'s definitions, the reduction in its fixed tree order);
//! a loop holding a sync point runs once for the block, its bounds being uniform values, and its
//! body is split the same way. Since a barrier orders all shared-memory accesses of a block,
//! this gives the GPU's results for every kernel without data races (for a racy kernel it gives
//! one of the possible results). Values live for one thread's run of one region, and for one
//! iteration of a loop body or one run of an `If` branch, except uniform values, which every
//! thread computes alike and which stay visible to the later regions of their scope: using a
//! value outside its scope is reported as [`Malformed::Undefined`].
//!
//! # Semantics
//! - Floats: `Add`, `Sub`, `Mul`, `Div` are Rust's `+ - * /` on f32 and f64 (correctly rounded,
//!   never fused); on F16 and BF16 they are computed in f32 and rounded back to nearest even,
//!   which is the correctly rounded result (f32 has more than twice their precision).
//!   `Min(a, b)` is `if b < a { b } else { a }`, `Max(a, b)` is `if b > a { b } else { a }`, for
//!   integers too. `Neg` flips the sign, `RoundEven` is `round_ties_even`, `Floor` is `floor`,
//!   `Exp` is `exp`,
//!   `IsFinite` is `is_finite`. Comparisons are IEEE: NaN is unordered, so only `Ne` holds for it.
//! - Integers (U8, U32) wrap on `Add`, `Sub`, `Mul`; `Div` and `Rem` by zero are
//!   [`InterpError::DivisionByZero`]; `Shl` and `Shr` by the bit width or more are
//!   [`InterpError::ShiftTooLarge`]. `Not` is `!` on Bool and integers; `And`, `Or` are `&`, `|`.
//! - `Convert`: float to float rounds to nearest even (one rounding from the exact value, also
//!   f64 to f16 and bf16); integer to float rounds to nearest even; float to integer truncates
//!   toward zero and must then fit ([`InterpError::ConvertOutOfRange`] otherwise, NaN included);
//!   integer to integer zero-extends or truncates; Bool to integer gives 0 or 1. Anything to
//!   Bool, except Bool itself, and Bool to float are malformed. `Bitcast` reinterprets the
//!   little-endian bytes (`f32::to_bits`, `u32::from_le_bytes`). `PopCount` is `count_ones`,
//!   `Xor` is `^`; `LaneId` and `WarpId` are `thread_id % 32` and `thread_id / 32`.
//! - `Load` of `lanes` elements reads `index..index + lanes`, all in bounds, as a vector when
//!   `lanes > 1`; `Store` writes a scalar or a vector of the memory's element type. A buffer
//!   parameter must allow the access (its [`Access`](crate::ir::Access)). A Bool shared array
//!   holds bytes 0 and 1, as generated code stores it. An aligned access at an index that is not
//!   a multiple of its lanes is [`InterpError::Misaligned`]. Out-of-bounds
//!   accesses are [`InterpError::OutOfBounds`] (locals: [`InterpError::LocalOutOfBounds`]).
//! - `PackBits`: the byte is the OR of `code_j << shift_j`, `shift_j = 8 - (j + 1) * b` for
//!   `msb`, `j * b` for `lsb` (SPEC.md section 3); a code above `2^b - 1` is
//!   [`InterpError::CodeTooLarge`]. `UnpackBits` is `(byte >> shift_lane) & (2^b - 1)`.
//! - `SelectRank` gathers `mem[base + i * stride]` for `i < count` (all in bounds), converts them
//!   to f32 (exact from f16, bf16, f32; f64 rounds to nearest even), sorts them with
//!   [`f32::total_cmp`] (-0 before +0) and gives the element of index `rank`. `count == 0` or
//!   `rank >= count` is [`InterpError::BadRank`].
//! - `Loop`: `i = start; while i < end { body(i); i = i + step }`, stopping when `i + step`
//!   overflows. `If` runs one branch. `ThreadId`, `BlockId`, `GridSize` are the coordinates
//!   above; `ScalarParam(i)` is argument `i`.
//!
//! # Tracing
//! [`run_traced`] runs chosen blocks only and records, per thread and per instruction, the
//! global- and shared-memory accesses and how often each body ran (module `trace`).
//!
//! # Errors, not panics
//! [`run`] does not need [`verify()`](crate::ir::verify()): it checks what it relies on as it
//! goes, and any kernel, however malformed, gives a result or an [`InterpError`] (a dangling
//! handle, an operand of the wrong type or without a value, a nested barrier:
//! [`InterpError::Malformed`]). Buffers
//! may have been partly written when an error is returned. Loops terminate, nesting deeper than
//! [`MAX_NESTING`] is refused, and so are kernels whose shared arrays or whose locals for one
//! block hold more than [`MAX_BLOCK_ELEMS`] elements.

mod error;
mod exec;
mod memory;
mod trace;
mod value;
mod warp;

use half::{bf16, f16};

use crate::ir::kernel::{Kernel, Param, ScalarType};
pub use error::{InterpError, Malformed, ParamKind};
pub use trace::{run_traced, BlockTrace, MemAccess, ThreadTrace, Trace};
pub use value::Val;

/// Deepest nesting of loops and ifs the interpreter runs.
pub const MAX_NESTING: u32 = 128;

/// Most elements of all shared arrays of a block, and of all locals of all threads of a block.
pub const MAX_BLOCK_ELEMS: u64 = 1 << 22;

/// The contents of a buffer argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Buffer {
    /// U8 elements.
    U8(Vec<u8>),
    /// U16 elements.
    U16(Vec<u16>),
    /// U32 elements.
    U32(Vec<u32>),
    /// F16 elements.
    F16(Vec<f16>),
    /// BF16 elements.
    BF16(Vec<bf16>),
    /// F32 elements.
    F32(Vec<f32>),
    /// F64 elements.
    F64(Vec<f64>),
}

macro_rules! buffer_from {
    ($($variant:ident: $t:ty, $as:ident;)*) => {
        $(
            impl From<Vec<$t>> for Buffer {
                fn from(v: Vec<$t>) -> Buffer {
                    Buffer::$variant(v)
                }
            }
        )*
        impl Buffer {
            $(
                #[doc = concat!("The elements, if this is a `", stringify!($variant), "` buffer.")]
                pub fn $as(&self) -> Option<&[$t]> {
                    match self {
                        Buffer::$variant(v) => Some(v),
                        _ => None,
                    }
                }
            )*
        }
    };
}

buffer_from! {
    U8: u8, as_u8;
    U16: u16, as_u16;
    U32: u32, as_u32;
    F16: f16, as_f16;
    BF16: bf16, as_bf16;
    F32: f32, as_f32;
    F64: f64, as_f64;
}

impl Buffer {
    /// `len` zeros of `elem`; `None` for Bool, which has no buffer.
    pub fn zeros(elem: ScalarType, len: usize) -> Option<Buffer> {
        Some(match elem {
            ScalarType::Bool => return None,
            ScalarType::U8 => Buffer::U8(vec![0; len]),
            ScalarType::U16 => Buffer::U16(vec![0; len]),
            ScalarType::U32 => Buffer::U32(vec![0; len]),
            ScalarType::F16 => Buffer::F16(vec![f16::ZERO; len]),
            ScalarType::BF16 => Buffer::BF16(vec![bf16::ZERO; len]),
            ScalarType::F32 => Buffer::F32(vec![0.0; len]),
            ScalarType::F64 => Buffer::F64(vec![0.0; len]),
        })
    }

    /// The element type.
    pub fn elem(&self) -> ScalarType {
        match self {
            Buffer::U8(_) => ScalarType::U8,
            Buffer::U16(_) => ScalarType::U16,
            Buffer::U32(_) => ScalarType::U32,
            Buffer::F16(_) => ScalarType::F16,
            Buffer::BF16(_) => ScalarType::BF16,
            Buffer::F32(_) => ScalarType::F32,
            Buffer::F64(_) => ScalarType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::U8(v) => v.len(),
            Buffer::U16(v) => v.len(),
            Buffer::U32(v) => v.len(),
            Buffer::F16(v) => v.len(),
            Buffer::BF16(v) => v.len(),
            Buffer::F32(v) => v.len(),
            Buffer::F64(v) => v.len(),
        }
    }

    /// Splits off the elements from `at` on (all of them past the end: none).
    pub fn split_off(&mut self, at: usize) -> Buffer {
        let at = at.min(self.len());
        match self {
            Buffer::U8(v) => Buffer::U8(v.split_off(at)),
            Buffer::U16(v) => Buffer::U16(v.split_off(at)),
            Buffer::U32(v) => Buffer::U32(v.split_off(at)),
            Buffer::F16(v) => Buffer::F16(v.split_off(at)),
            Buffer::BF16(v) => Buffer::BF16(v.split_off(at)),
            Buffer::F32(v) => Buffer::F32(v.split_off(at)),
            Buffer::F64(v) => Buffer::F64(v.split_off(at)),
        }
    }

    /// Appends `tail` (of the same element type; another type is dropped, which
    /// [`Buffer::split_off`]'s tails never are).
    pub fn append(&mut self, tail: Buffer) {
        match (self, tail) {
            (Buffer::U8(v), Buffer::U8(mut t)) => v.append(&mut t),
            (Buffer::U16(v), Buffer::U16(mut t)) => v.append(&mut t),
            (Buffer::U32(v), Buffer::U32(mut t)) => v.append(&mut t),
            (Buffer::F16(v), Buffer::F16(mut t)) => v.append(&mut t),
            (Buffer::BF16(v), Buffer::BF16(mut t)) => v.append(&mut t),
            (Buffer::F32(v), Buffer::F32(mut t)) => v.append(&mut t),
            (Buffer::F64(v), Buffer::F64(mut t)) => v.append(&mut t),
            _ => {}
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<Val> {
        match self {
            Buffer::U8(v) => v.get(i).map(|&x| Val::U8(x)),
            Buffer::U16(v) => v.get(i).map(|&x| Val::U16(x)),
            Buffer::U32(v) => v.get(i).map(|&x| Val::U32(x)),
            Buffer::F16(v) => v.get(i).map(|&x| Val::F16(x)),
            Buffer::BF16(v) => v.get(i).map(|&x| Val::BF16(x)),
            Buffer::F32(v) => v.get(i).map(|&x| Val::F32(x)),
            Buffer::F64(v) => v.get(i).map(|&x| Val::F64(x)),
        }
    }

    /// Writes scalar `x` at `i`; false (and nothing written) past the end or when the types
    /// differ.
    pub fn set(&mut self, i: usize, x: &Val) -> bool {
        fn put<T: Copy>(v: &mut [T], i: usize, x: T) -> bool {
            v.get_mut(i).map(|slot| *slot = x).is_some()
        }
        match (self, x) {
            (Buffer::U8(v), Val::U8(x)) => put(v, i, *x),
            (Buffer::U16(v), Val::U16(x)) => put(v, i, *x),
            (Buffer::U32(v), Val::U32(x)) => put(v, i, *x),
            (Buffer::F16(v), Val::F16(x)) => put(v, i, *x),
            (Buffer::BF16(v), Val::BF16(x)) => put(v, i, *x),
            (Buffer::F32(v), Val::F32(x)) => put(v, i, *x),
            (Buffer::F64(v), Val::F64(x)) => put(v, i, *x),
            _ => false,
        }
    }
}

/// One kernel argument, matching the parameter at the same ABI index.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// For a [`Param::Buffer`] of the buffer's element type.
    Buffer(Buffer),
    /// For a U32 [`Param::Scalar`].
    U32(u32),
    /// For an F32 [`Param::Scalar`].
    F32(f32),
}

impl Arg {
    /// Its size, for [`crate::ir::check_launch`].
    pub fn size(&self) -> crate::ir::ArgSize {
        match self {
            Arg::Buffer(b) => crate::ir::ArgSize::Buffer(b.len() as u64),
            Arg::U32(v) => crate::ir::ArgSize::U32(*v),
            Arg::F32(_) => crate::ir::ArgSize::Other,
        }
    }

    /// The buffer, if this is a buffer argument (to read results back).
    pub fn buffer(&self) -> Option<&Buffer> {
        match self {
            Arg::Buffer(b) => Some(b),
            _ => None,
        }
    }
}

impl From<Buffer> for Arg {
    fn from(b: Buffer) -> Arg {
        Arg::Buffer(b)
    }
}

/// Runs `kernel` on `grid_size` blocks with `args` (one per parameter, in ABI order); stores
/// land in the buffers of `args`. See the module documentation for the semantics.
///
/// Sizes the kernel states ([`crate::ir::length`]) that need no batch plan are checked first,
/// and each such buffer is bounded by its stated length while the kernel runs (the elements
/// past it are set aside and put back after), so that an access beyond what the signature
/// promises is an [`InterpError::OutOfBounds`] even where the buffer is longer.
pub fn run(kernel: &Kernel, args: &mut [Arg], grid_size: u32) -> Result<(), InterpError> {
    check_args(kernel, args)?;
    let stated = stated_lengths(kernel, args, grid_size)?;
    let mut tails = Vec::new();
    for (i, len) in stated {
        if let Some(Arg::Buffer(b)) = args.get_mut(i) {
            tails.push((i, b.split_off(len)));
        }
    }
    let result = exec::run(kernel, args, grid_size);
    for (i, tail) in tails {
        if let Some(Arg::Buffer(b)) = args.get_mut(i) {
            b.append(tail);
        }
    }
    result
}

/// The stated lengths (buffer index, elements) that need no plan, after checking every such
/// size against `args` and `grid_size` ([`crate::ir::length::check_stated`]).
fn stated_lengths(
    kernel: &Kernel,
    args: &[Arg],
    grid_size: u32,
) -> Result<Vec<(usize, usize)>, InterpError> {
    let sizes: Vec<crate::ir::ArgSize> = args.iter().map(Arg::size).collect();
    let checked = crate::ir::length::check_stated(
        &kernel.name,
        &kernel.params,
        kernel.max_grid.as_ref(),
        &sizes,
        grid_size,
    )?;
    // Each length is at most its buffer's, a usize.
    Ok(checked.into_iter().map(|(i, n)| (i, n as usize)).collect())
}

fn check_args(kernel: &Kernel, args: &[Arg]) -> Result<(), InterpError> {
    if args.len() != kernel.params.len() {
        return Err(InterpError::ArgCount {
            expected: kernel.params.len(),
            got: args.len(),
        });
    }
    for (index, (param, arg)) in kernel.params.iter().zip(args).enumerate() {
        let (expected, got) = match (param, arg) {
            (Param::Buffer { elem, .. }, Arg::Buffer(b)) => (*elem, b.elem()),
            (Param::Scalar { ty, .. }, Arg::U32(_)) => (*ty, ScalarType::U32),
            (Param::Scalar { ty, .. }, Arg::F32(_)) => (*ty, ScalarType::F32),
            (Param::Buffer { .. }, _) | (Param::Scalar { .. }, Arg::Buffer(_)) => {
                let kind = |buffer| match buffer {
                    true => ParamKind::Buffer,
                    false => ParamKind::Scalar,
                };
                return Err(InterpError::ArgKind {
                    index,
                    expected: kind(matches!(param, Param::Buffer { .. })),
                    got: kind(matches!(arg, Arg::Buffer(_))),
                });
            }
        };
        if expected != got {
            return Err(InterpError::ArgType {
                index,
                expected,
                got,
            });
        }
    }
    Ok(())
}
