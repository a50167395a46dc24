//! Bit packing of one (head, token) row of codes (SPEC.md section 3).

use crate::scheme::{BitOrder, Bits};

/// Bit offset of element `j` (0-based within its byte) for width `bits` and `order`.
pub fn bit_shift(j: usize, bits: Bits, order: BitOrder) -> u32 {
    let b = bits.width();
    match order {
        BitOrder::Msb => 8 - (j as u32 + 1) * b,
        BitOrder::Lsb => j as u32 * b,
    }
}

/// Packs `codes` (each `<= L`) into `out`, `8 / b` codes per byte.
pub fn pack_row(codes: &[u8], bits: Bits, order: BitOrder, out: &mut [u8]) {
    let per = bits.codes_per_byte();
    for (byte, chunk) in out.iter_mut().zip(codes.chunks(per)) {
        *byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |acc, (j, &c)| acc | (c << bit_shift(j, bits, order)));
    }
}

/// Unpacks `packed` into `out`, the inverse of [`pack_row`].
pub fn unpack_row(packed: &[u8], bits: Bits, order: BitOrder, out: &mut [u8]) {
    let per = bits.codes_per_byte();
    let mask = bits.max_code();
    for (i, c) in out.iter_mut().enumerate() {
        *c = (packed[i / per] >> bit_shift(i % per, bits, order)) & mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_puts_first_code_high() {
        let mut out = [0u8; 1];
        pack_row(&[1, 0, 0, 0, 0, 0, 0, 1], Bits::B1, BitOrder::Msb, &mut out);
        assert_eq!(out, [0b1000_0001]);
        pack_row(&[1, 1, 0, 0, 0, 0, 0, 0], Bits::B1, BitOrder::Lsb, &mut out);
        assert_eq!(out, [0b0000_0011]);
        pack_row(&[3, 0, 1, 2], Bits::B2, BitOrder::Msb, &mut out);
        assert_eq!(out, [0b11_00_01_10]);
        pack_row(&[0xA, 0x5], Bits::B4, BitOrder::Lsb, &mut out);
        assert_eq!(out, [0x5A]);
    }

    #[test]
    fn unpack_inverts_pack() {
        let codes = [1u8, 2, 3, 0, 3, 3, 1, 0];
        for order in [BitOrder::Msb, BitOrder::Lsb] {
            let mut packed = [0u8; 2];
            pack_row(&codes, Bits::B2, order, &mut packed);
            let mut back = [0u8; 8];
            unpack_row(&packed, Bits::B2, order, &mut back);
            assert_eq!(back, codes);
        }
    }
}
