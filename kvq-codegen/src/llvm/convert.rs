//! Numeric conversions, and BF16 in integer code.
//!
//! - Float to float: `fpext` / `fptrunc` (round to nearest even). F16 and BF16 from f64 round
//!   to f32 *to odd* first, which makes the final rounding the one correct rounding (and keeps
//!   f64-to-f16 off libcalls), exactly as the interpreter computes it.
//! - Integer to float: `uitofp` (round to nearest even); Bool gives 0.0 or 1.0.
//! - Float to integer: `fptosi` to a wider integer (truncation toward zero), then `trunc`, from
//!   f32 (F16/BF16 widened exactly) or f64. The IR requires the operand in range, as the
//!   interpreter enforces; kvq's kernels clamp before converting.
//! - Integer to integer: `zext` / `trunc`; Bool to integer is 0 or 1.
//! - BF16 is an `i16` of bits: to f32 is `bits << 16`; from f32 rounds to nearest even on the
//!   bits (a NaN keeps its top payload bits and becomes quiet, as the `half` crate does). From
//!   u32 (which an f32 cannot hold exactly) it goes through f64 (exact) and the to-odd step.

use inkwell::values::{BasicValueEnum, FloatValue, IntValue};
use inkwell::FloatPredicate;
use kvq_ir::ir::{ScalarType, Type};

use super::lower::{Lower, R};
use super::ops::{scalar_type, unsupported};

impl<'ctx> Lower<'_, 'ctx> {
    pub(super) fn convert(
        &self,
        to: ScalarType,
        a: BasicValueEnum<'ctx>,
        ty: Type,
    ) -> R<BasicValueEnum<'ctx>> {
        let from = self.scalar_operand(ty)?;
        if from == to {
            return Ok(a);
        }
        let target = scalar_type(self.ctx, to);
        let b = &self.b;
        match (from.is_float(), to.is_float()) {
            (true, true) => {
                if to == ScalarType::BF16 || (to == ScalarType::F16 && from == ScalarType::F64) {
                    let x = if from == ScalarType::F64 {
                        self.f64_to_f32_odd(a.into_float_value())?
                    } else {
                        self.widen(a, from)?
                    };
                    return self.narrow(x, to);
                }
                let x = if from == ScalarType::BF16 {
                    self.bf16_to_f32(a.into_int_value())?
                } else {
                    a.into_float_value()
                };
                let (have, want) = (x.get_type(), target.into_float_type());
                Ok(match have.get_bit_width().cmp(&want.get_bit_width()) {
                    std::cmp::Ordering::Less => b.build_float_ext(x, want, "ext")?.into(),
                    std::cmp::Ordering::Greater => b.build_float_trunc(x, want, "trunc")?.into(),
                    std::cmp::Ordering::Equal => x.into(),
                })
            }
            (true, false) if to != ScalarType::Bool => {
                // The IR requires the operand in range (kvq kernels clamp before converting),
                // so a signed conversion to a wider integer is exact; unlike `fptoui` (poison
                // below zero) it keeps selects around it branch-free and vectorizes on x86.
                let x = self.widen(a, from)?;
                let wide_type = if matches!(to, ScalarType::U8 | ScalarType::U16) {
                    self.ctx.i32_type()
                } else {
                    self.ctx.i64_type()
                };
                let wide = b.build_float_to_signed_int(x, wide_type, "int")?;
                Ok(
                    b.build_int_truncate(wide, target.into_int_type(), "narrow")?
                        .into(),
                )
            }
            (false, true) => {
                let x = a.into_int_value();
                if to != ScalarType::BF16 {
                    return Ok(b
                        .build_unsigned_int_to_float(x, target.into_float_type(), "float")?
                        .into());
                }
                let f = if from == ScalarType::U32 {
                    let wide = b.build_unsigned_int_to_float(x, self.ctx.f64_type(), "exact")?;
                    self.f64_to_f32_odd(wide)?
                } else {
                    b.build_unsigned_int_to_float(x, self.ctx.f32_type(), "exact")?
                };
                Ok(self.f32_to_bf16(f)?.into())
            }
            (false, false) if to != ScalarType::Bool => {
                let x = a.into_int_value();
                let want = target.into_int_type();
                Ok(if x.get_type().get_bit_width() < want.get_bit_width() {
                    b.build_int_z_extend(x, want, "zext")?.into()
                } else {
                    b.build_int_truncate(x, want, "trunc")?.into()
                })
            }
            _ => Err(unsupported(format!(
                "a conversion from {} to {}",
                from.name(),
                to.name()
            ))),
        }
    }

    /// BF16 bits to the f32 of the same value (exact).
    pub(super) fn bf16_to_f32(&self, bits: IntValue<'ctx>) -> R<FloatValue<'ctx>> {
        let i32_type = self.ctx.i32_type();
        let wide = self.b.build_int_z_extend(bits, i32_type, "bf16")?;
        let shifted = self
            .b
            .build_left_shift(wide, i32_type.const_int(16, false), "bf16")?;
        Ok(self
            .b
            .build_bit_cast(shifted, self.ctx.f32_type(), "bf16")?
            .into_float_value())
    }

    /// f32 to BF16 bits, rounding to nearest even.
    pub(super) fn f32_to_bf16(&self, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        let b = &self.b;
        let i32_type = self.ctx.i32_type();
        let c = |v: u64| i32_type.const_int(v, false);
        let bits = b.build_bit_cast(x, i32_type, "bits")?.into_int_value();
        let high = b.build_right_shift(bits, c(16), false, "high")?;
        let odd = b.build_and(high, c(1), "odd")?;
        let bias = b.build_int_add(odd, c(0x7FFF), "bias")?;
        let biased = b.build_int_add(bits, bias, "biased")?;
        let rounded = b.build_right_shift(biased, c(16), false, "rounded")?;
        let quiet = b.build_or(high, c(0x40), "quiet")?;
        let nan = b.build_float_compare(FloatPredicate::UNO, x, x, "nan")?;
        let r = b
            .build_select(nan, quiet, rounded, "bf16")?
            .into_int_value();
        Ok(b.build_int_truncate(r, self.ctx.i16_type(), "bf16")?)
    }

    /// f64 to f32 rounding to odd: truncate toward zero, then set the last bit if inexact.
    /// Rounding that to a narrower format with at most 22 significand bits gives the correctly
    /// rounded result of the f64 (the classic double-rounding fix).
    fn f64_to_f32_odd(&self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let b = &self.b;
        let (f32_type, i32_type) = (self.ctx.f32_type(), self.ctx.i32_type());
        let nearest = b.build_float_trunc(x, f32_type, "nearest")?;
        let back = b.build_float_ext(nearest, self.ctx.f64_type(), "back")?;
        // Unordered-equal: NaN counts as exact and stays the NaN fptrunc gives.
        let exact = b.build_float_compare(FloatPredicate::UEQ, back, x, "exact")?;
        let abs = |v: FloatValue<'ctx>| -> R<FloatValue<'ctx>> {
            Ok(self
                .call("llvm.fabs.f64", Some(v.get_type().into()), &[v.into()])?
                .into_float_value())
        };
        let away = b.build_float_compare(FloatPredicate::OGT, abs(back)?, abs(x)?, "away")?;
        let bits = b
            .build_bit_cast(nearest, i32_type, "bits")?
            .into_int_value();
        // Same sign, one step toward zero: the truncated value when rounding went away from it.
        let less = b.build_int_sub(bits, i32_type.const_int(1, false), "toward_zero")?;
        let truncated = b
            .build_select(away, less, bits, "truncated")?
            .into_int_value();
        let odd = b.build_or(truncated, i32_type.const_int(1, false), "odd")?;
        let r = b.build_select(exact, bits, odd, "odd")?;
        Ok(b.build_bit_cast(r, f32_type, "f32")?.into_float_value())
    }
}
