//! 16-bit order keys of f16 and bf16 elements: unsigned integers in the elements' order
//! (`-0` below `+0`, NaNs beyond the infinities), which the quantile rule's selections count
//! and, in the cluster kernel, stage and code by ([`threshold_key16`]).

use crate::ir::{BinaryOp, Builder, CmpOp, ScalarType, Value};

/// The 16-bit order key of an f16 or bf16 element `x` (U16): its bits `^ (sign ? 0xFFFF :
/// 0x8000)`, which is its [`Keys`](super::block_select::Keys)
/// key (see that module's tests).
pub(super) fn key16(b: &mut Builder, x: Value) -> Value {
    let bits = b.bitcast(ScalarType::U16, x);
    let top = b.u16(0x8000);
    let negative = b.cmp(CmpOp::Ge, bits, top);
    let all = b.u16(u16::MAX);
    let mask = b.select(negative, all, top);
    b.binary(BinaryOp::Xor, bits, mask)
}

/// The f16 or bf16 element (type `elem`) whose [`key16`] is `k` (U16): `k ^ (top bit ?
/// 0x8000 : 0xFFFF)`, reinterpreted.
pub(super) fn element_of_key16(b: &mut Builder, k: Value, elem: ScalarType) -> Value {
    let top = b.u16(0x8000);
    let non_negative = b.cmp(CmpOp::Ge, k, top);
    let all = b.u16(u16::MAX);
    let mask = b.select(non_negative, top, all);
    let bits = b.binary(BinaryOp::Xor, k, mask);
    b.bitcast(elem, bits)
}

/// The [`key16`] `K` of threshold `t` (a finite F32 or +inf) for f16 or bf16 elements
/// (`elem`): an element `x` has `x >= t` exactly when `key16(x) >= K` (x not NaN). `K` is the
/// key of the smallest element `h >= t`: `t` rounded to nearest, one key up when that fell
/// below `t`, and `-0`'s key when `h` is a zero (both zeros are `>= 0`).
pub(super) fn threshold_key16(b: &mut Builder, t: Value, elem: ScalarType) -> Value {
    let h = b.convert(elem, t);
    let back = b.convert(ScalarType::F32, h);
    let key = key16(b, h);
    let zero = b.f32(0.0);
    let is_zero = b.cmp(CmpOp::Eq, back, zero);
    let minus_zero = b.u16(0x7FFF);
    let at = b.select(is_zero, minus_zero, key);
    let below = b.cmp(CmpOp::Lt, back, t);
    let one = b.u16(1);
    let up = b.add(key, one);
    b.select(below, up, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::interp::{run, Arg, Buffer};
    use crate::ir::{Access, Special};

    /// `key16` of every f16 and bf16 bit pattern is `bits ^ (sign ? 0xFFFF : 0x8000)`, and
    /// `element_of_key16` gives the pattern back (interpreter, one thread per pattern).
    #[test]
    fn key16_round_trips_every_bit_pattern() {
        for elem in [ScalarType::F16, ScalarType::BF16] {
            let mut b = Builder::new("key16_round_trip", 256);
            let x = b.buffer("x", elem, Access::Read);
            let keys = b.buffer("keys", ScalarType::U16, Access::Write);
            let back = b.buffer("back", elem, Access::Write);
            let (blk, tid) = (b.special(Special::BlockId), b.special(Special::ThreadId));
            let bs = b.u32(256);
            let at = b.mul(blk, bs);
            let at = b.add(at, tid);
            let v = b.load(x, at, 1);
            let k = key16(&mut b, v);
            b.store(keys, at, k);
            let v = element_of_key16(&mut b, k, elem);
            b.store(back, at, v);
            let kernel = b.finish();
            let bits: Vec<u16> = (0..=u16::MAX).collect();
            let input = match elem {
                ScalarType::F16 => {
                    Buffer::F16(bits.iter().map(|&h| half::f16::from_bits(h)).collect())
                }
                _ => Buffer::BF16(bits.iter().map(|&h| half::bf16::from_bits(h)).collect()),
            };
            let mut args = vec![
                Arg::Buffer(input),
                Arg::Buffer(Buffer::U16(vec![0; 1 << 16])),
                Arg::Buffer(Buffer::zeros(elem, 1 << 16).expect("buffer")),
            ];
            run(&kernel, &mut args, 256).expect("runs");
            let want: Vec<u16> = bits
                .iter()
                .map(|&h| h ^ if h >> 15 == 1 { u16::MAX } else { 0x8000 })
                .collect();
            assert_eq!(args[1], Arg::Buffer(Buffer::U16(want)), "{elem:?} keys");
            // Bits, not values: NaN patterns compare unequal as values.
            let back: Vec<u16> = match &args[2] {
                Arg::Buffer(Buffer::F16(v)) => v.iter().map(|h| h.to_bits()).collect(),
                Arg::Buffer(Buffer::BF16(v)) => v.iter().map(|h| h.to_bits()).collect(),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(back, bits, "{elem:?} elements back");
        }
    }

    /// Runs `threshold_key16` on each of `ts` in the interpreter.
    fn threshold_keys(ts: &[f32], elem: ScalarType) -> Vec<u16> {
        let mut b = Builder::new("threshold_key16", 1);
        let t = b.buffer("t", ScalarType::F32, Access::Read);
        let keys = b.buffer("keys", ScalarType::U16, Access::Write);
        let at = b.special(Special::BlockId);
        let v = b.load(t, at, 1);
        let k = threshold_key16(&mut b, v, elem);
        b.store(keys, at, k);
        let kernel = b.finish();
        let mut args = vec![
            Arg::Buffer(Buffer::F32(ts.to_vec())),
            Arg::Buffer(Buffer::U16(vec![0; ts.len()])),
        ];
        run(&kernel, &mut args, ts.len() as u32).expect("runs");
        match &args[1] {
            Arg::Buffer(Buffer::U16(k)) => k.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// For thresholds on, between and beside the elements (both zeros, the subnormals, the
    /// ends of the finite range, halfway points, the f32 neighbours of each) and +inf, every
    /// non-NaN f16 and bf16 element `x` has `x >= t` exactly when `key16(x) >= K`: the
    /// comparison of f32 values, done here in Rust, decides.
    #[test]
    fn threshold_keys_compare_like_the_values() {
        for elem in [ScalarType::F16, ScalarType::BF16] {
            let value = |h: u16| match elem {
                ScalarType::F16 => half::f16::from_bits(h).to_f32(),
                _ => half::bf16::from_bits(h).to_f32(),
            };
            let elements: Vec<(f32, u16)> = (0..=u16::MAX)
                .filter(|&h| !value(h).is_nan())
                .map(|h| (value(h), h ^ if h >> 15 == 1 { u16::MAX } else { 0x8000 }))
                .collect();
            let mut ts = vec![0.0, -0.0, 1e-30, -1e-30, f32::MAX, -f32::MAX, f32::INFINITY];
            // Every 251st element (the ends included), its f32 neighbours, and the halfway
            // points to the next element up with theirs.
            let finite: Vec<f32> = elements
                .iter()
                .map(|e| e.0)
                .filter(|x| x.is_finite())
                .collect();
            let mut sorted = finite.clone();
            sorted.sort_by(f32::total_cmp);
            for (i, pair) in sorted.windows(2).enumerate() {
                let near_zero = pair[0] == 0.0 || pair[1] == 0.0;
                if i % 251 != 0 && i + 2 != sorted.len() && i > 2 && !near_zero {
                    continue;
                }
                let half = pair[0] + (pair[1] - pair[0]) / 2.0;
                for x in [pair[0], pair[1], half] {
                    ts.extend([
                        x,
                        f32::from_bits(x.to_bits() + 1),
                        f32::from_bits(x.to_bits().wrapping_sub(1)),
                    ]);
                }
            }
            ts.retain(|t| !t.is_nan());
            let keys = threshold_keys(&ts, elem);
            for (&t, &k) in ts.iter().zip(&keys) {
                for &(x, key) in &elements {
                    assert_eq!(
                        x >= t,
                        key >= k,
                        "{elem:?}: x = {x:e}, t = {t:e} (bits {:#x}), K = {k:#06x}",
                        t.to_bits()
                    );
                }
            }
            assert!(ts.len() > 1000, "{} thresholds", ts.len());
        }
    }
}
