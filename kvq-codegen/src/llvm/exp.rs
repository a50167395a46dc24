//! `Exp` on F32 (SPEC-free, approximate; see [`kvq_ir::ir::UnaryOp::Exp`]).
//!
//! - NVPTX: `ex2.approx.f32(x * log2(e))`, the SFU instruction.
//! - Host: an inline Cephes-style `expf` (range reduction `x = n ln2 + r`, a degree-6
//!   polynomial in `r`, the exponent `n` put in the bits), pure arithmetic so that loops around
//!   it vectorize; below -87.33654 it gives 0 (so `exp(-inf) = 0`), above 88.72283 `+inf`.
//!
//! Both agree with `f32::exp` to a few units in the last place on the range softmax uses.

use inkwell::values::{BasicValueEnum, FloatValue};
use inkwell::FloatPredicate;

use super::lower::{Lower, R};

/// The polynomial of Cephes `expf`, highest degree first (`p(r) r^2 + r + 1`); its last
/// coefficient, 5.0000001201e-1, rounds to 0.5 in f32.
const POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

impl<'ctx> Lower<'_, 'ctx> {
    /// `e^x` for an f32 `x`.
    pub(super) fn exp_f32(&self, x: FloatValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let f32t = self.ctx.f32_type();
        let c = |v: f32| f32t.const_float(f64::from(v));
        let b = &self.b;
        if self.ptx {
            let y = b.build_float_mul(x, c(std::f32::consts::LOG2_E), "exp.y")?;
            return self.call("llvm.nvvm.ex2.approx.f", Some(f32t.into()), &[y.into()]);
        }
        let lo = c(-87.336_54);
        let hi = c(88.722_83);
        let under = b.build_float_compare(FloatPredicate::OLT, x, lo, "exp.under")?;
        let over = b.build_float_compare(FloatPredicate::OGT, x, hi, "exp.over")?;
        let xc = b.build_select(under, lo, x, "exp.lo")?.into_float_value();
        let xc = b.build_select(over, hi, xc, "exp.hi")?.into_float_value();
        let t = b.build_float_mul(xc, c(std::f32::consts::LOG2_E), "exp.t")?;
        let n = self
            .call("llvm.roundeven.f32", Some(f32t.into()), &[t.into()])?
            .into_float_value();
        // r = x - n ln2, with ln2 split so that n * LN2_HI is exact.
        let r = b.build_float_sub(xc, b.build_float_mul(n, c(0.693_359_4), "")?, "")?;
        let r = b.build_float_sub(r, b.build_float_mul(n, c(-2.121_944_4e-4), "")?, "exp.r")?;
        let mut p = c(POLY[0]);
        for &k in &POLY[1..] {
            p = b.build_float_add(b.build_float_mul(p, r, "")?, c(k), "")?;
        }
        let r2 = b.build_float_mul(r, r, "")?;
        let p = b.build_float_add(b.build_float_mul(p, r2, "")?, r, "")?;
        let p = b.build_float_add(p, c(1.0), "exp.p")?;
        // 2^n from the bits: n in [-126, 128]; 2^128 would overflow the exponent, so scale
        // by 2^(n-1) and double.
        let i32t = self.ctx.i32_type();
        let ni = b.build_float_to_signed_int(n, i32t, "")?;
        let e = b.build_int_add(ni, i32t.const_int(126, false), "")?;
        let e = b.build_left_shift(e, i32t.const_int(23, false), "")?;
        let pow = b.build_bit_cast(e, f32t, "exp.pow")?.into_float_value();
        let y = b.build_float_mul(b.build_float_mul(p, pow, "")?, c(2.0), "exp.y")?;
        let y = b
            .build_select(under, c(0.0), y, "exp.zero")?
            .into_float_value();
        let y = b.build_select(over, c(f32::INFINITY), y, "exp")?;
        Ok(y)
    }
}
