//! Bit packing and exact rank selection.
//!
//! - `PackBits`/`UnpackBits` follow SPEC.md section 3: with code width b, element j of a byte
//!   sits at bits `[8 - (j+1)b, 8 - jb)` in `msb` order and `[jb, (j+1)b)` in `lsb` order.
//!   Packing ORs the shifted codes (each already below 2^b, as the IR requires); unpacking shifts
//!   right and masks.
//! - `SelectRank` finds the exact `rank`-th smallest (0-based) of the strided elements converted
//!   to f32, in f32's total order (-0 < +0), with registers only: a bisection over the
//!   order-preserving u32 key `bits ^ (sign ? 0xFFFF_FFFF : 0x8000_0000)`. It finds the smallest
//!   key K with `#{i : key(x_i) <= K} >= rank + 1` in exactly 32 halving steps of `[0, 2^32)`,
//!   each a counting pass over the elements; the answer is the f32 whose key is K.

use inkwell::types::VectorType;
use inkwell::values::{FloatValue, IntValue};
use inkwell::IntPredicate;
use kvq_ir::ir::{Memory, ScalarType};
use kvq_ir::{BitOrder, Bits};

use super::lower::{Lower, R};

/// Where code `lane` of width `bits` sits in a byte: its shift from bit 0.
fn shift(lane: u32, bits: Bits, order: BitOrder) -> u32 {
    let b = bits.width();
    match order {
        BitOrder::Msb => 8 - (lane + 1) * b,
        BitOrder::Lsb => lane * b,
    }
}

impl<'ctx> Lower<'_, 'ctx> {
    pub(super) fn pack_bits(
        &self,
        codes: &[IntValue<'ctx>],
        bits: Bits,
        order: BitOrder,
    ) -> R<IntValue<'ctx>> {
        let i8_type = self.ctx.i8_type();
        if codes.len() == 1 {
            let s = i8_type.const_int(u64::from(shift(0, bits, order)), false);
            return Ok(self.b.build_left_shift(codes[0], s, "placed")?);
        }
        let n = codes.len() as u32;
        if bits == Bits::B1 && n == 8 {
            // Eight 1-bit codes (each 0 or 1, as the IR requires): the vector of their low bits
            // is the byte in lsb order (a mask move on x86); msb order is its bit reversal.
            let mut lanes = i8_type.vec_type(8).get_undef();
            for (j, &code) in codes.iter().enumerate() {
                let at = self.ctx.i32_type().const_int(j as u64, false);
                lanes = self.b.build_insert_element(lanes, code, at, "lane")?;
            }
            let mask =
                self.b
                    .build_int_truncate(lanes, self.ctx.bool_type().vec_type(8), "mask")?;
            let byte = self
                .b
                .build_bit_cast(mask, i8_type, "byte")?
                .into_int_value();
            return Ok(match order {
                BitOrder::Lsb => byte,
                BitOrder::Msb => self
                    .call("llvm.bitreverse.i8", Some(i8_type.into()), &[byte.into()])?
                    .into_int_value(),
            });
        }
        // As one vector: lanes shifted into place, then OR-reduced. Written this way the
        // vectorizers keep the codes of a row in SIMD registers instead of scalarizing them.
        let vector_type = i8_type.vec_type(n);
        let mut lanes = vector_type.get_undef();
        for (j, &code) in codes.iter().enumerate() {
            let at = self.ctx.i32_type().const_int(j as u64, false);
            lanes = self.b.build_insert_element(lanes, code, at, "lane")?;
        }
        let shifts: Vec<IntValue<'ctx>> = (0..n)
            .map(|j| i8_type.const_int(u64::from(shift(j, bits, order)), false))
            .collect();
        let placed = self
            .b
            .build_left_shift(lanes, VectorType::const_vector(&shifts), "placed")?;
        let name = format!("llvm.vector.reduce.or.v{n}i8");
        Ok(self
            .call(&name, Some(i8_type.into()), &[placed.into()])?
            .into_int_value())
    }

    pub(super) fn unpack_bits(
        &self,
        byte: IntValue<'ctx>,
        lane: u8,
        bits: Bits,
        order: BitOrder,
    ) -> R<IntValue<'ctx>> {
        let i8_type = self.ctx.i8_type();
        let s = i8_type.const_int(u64::from(shift(u32::from(lane), bits, order)), false);
        let mask = i8_type.const_int((1u64 << bits.width()) - 1, false);
        let shifted = self.b.build_right_shift(byte, s, false, "shifted")?;
        Ok(self.b.build_and(shifted, mask, "code")?)
    }

    /// Element `x` of type `elem` as an f32 (F64 rounds to nearest even, the others are exact
    /// or round as `uitofp` does).
    fn to_f32(
        &self,
        x: inkwell::values::BasicValueEnum<'ctx>,
        elem: ScalarType,
    ) -> R<FloatValue<'ctx>> {
        let f32_type = self.ctx.f32_type();
        Ok(match elem {
            ScalarType::F64 => self
                .b
                .build_float_trunc(x.into_float_value(), f32_type, "f32")?,
            ScalarType::F16 | ScalarType::BF16 | ScalarType::F32 => self.widen(x, elem)?,
            _ => self
                .b
                .build_unsigned_int_to_float(x.into_int_value(), f32_type, "f32")?,
        })
    }

    pub(super) fn select_rank(
        &self,
        mem: Memory,
        base: IntValue<'ctx>,
        stride: IntValue<'ctx>,
        count: IntValue<'ctx>,
        rank: IntValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        let (memory, elem) = self.memory(mem)?;
        let b = &self.b;
        let i32_type = self.ctx.i32_type();
        let c = |v: u64| i32_type.const_int(v, false);
        let wanted = b.build_int_add(rank, c(1), "wanted")?;
        let pre = self.current()?;
        let step_head = self.append("rank.step");
        let step_body = self.append("rank.mid");
        let count_head = self.append("rank.count");
        let count_body = self.append("rank.elem");
        let step_latch = self.append("rank.halve");
        let done = self.append("rank.done");
        b.build_unconditional_branch(step_head)?;

        // for step in 0..32, with the key interval [lo, hi]
        b.position_at_end(step_head);
        let step = b.build_phi(i32_type, "step")?;
        let lo = b.build_phi(i32_type, "lo")?;
        let hi = b.build_phi(i32_type, "hi")?;
        step.add_incoming(&[(&c(0), pre)]);
        lo.add_incoming(&[(&c(0), pre)]);
        hi.add_incoming(&[(&c(u64::from(u32::MAX)), pre)]);
        let (step_v, lo_v, hi_v) = (
            step.as_basic_value().into_int_value(),
            lo.as_basic_value().into_int_value(),
            hi.as_basic_value().into_int_value(),
        );
        let more = b.build_int_compare(IntPredicate::ULT, step_v, c(32), "more")?;
        b.build_conditional_branch(more, step_body, done)?;

        b.position_at_end(step_body);
        let width = b.build_int_sub(hi_v, lo_v, "width")?;
        let half = b.build_right_shift(width, c(1), false, "half")?;
        let mid = b.build_int_add(lo_v, half, "mid")?;
        b.build_unconditional_branch(count_head)?;

        // n = #{i < count : key(x_i) <= mid}
        b.position_at_end(count_head);
        let i = b.build_phi(i32_type, "i")?;
        let n = b.build_phi(i32_type, "n")?;
        i.add_incoming(&[(&c(0), step_body)]);
        n.add_incoming(&[(&c(0), step_body)]);
        let (i_v, n_v) = (
            i.as_basic_value().into_int_value(),
            n.as_basic_value().into_int_value(),
        );
        let inside = b.build_int_compare(IntPredicate::ULT, i_v, count, "inside")?;
        b.build_conditional_branch(inside, count_body, step_latch)?;

        b.position_at_end(count_body);
        let offset = b.build_int_mul(i_v, stride, "offset")?;
        let index = b.build_int_add(base, offset, "index")?;
        let index = b.build_int_z_extend(index, self.ctx.i64_type(), "index")?;
        let x = self.load(self.gep(memory, elem, index)?, elem, 1, elem.size() as u32)?;
        let x = self.to_f32(x, elem)?;
        let bits = b.build_bit_cast(x, i32_type, "bits")?.into_int_value();
        let key = self.bits_to_key(bits)?;
        let below = b.build_int_compare(IntPredicate::ULE, key, mid, "below")?;
        let one = b.build_int_z_extend(below, i32_type, "one")?;
        let n_next = b.build_int_add(n_v, one, "n.next")?;
        let i_next = b.build_int_add(i_v, c(1), "i.next")?;
        let count_end = self.current()?;
        b.build_unconditional_branch(count_head)?;
        i.add_incoming(&[(&i_next, count_end)]);
        n.add_incoming(&[(&n_next, count_end)]);

        // Keep the half that holds the answer.
        b.position_at_end(step_latch);
        let enough = b.build_int_compare(IntPredicate::UGE, n_v, wanted, "enough")?;
        let above = b.build_int_add(mid, c(1), "above")?;
        let lo_next = b.build_select(enough, lo_v, above, "lo.next")?;
        let hi_next = b.build_select(enough, mid, hi_v, "hi.next")?;
        let step_next = b.build_int_add(step_v, c(1), "step.next")?;
        b.build_unconditional_branch(step_head)?;
        step.add_incoming(&[(&step_next, step_latch)]);
        lo.add_incoming(&[(&lo_next, step_latch)]);
        hi.add_incoming(&[(&hi_next, step_latch)]);

        b.position_at_end(done);
        let bits = self.key_to_bits(lo_v)?;
        Ok(b.build_bit_cast(bits, self.ctx.f32_type(), "ranked")?
            .into_float_value())
    }

    /// The order-preserving key of f32 bits: bits ^ (sign ? 0xFFFF_FFFF : 0x8000_0000).
    fn bits_to_key(&self, bits: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let b = &self.b;
        let i32_type = self.ctx.i32_type();
        let sign = b.build_right_shift(bits, i32_type.const_int(31, false), true, "sign")?;
        let mask = b.build_or(sign, i32_type.const_int(0x8000_0000, false), "mask")?;
        Ok(b.build_xor(bits, mask, "key")?)
    }

    /// The f32 bits of an order key (inverse of [`Self::bits_to_key`]).
    fn key_to_bits(&self, key: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let b = &self.b;
        let i32_type = self.ctx.i32_type();
        let positive = b.build_int_compare(
            IntPredicate::UGE,
            key,
            i32_type.const_int(0x8000_0000, false),
            "positive",
        )?;
        let flipped = b.build_xor(key, i32_type.const_int(0x8000_0000, false), "flip")?;
        let negated = b.build_not(key, "negated")?;
        Ok(b.build_select(positive, flipped, negated, "bits")?
            .into_int_value())
    }
}
