//! Bit packing.
//!
//! - `PackBits`/`UnpackBits` follow SPEC.md section 3: with code width b, element j of a byte
//!   sits at bits `[8 - (j+1)b, 8 - jb)` in `msb` order and `[jb, (j+1)b)` in `lsb` order.
//!   Packing ORs the shifted codes (each already below 2^b, as the IR requires); unpacking shifts
//!   right and masks.

use inkwell::types::VectorType;
use inkwell::values::IntValue;
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
}
