//! Arithmetic, comparisons and conversions: the rules that make every backend agree bit for bit.
//!
//! - Float `Add`/`Sub`/`Mul`/`Div`: one correctly rounded operation, no fast-math flags. NVPTX
//!   f32/f64 use `llvm.nvvm.{add,mul,div}.rn.{f,d}` (sub = add.rn(a, -b)), so PTX holds
//!   `add.rn`/`mul.rn`/`div.rn`, which neither LLVM nor ptxas contracts into `fma`.
//! - F16/BF16 operands are widened to f32 (exact), operated on in f32, and rounded back to
//!   nearest even, as the interpreter does.
//! - `Min(a, b) = b < a ? b : a`, `Max(a, b) = b > a ? b : a` (ordered float compares, unsigned
//!   integer compares), selecting the original operand.
//! - `Exp` (approximate): see [`super::exp`].
//! - `RoundEven`/`Floor`: `llvm.roundeven`/`llvm.floor`; `IsFinite`: `|x| < inf`; `Neg`: a sign
//!   flip (`fneg`, or an xor of the BF16 bits).
//! - Comparisons: ordered float predicates except `Ne`, which is unordered (`a != b` is true
//!   when either is NaN, as in Rust); unsigned integer predicates.
//! - Operands are scalars (the verifier's rule; vectors only move through memory and Extract).

use inkwell::context::Context;
use inkwell::types::{BasicType, BasicTypeEnum};
use inkwell::values::{BasicValueEnum, FloatValue};
use inkwell::{FloatPredicate, IntPredicate};
use kvq_ir::ir::{BinaryOp, CmpOp, Const, ScalarType, Type, UnaryOp};

use super::lower::{Fail, Lower, R};

/// The register type of a scalar: Bool `i1`, U8 `i8`, U16 `i16`, U32 `i32`, F16 `half`, BF16
/// `i16` (its bits), F32 `float`, F64 `double`.
pub(super) fn scalar_type(ctx: &Context, s: ScalarType) -> BasicTypeEnum<'_> {
    match s {
        ScalarType::Bool => ctx.bool_type().into(),
        ScalarType::U8 => ctx.i8_type().into(),
        ScalarType::U16 => ctx.i16_type().into(),
        ScalarType::U32 => ctx.i32_type().into(),
        ScalarType::F16 => ctx.f16_type().into(),
        ScalarType::BF16 => ctx.i16_type().into(),
        ScalarType::F32 => ctx.f32_type().into(),
        ScalarType::F64 => ctx.f64_type().into(),
    }
}

/// The LLVM name suffix of a float type in overloaded intrinsics.
fn suffix(x: FloatValue<'_>) -> &'static str {
    match x.get_type().get_bit_width() {
        16 => "f16",
        64 => "f64",
        _ => "f32",
    }
}

impl<'ctx> Lower<'_, 'ctx> {
    pub(super) fn constant(&self, c: Const) -> R<BasicValueEnum<'ctx>> {
        let ctx = self.ctx;
        Ok(match c {
            Const::Bool(v) => ctx.bool_type().const_int(u64::from(v), false).into(),
            Const::U8(v) => ctx.i8_type().const_int(u64::from(v), false).into(),
            Const::U16(v) => ctx.i16_type().const_int(u64::from(v), false).into(),
            Const::U32(v) => ctx.i32_type().const_int(u64::from(v), false).into(),
            Const::F32(bits) => {
                let bits = ctx.i32_type().const_int(u64::from(bits), false);
                self.b.build_bit_cast(bits, ctx.f32_type(), "f32")?
            }
            Const::F64(bits) => {
                let bits = ctx.i64_type().const_int(bits, false);
                self.b.build_bit_cast(bits, ctx.f64_type(), "f64")?
            }
        })
    }

    /// The element type of an operand the verifier requires to be a scalar.
    pub(super) fn scalar_operand(&self, ty: Type) -> R<ScalarType> {
        match ty {
            Type::Scalar(s) => Ok(s),
            Type::Vector(..) => Err(unsupported(format!("a vector operand ({ty:?})"))),
        }
    }

    pub(super) fn unary(
        &self,
        op: UnaryOp,
        a: BasicValueEnum<'ctx>,
        ty: Type,
    ) -> R<BasicValueEnum<'ctx>> {
        let elem = self.scalar_operand(ty)?;
        if op == UnaryOp::Not {
            return Ok(self.b.build_not(a.into_int_value(), "not")?.into());
        }
        if op == UnaryOp::PopCount {
            let x = a.into_int_value();
            let name = format!("llvm.ctpop.i{}", x.get_type().get_bit_width());
            let ty = x.get_type().as_basic_type_enum();
            return self.call(&name, Some(ty), &[a]);
        }
        if !elem.is_float() {
            return Err(unsupported(format!("{op:?} on {}", elem.name())));
        }
        if op == UnaryOp::Neg {
            // Exactly a sign flip, in every format.
            return Ok(if elem == ScalarType::BF16 {
                let sign = self.ctx.i16_type().const_int(0x8000, false);
                self.b.build_xor(a.into_int_value(), sign, "neg")?.into()
            } else {
                self.b.build_float_neg(a.into_float_value(), "neg")?.into()
            });
        }
        let x = self.widen(a, elem)?;
        let r = match op {
            UnaryOp::Exp if x.get_type() == self.ctx.f32_type() => {
                self.exp_f32(x)?.into_float_value()
            }
            UnaryOp::Exp => return Err(unsupported(format!("exp on {}", elem.name()))),
            UnaryOp::RoundEven | UnaryOp::Floor => {
                let name = if op == UnaryOp::Floor {
                    "floor"
                } else {
                    "roundeven"
                };
                let name = format!("llvm.{name}.{}", suffix(x));
                let ty = x.get_type().as_basic_type_enum();
                self.call(&name, Some(ty), &[x.into()])?.into_float_value()
            }
            UnaryOp::IsFinite => {
                let ty = x.get_type();
                let name = format!("llvm.fabs.{}", suffix(x));
                let abs = self
                    .call(&name, Some(ty.into()), &[x.into()])?
                    .into_float_value();
                let inf = ty.const_float(f64::INFINITY);
                let finite = self
                    .b
                    .build_float_compare(FloatPredicate::OLT, abs, inf, "finite")?;
                return Ok(finite.into());
            }
            UnaryOp::Not | UnaryOp::Neg | UnaryOp::PopCount => {
                return Err(Fail::Llvm(format!("{op:?} reached the float path")))
            }
        };
        self.narrow(r, elem)
    }

    pub(super) fn binary(
        &self,
        op: BinaryOp,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
        ty: Type,
    ) -> R<BasicValueEnum<'ctx>> {
        let elem = self.scalar_operand(ty)?;
        if elem.is_float() {
            self.float_binary(op, a, b, elem)
        } else {
            self.int_binary(op, a, b)
        }
    }

    fn float_binary(
        &self,
        op: BinaryOp,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
        elem: ScalarType,
    ) -> R<BasicValueEnum<'ctx>> {
        let (x, y) = (self.widen(a, elem)?, self.widen(b, elem)?);
        let r = match op {
            BinaryOp::Min | BinaryOp::Max => {
                let pred = if op == BinaryOp::Min {
                    FloatPredicate::OLT
                } else {
                    FloatPredicate::OGT
                };
                let take_b = self.b.build_float_compare(pred, y, x, "take_b")?;
                return Ok(self.b.build_select(take_b, b, a, "minmax")?);
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => {
                self.float_arith(op, x, y)?
            }
            BinaryOp::Minimum | BinaryOp::Maximum => {
                let name = match (op, elem) {
                    (BinaryOp::Minimum, ScalarType::F64) => "llvm.minimum.f64",
                    (BinaryOp::Minimum, _) => "llvm.minimum.f32",
                    (_, ScalarType::F64) => "llvm.maximum.f64",
                    _ => "llvm.maximum.f32",
                };
                let ty = x.get_type().as_basic_type_enum();
                self.call(name, Some(ty), &[x.into(), y.into()])?
                    .into_float_value()
            }
            _ => return Err(unsupported(format!("{op:?} on {}", elem.name()))),
        };
        self.narrow(r, elem)
    }

    /// One correctly rounded f32/f64 operation (see the module docs).
    fn float_arith(
        &self,
        op: BinaryOp,
        x: FloatValue<'ctx>,
        y: FloatValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        if self.ptx {
            let kind = if x.get_type().get_bit_width() == 64 {
                "d"
            } else {
                "f"
            };
            let (name, y) = match op {
                BinaryOp::Add => ("add", y),
                BinaryOp::Sub => ("add", self.b.build_float_neg(y, "neg")?),
                BinaryOp::Mul => ("mul", y),
                _ => ("div", y),
            };
            let name = format!("llvm.nvvm.{name}.rn.{kind}");
            let ty = x.get_type().as_basic_type_enum();
            return Ok(self
                .call(&name, Some(ty), &[x.into(), y.into()])?
                .into_float_value());
        }
        Ok(match op {
            BinaryOp::Add => self.b.build_float_add(x, y, "add")?,
            BinaryOp::Sub => self.b.build_float_sub(x, y, "sub")?,
            BinaryOp::Mul => self.b.build_float_mul(x, y, "mul")?,
            _ => self.b.build_float_div(x, y, "div")?,
        })
    }

    fn int_binary(
        &self,
        op: BinaryOp,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let (x, y) = (a.into_int_value(), b.into_int_value());
        let bld = &self.b;
        let r = match op {
            BinaryOp::Add => bld.build_int_add(x, y, "add")?,
            BinaryOp::Sub => bld.build_int_sub(x, y, "sub")?,
            BinaryOp::Mul => bld.build_int_mul(x, y, "mul")?,
            BinaryOp::Div => bld.build_int_unsigned_div(x, y, "div")?,
            BinaryOp::Rem => bld.build_int_unsigned_rem(x, y, "rem")?,
            BinaryOp::And => bld.build_and(x, y, "and")?,
            BinaryOp::Or => bld.build_or(x, y, "or")?,
            BinaryOp::Xor => bld.build_xor(x, y, "xor")?,
            BinaryOp::Shl => bld.build_left_shift(x, y, "shl")?,
            BinaryOp::Shr => bld.build_right_shift(x, y, false, "shr")?,
            BinaryOp::Minimum | BinaryOp::Maximum => {
                return Err(unsupported(format!("{op:?} on an integer")))
            }
            BinaryOp::Min | BinaryOp::Max => {
                let pred = if op == BinaryOp::Min {
                    IntPredicate::ULT
                } else {
                    IntPredicate::UGT
                };
                let take_b = bld.build_int_compare(pred, y, x, "take_b")?;
                return Ok(bld.build_select(take_b, b, a, "minmax")?);
            }
        };
        Ok(r.into())
    }

    pub(super) fn compare(
        &self,
        op: CmpOp,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
        ty: Type,
    ) -> R<BasicValueEnum<'ctx>> {
        let elem = self.scalar_operand(ty)?;
        if elem.is_float() {
            let pred = match op {
                CmpOp::Eq => FloatPredicate::OEQ,
                CmpOp::Ne => FloatPredicate::UNE,
                CmpOp::Lt => FloatPredicate::OLT,
                CmpOp::Le => FloatPredicate::OLE,
                CmpOp::Gt => FloatPredicate::OGT,
                CmpOp::Ge => FloatPredicate::OGE,
            };
            let (x, y) = (self.widen(a, elem)?, self.widen(b, elem)?);
            Ok(self.b.build_float_compare(pred, x, y, "cmp")?.into())
        } else {
            let pred = match op {
                CmpOp::Eq => IntPredicate::EQ,
                CmpOp::Ne => IntPredicate::NE,
                CmpOp::Lt => IntPredicate::ULT,
                CmpOp::Le => IntPredicate::ULE,
                CmpOp::Gt => IntPredicate::UGT,
                CmpOp::Ge => IntPredicate::UGE,
            };
            let (x, y) = (a.into_int_value(), b.into_int_value());
            Ok(self.b.build_int_compare(pred, x, y, "cmp")?.into())
        }
    }

    /// An F16/BF16/F32/F64 register value as f32 or f64 (exact).
    pub(super) fn widen(&self, v: BasicValueEnum<'ctx>, elem: ScalarType) -> R<FloatValue<'ctx>> {
        Ok(match elem {
            ScalarType::F16 => {
                self.b
                    .build_float_ext(v.into_float_value(), self.ctx.f32_type(), "wide")?
            }
            ScalarType::BF16 => self.bf16_to_f32(v.into_int_value())?,
            ScalarType::F32 | ScalarType::F64 => v.into_float_value(),
            other => return Err(unsupported(format!("{} as a float", other.name()))),
        })
    }

    /// The inverse of [`Self::widen`]: an f32 result rounded to nearest even into `elem`.
    pub(super) fn narrow(&self, x: FloatValue<'ctx>, elem: ScalarType) -> R<BasicValueEnum<'ctx>> {
        Ok(match elem {
            ScalarType::F16 => self
                .b
                .build_float_trunc(x, self.ctx.f16_type(), "narrow")?
                .into(),
            ScalarType::BF16 => self.f32_to_bf16(x)?.into(),
            _ => x.into(),
        })
    }
}

pub(super) fn unsupported(what: String) -> Fail {
    Fail::Unsupported(what)
}
