//! Run-time values and the arithmetic of the interpreter: one function per operation family,
//! each written as the plain Rust expression that the IR documentation names.

use half::{bf16, f16};

use crate::ir::kernel::{BinaryOp, CmpOp, Const, ScalarType, Type, UnaryOp};

/// A run-time value: a scalar or a vector of scalars of one type.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A Bool.
    Bool(bool),
    /// A U8.
    U8(u8),
    /// A U16.
    U16(u16),
    /// A U32.
    U32(u32),
    /// An F16.
    F16(f16),
    /// A BF16.
    BF16(bf16),
    /// An F32.
    F32(f32),
    /// An F64.
    F64(f64),
    /// A vector: 2..=16 scalars of one type, as made by a vector load or
    /// [`crate::ir::Op::Vector`].
    Vec(Vec<Val>),
}

impl Val {
    /// What an unzeroed local's element holds until its thread writes it: a vector of no
    /// lanes, which no operation makes (vectors have 2 to 16) and no write stores (locals hold
    /// scalars), so that a read of it is found ([`Val::is_unwritten`]).
    pub fn unwritten() -> Val {
        Val::Vec(Vec::new())
    }

    /// Whether this is [`Val::unwritten`].
    pub fn is_unwritten(&self) -> bool {
        matches!(self, Val::Vec(lanes) if lanes.is_empty())
    }

    /// The zero of `elem` (`false` for Bool).
    pub fn zero(elem: ScalarType) -> Val {
        match elem {
            ScalarType::Bool => Val::Bool(false),
            ScalarType::U8 => Val::U8(0),
            ScalarType::U16 => Val::U16(0),
            ScalarType::U32 => Val::U32(0),
            ScalarType::F16 => Val::F16(f16::ZERO),
            ScalarType::BF16 => Val::BF16(bf16::ZERO),
            ScalarType::F32 => Val::F32(0.0),
            ScalarType::F64 => Val::F64(0.0),
        }
    }

    /// The value of a constant.
    pub fn from_const(c: Const) -> Val {
        match c {
            Const::Bool(b) => Val::Bool(b),
            Const::U8(x) => Val::U8(x),
            Const::U16(x) => Val::U16(x),
            Const::U32(x) => Val::U32(x),
            Const::F32(bits) => Val::F32(f32::from_bits(bits)),
            Const::F64(bits) => Val::F64(f64::from_bits(bits)),
        }
    }

    /// The scalar type of a scalar, `None` for a vector.
    pub fn scalar_ty(&self) -> Option<ScalarType> {
        Some(match self {
            Val::Bool(_) => ScalarType::Bool,
            Val::U8(_) => ScalarType::U8,
            Val::U16(_) => ScalarType::U16,
            Val::U32(_) => ScalarType::U32,
            Val::F16(_) => ScalarType::F16,
            Val::BF16(_) => ScalarType::BF16,
            Val::F32(_) => ScalarType::F32,
            Val::F64(_) => ScalarType::F64,
            Val::Vec(_) => return None,
        })
    }

    /// The IR type of the value.
    pub fn ty(&self) -> Type {
        match self {
            Val::Vec(lanes) => {
                let elem = lanes.first().and_then(Val::scalar_ty);
                Type::Vector(elem.unwrap_or(ScalarType::U8), lanes.len() as u8)
            }
            scalar => Type::Scalar(scalar.scalar_ty().unwrap_or(ScalarType::U8)),
        }
    }

    /// The exact f64 value of a float scalar, `None` for anything else.
    pub fn float_as_f64(&self) -> Option<f64> {
        match *self {
            Val::F16(x) => Some(x.to_f64()),
            Val::BF16(x) => Some(x.to_f64()),
            Val::F32(x) => Some(f64::from(x)),
            Val::F64(x) => Some(x),
            _ => None,
        }
    }
}

/// Why an operation has no result. The interpreter adds the instruction and operands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fault {
    /// Operand number `n` (0-based) has a type the operation does not take.
    Operand(usize),
    /// Integer division or remainder by zero.
    DivisionByZero,
    /// A shift by `shift` of an integer of `width` bits.
    Shift { shift: u32, width: u32 },
    /// A float converted to an integer type that cannot hold it (the exact source value).
    Range(f64),
}

/// `op a` on a scalar.
pub(super) fn unary(op: UnaryOp, a: &Val) -> Result<Val, Fault> {
    let float = |f: fn(f32) -> f32, g: fn(f64) -> f64| -> Result<Val, Fault> {
        // F16 and BF16 round the f32 result back; for these operations it is exact.
        Ok(match *a {
            Val::F16(x) => Val::F16(f16::from_f32(f(x.to_f32()))),
            Val::BF16(x) => Val::BF16(bf16::from_f32(f(x.to_f32()))),
            Val::F32(x) => Val::F32(f(x)),
            Val::F64(x) => Val::F64(g(x)),
            _ => return Err(Fault::Operand(0)),
        })
    };
    match op {
        UnaryOp::Neg => match *a {
            Val::F16(x) => Ok(Val::F16(-x)),
            Val::BF16(x) => Ok(Val::BF16(-x)),
            _ => float(|x| -x, |x| -x),
        },
        UnaryOp::RoundEven => float(f32::round_ties_even, f64::round_ties_even),
        UnaryOp::Floor => float(f32::floor, f64::floor),
        UnaryOp::Exp => float(f32::exp, f64::exp),
        UnaryOp::Not => match *a {
            Val::Bool(b) => Ok(Val::Bool(!b)),
            Val::U8(x) => Ok(Val::U8(!x)),
            Val::U16(x) => Ok(Val::U16(!x)),
            Val::U32(x) => Ok(Val::U32(!x)),
            _ => Err(Fault::Operand(0)),
        },
        UnaryOp::IsFinite => match a.float_as_f64() {
            Some(x) => Ok(Val::Bool(x.is_finite())),
            None => Err(Fault::Operand(0)),
        },
        UnaryOp::PopCount => match *a {
            Val::U8(x) => Ok(Val::U8(x.count_ones() as u8)),
            Val::U16(x) => Ok(Val::U16(x.count_ones() as u16)),
            Val::U32(x) => Ok(Val::U32(x.count_ones())),
            _ => Err(Fault::Operand(0)),
        },
    }
}

fn float_binary<T: Copy + PartialOrd + std::ops::Add<Output = T>>(
    op: BinaryOp,
    x: T,
    y: T,
    sub: fn(T, T) -> T,
    mul: fn(T, T) -> T,
    div: fn(T, T) -> T,
) -> Option<T> {
    Some(match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => sub(x, y),
        BinaryOp::Mul => mul(x, y),
        BinaryOp::Div => div(x, y),
        BinaryOp::Min => {
            if y < x {
                y
            } else {
                x
            }
        }
        BinaryOp::Max => {
            if y > x {
                y
            } else {
                x
            }
        }
        _ => return None,
    })
}

fn f32_binary(op: BinaryOp, x: f32, y: f32) -> Option<f32> {
    match op {
        // Exact: the result is an operand or NaN.
        BinaryOp::Minimum | BinaryOp::Maximum => {
            ieee_2019(op, f64::from(x), f64::from(y)).map(|r| r as f32)
        }
        _ => float_binary(op, x, y, |x, y| x - y, |x, y| x * y, |x, y| x / y),
    }
}

fn f64_binary(op: BinaryOp, x: f64, y: f64) -> Option<f64> {
    match op {
        BinaryOp::Minimum | BinaryOp::Maximum => ieee_2019(op, x, y),
        _ => float_binary(op, x, y, |x, y| x - y, |x, y| x * y, |x, y| x / y),
    }
}

/// IEEE 754-2019 `minimum` / `maximum`: NaN if either is NaN, -0 below +0.
fn ieee_2019(op: BinaryOp, x: f64, y: f64) -> Option<f64> {
    if x.is_nan() || y.is_nan() {
        return Some(f64::NAN);
    }
    let x_first = match x == y {
        // Equal: only zeros of two signs differ; the order of the signs decides.
        true => x.is_sign_negative(),
        false => x < y,
    };
    match op {
        BinaryOp::Minimum => Some(if x_first { x } else { y }),
        BinaryOp::Maximum => Some(if x_first { y } else { x }),
        _ => None,
    }
}

/// Integer `op` on `width`-bit values held in u32 (the result is truncated by the caller).
fn int_binary(op: BinaryOp, x: u32, y: u32, width: u32) -> Result<u32, Fault> {
    Ok(match op {
        BinaryOp::Add => x.wrapping_add(y),
        BinaryOp::Sub => x.wrapping_sub(y),
        BinaryOp::Mul => x.wrapping_mul(y),
        BinaryOp::Div => x.checked_div(y).ok_or(Fault::DivisionByZero)?,
        BinaryOp::Rem => x.checked_rem(y).ok_or(Fault::DivisionByZero)?,
        BinaryOp::Min => {
            if y < x {
                y
            } else {
                x
            }
        }
        BinaryOp::Max => {
            if y > x {
                y
            } else {
                x
            }
        }
        BinaryOp::And => x & y,
        BinaryOp::Or => x | y,
        BinaryOp::Xor => x ^ y,
        BinaryOp::Minimum | BinaryOp::Maximum => return Err(Fault::Operand(0)),
        BinaryOp::Shl | BinaryOp::Shr if y >= width => {
            return Err(Fault::Shift { shift: y, width })
        }
        BinaryOp::Shl => x << y,
        BinaryOp::Shr => x >> y,
    })
}

/// `a op b` on two scalars of one type.
pub(super) fn binary(op: BinaryOp, a: &Val, b: &Val) -> Result<Val, Fault> {
    let wrong = Fault::Operand;
    match (a, b) {
        (Val::Bool(x), Val::Bool(y)) => match op {
            BinaryOp::And => Ok(Val::Bool(*x & *y)),
            BinaryOp::Or => Ok(Val::Bool(*x | *y)),
            BinaryOp::Xor => Ok(Val::Bool(*x ^ *y)),
            _ => Err(wrong(0)),
        },
        // u8 and u16 arithmetic is u32 arithmetic truncated to 8 or 16 bits, which wraps the
        // same way.
        (Val::U8(x), Val::U8(y)) => {
            int_binary(op, u32::from(*x), u32::from(*y), 8).map(|r| Val::U8(r as u8))
        }
        (Val::U16(x), Val::U16(y)) => {
            int_binary(op, u32::from(*x), u32::from(*y), 16).map(|r| Val::U16(r as u16))
        }
        (Val::U32(x), Val::U32(y)) => int_binary(op, *x, *y, 32).map(Val::U32),
        // F16 and BF16 have at most 11 significant bits and f32 has 24 >= 2 * 11 + 2, so the
        // f32 result rounded back is the correctly rounded result (no double-rounding error).
        (Val::F16(x), Val::F16(y)) => f32_binary(op, x.to_f32(), y.to_f32())
            .map(|r| Val::F16(f16::from_f32(r)))
            .ok_or(wrong(0)),
        (Val::BF16(x), Val::BF16(y)) => f32_binary(op, x.to_f32(), y.to_f32())
            .map(|r| Val::BF16(bf16::from_f32(r)))
            .ok_or(wrong(0)),
        (Val::F32(x), Val::F32(y)) => f32_binary(op, *x, *y).map(Val::F32).ok_or(wrong(0)),
        (Val::F64(x), Val::F64(y)) => f64_binary(op, *x, *y).map(Val::F64).ok_or(wrong(0)),
        (Val::Vec(_), _) => Err(wrong(0)),
        _ => Err(wrong(1)),
    }
}

/// `a op b` on two scalars of one type: IEEE for floats (exact in f64), so NaN is unordered.
pub(super) fn cmp(op: CmpOp, a: &Val, b: &Val) -> Result<bool, Fault> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let ord = match (a, b) {
        (Val::Vec(_), _) => return Err(Fault::Operand(0)),
        _ if a.scalar_ty() != b.scalar_ty() => return Err(Fault::Operand(1)),
        (Val::Bool(x), Val::Bool(y)) => x.partial_cmp(y),
        (Val::U8(x), Val::U8(y)) => x.partial_cmp(y),
        (Val::U16(x), Val::U16(y)) => x.partial_cmp(y),
        (Val::U32(x), Val::U32(y)) => x.partial_cmp(y),
        _ => match (a.float_as_f64(), b.float_as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => return Err(Fault::Operand(0)),
        },
    };
    Ok(match op {
        CmpOp::Eq => ord == Some(Equal),
        CmpOp::Ne => ord != Some(Equal),
        CmpOp::Lt => ord == Some(Less),
        CmpOp::Le => matches!(ord, Some(Less | Equal)),
        CmpOp::Gt => ord == Some(Greater),
        CmpOp::Ge => matches!(ord, Some(Greater | Equal)),
    })
}

/// `x` rounded to f32 "to odd": truncated toward zero, and if that was inexact, its last bit
/// set. Rounding this to a format of at most 22 significant bits (f16, bf16) to nearest even
/// gives the correctly rounded value of `x` (no double-rounding error), which `half`'s own
/// `from_f64` does not promise.
fn f64_to_f32_odd(x: f64) -> f32 {
    let nearest = x as f32;
    if x.is_nan() || f64::from(nearest) == x {
        return nearest;
    }
    // Inexact: `nearest` is finite or an infinity just past f32::MAX; step toward zero if it
    // lies beyond `x` (sign-magnitude bits: one less is one step toward zero).
    let mut bits = nearest.to_bits();
    if f64::from(nearest).abs() > x.abs() {
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

/// `x` rounded to nearest even into `to` (a float type).
fn round_f64(to: ScalarType, x: f64) -> Option<Val> {
    Some(match to {
        ScalarType::F16 => Val::F16(f16::from_f32(f64_to_f32_odd(x))),
        ScalarType::BF16 => Val::BF16(bf16::from_f32(f64_to_f32_odd(x))),
        ScalarType::F32 => Val::F32(x as f32),
        ScalarType::F64 => Val::F64(x),
        _ => return None,
    })
}

/// The conversion of a scalar to `to` (see [`crate::ir::Op::Convert`]).
pub(super) fn convert(to: ScalarType, a: &Val) -> Result<Val, Fault> {
    let wrong = Err(Fault::Operand(0));
    if let Some(x) = a.float_as_f64() {
        // Float to integer: truncate toward zero, then the result must fit (NaN fits nothing).
        let t = x.trunc();
        return match to {
            ScalarType::U8 if (0.0..=255.0).contains(&t) => Ok(Val::U8(t as u8)),
            ScalarType::U16 if (0.0..=65535.0).contains(&t) => Ok(Val::U16(t as u16)),
            ScalarType::U32 if (0.0..=f64::from(u32::MAX)).contains(&t) => Ok(Val::U32(t as u32)),
            ScalarType::U8 | ScalarType::U16 | ScalarType::U32 => Err(Fault::Range(x)),
            // Every float widens exactly to f64, so this is one rounding (None for Bool).
            _ => round_f64(to, x).ok_or(Fault::Operand(0)),
        };
    }
    let x = match *a {
        Val::Bool(b) => u32::from(b),
        Val::U8(x) => u32::from(x),
        Val::U16(x) => u32::from(x),
        Val::U32(x) => x,
        _ => return wrong,
    };
    let from_bool = matches!(a, Val::Bool(_));
    match to {
        ScalarType::Bool if from_bool => Ok(a.clone()),
        ScalarType::Bool => wrong,
        // Zero-extension or truncation.
        ScalarType::U8 => Ok(Val::U8(x as u8)),
        ScalarType::U16 => Ok(Val::U16(x as u16)),
        ScalarType::U32 => Ok(Val::U32(x)),
        _ if from_bool => wrong,
        // u32 -> f64 is exact, so this is one rounding.
        _ => round_f64(to, f64::from(x)).ok_or(Fault::Operand(0)),
    }
}

/// The shift of code `j` (of width `bits`) inside a byte in `msb` or `lsb` order.
pub(super) fn code_shift(j: u32, bits: u32, msb: bool) -> u32 {
    if msb {
        8 - (j + 1) * bits
    } else {
        j * bits
    }
}

/// The bits of `a` as type `to`, little-endian (see [`Op::Bitcast`](crate::ir::Op::Bitcast));
/// `None` when the pair is not one the IR allows.
pub(super) fn bitcast(to: Type, a: &Val) -> Option<Val> {
    // 16-bit floats and u16: the same bits.
    match (to, a) {
        (Type::Scalar(ScalarType::U16), Val::F16(x)) => return Some(Val::U16(x.to_bits())),
        (Type::Scalar(ScalarType::U16), Val::BF16(x)) => return Some(Val::U16(x.to_bits())),
        (Type::Scalar(ScalarType::F16), Val::U16(x)) => return Some(Val::F16(f16::from_bits(*x))),
        (Type::Scalar(ScalarType::BF16), Val::U16(x)) => {
            return Some(Val::BF16(bf16::from_bits(*x)))
        }
        _ => {}
    }
    let bytes: Vec<u8> = match a {
        Val::F32(x) => x.to_le_bytes().to_vec(),
        Val::U32(x) => x.to_le_bytes().to_vec(),
        Val::Vec(items) => {
            let mut out = Vec::with_capacity(items.len() * 4);
            for item in items {
                match item {
                    Val::U8(b) => out.push(*b),
                    Val::U32(w) => out.extend_from_slice(&w.to_le_bytes()),
                    _ => return None,
                }
            }
            out
        }
        _ => return None,
    };
    let words = |bytes: &[u8]| -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let from = a.ty();
    let same_size = |n: usize| bytes.len() == n;
    match to {
        Type::Scalar(ScalarType::U32) if same_size(4) && from != Type::Scalar(ScalarType::U32) => {
            words(&bytes).first().copied().map(Val::U32)
        }
        Type::Scalar(ScalarType::F32) if from == Type::Scalar(ScalarType::U32) => {
            words(&bytes).first().map(|w| Val::F32(f32::from_bits(*w)))
        }
        Type::Vector(ScalarType::U32, n) if same_size(usize::from(n) * 4) => {
            Some(Val::Vec(words(&bytes).into_iter().map(Val::U32).collect()))
        }
        Type::Vector(ScalarType::U8, n) if same_size(usize::from(n)) => {
            Some(Val::Vec(bytes.into_iter().map(Val::U8).collect()))
        }
        _ => None,
    }
}
