//! `P V` of 1-bit channel-axis values on tensor cores ([`WarpOp::Mma`], m16n8k16): for each
//! 16 tokens of the warp's step and 16 channels, `D (channels x columns) += A (channels x
//! tokens) B (tokens x columns)`, with `A` the code bits and `B` the weights of the query heads.
//!
//! - `A`: a set bit is the f16 `2^-14` (bit 10 of the half: the exponent's lowest bit), a clear
//!   one `+0`, so that a lane makes two elements from a word of codes with a shift and a mask.
//! - `B`: column `2h` holds `hi = f16(p 2^14)` of head `h`'s weight `p`, column `2h + 1` holds
//!   `lo = f16(p 2^14 - hi)`: the two halves carry 22 bits of `p` (the weights are at most 1,
//!   so `hi` is at most 16,384 and `lo` is rounded at `2^-24`, `2^-38` in units of `p`), and
//!   `2^-14 hi` and `2^-14 lo` are exact in f32. Up to 4 heads fill the 8 columns.
//! - `D`: one fragment per 16 channels (8 at head_dim 128), rescaled with the softmax's running
//!   maximum, are the lanes' accumulators: an fp chunk's tokens add to them too
//!   ([`add_fp_token`]), and at the end of the item `hi + lo` of a head's two columns is its
//!   accumulator ([`store_mma_sums`]).
//!
//! The value rows are staged for this (`stage_value_row_mma`): each token's 16 code bytes as 8
//! 16-bit pieces (channels `16 m ..`), the pieces of the step's 32 tokens ordered so that a lane
//! reads the four tokens of its `A` fragment with one 8-byte load.

use super::*;
use crate::ir::{mma_acc_at, Type, MMA_ACC_LEN, MMA_A_LEN, MMA_B_LEN};

/// Channels per `A` fragment (`MMA_M`) and tokens per `A` fragment (`MMA_K`).
const CHANNELS: u32 = 16;
const TOKENS: u32 = 16;

/// `2^14`, the weights' scale in `B` (and `2^-14`, the bit 10 of a half, the codes' in `A`).
const P_SCALE: f32 = 16384.0;

/// The `A` bit of a half: `2^-14`.
const HALF_BIT: u32 = 10;

/// The per-thread locals of the tensor-core `P V`.
#[derive(Clone)]
pub(super) struct MmaLocals {
    /// This lane's fragment of `A` and of `B`.
    a: u32,
    b: u32,
    /// One `D` fragment per 16 channels.
    d: Vec<u32>,
}

/// Whether `P V` of a span goes through tensor cores: 1-bit channel-axis values of group =
/// all at head_dim 128 (four channels a lane, as for the quad tables) and at most 4 query heads
/// per kv head (two `B` columns a head in one 8-column fragment).
pub(super) fn uses_mma(value: &Scheme, d: u32, g: u32) -> bool {
    value.axis == Axis::Channel
        && value.group == Group::All
        && value.bits.width() == 1
        && d == 4 * WARP_SIZE
        && g <= 4
}

/// Declares the locals (`D` fragments zeroed: [`Builder::local`]).
pub(super) fn declare(b: &mut Builder, dims: &Dims) -> MmaLocals {
    MmaLocals {
        a: b.local("mma_a", ScalarType::F16, MMA_A_LEN),
        b: b.local("mma_b", ScalarType::F16, MMA_B_LEN),
        d: (0..dims.d / CHANNELS)
            .map(|m| b.local(&format!("mma_d{m}"), ScalarType::F32, MMA_ACC_LEN))
            .collect(),
    }
}

/// Where the 16-bit piece `m` of the value row of token `lane` of warp `warp`'s step is staged,
/// in bytes: `((warp * pieces + m) * 2 + lane / 16) * 32 + 2 pos`, where `r = lane % 16` and
/// `pos = 4 ((r / 2) % 4) + 2 (r / 8) + r % 2`, so that lane `(g, t)` of an `A` fragment finds
/// tokens `2t, 2t + 1, 2t + 8, 2t + 9` of a 16-token half at `pos` `4t .. 4t + 4`.
fn staged_at(b: &mut Builder, dims: &Dims, warp: Value, lane: Value, m: u32) -> Value {
    let pieces = dims.v_row / 2;
    let mv = b.u32(m);
    let wm = affine(b, warp, pieces, mv);
    let four = b.u32(4);
    let half = b.binary(BinaryOp::Shr, lane, four);
    let block = affine(b, wm, 2, half);
    let (one, three, fifteen) = (b.u32(1), b.u32(3), b.u32(15));
    let r = b.binary(BinaryOp::And, lane, fifteen);
    let pair = b.binary(BinaryOp::Shr, r, one);
    let t = b.binary(BinaryOp::And, pair, three);
    let hi = b.binary(BinaryOp::Shr, r, three);
    let odd = b.binary(BinaryOp::And, r, one);
    let pos = affine(b, hi, 2, odd);
    let pos = affine(b, t, 4, pos);
    let pos = times(b, pos, 2);
    affine(b, block, 2 * TOKENS, pos)
}

/// Stages the value row `v` (the lane's token's `v_row` code bytes, as a byte vector) for
/// [`span_values_mma`].
pub(super) fn stage_value_row_mma(b: &mut Builder, dims: &Dims, sh: &Shared, v: Value) {
    for m in 0..dims.v_row / 2 {
        let warp = b.special(Special::WarpId);
        let lane = b.special(Special::LaneId);
        let at = staged_at(b, dims, warp, lane, m);
        let lo = b.extract(v, (2 * m) as u8);
        let hi = b.extract(v, (2 * m + 1) as u8);
        let piece = b.vector(vec![lo, hi]);
        b.store_aligned(sh.vstage, at, piece);
    }
}

/// `D += A B` over the warp's 32 staged tokens: two 16-token halves, each with its `B` of the
/// weights in `sh.probs` (zero past the group's heads, and in an fp item, whose values the
/// per-token loop does) and one MMA per 16 channels. Collective: runs for every item.
pub(super) fn span_values_mma(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    mma: &MmaLocals,
) {
    let msb = value.order == crate::scheme::BitOrder::Msb;
    for half in 0..WARP_SIZE / TOKENS {
        stage_weights(b, dims, at, sh, lc, mma, half);
        for (m, &d) in mma.d.iter().enumerate() {
            stage_codes(b, dims, sh, mma, msb, half, m as u32);
            b.warp(WarpOp::Mma {
                a: mma.a,
                b: mma.b,
                acc: d,
            });
        }
    }
}

/// This lane's `B` for the 16-token `half` of the warp's step: element `i` is row (token) `2t +
/// i % 2 (+ 8 for i >= 2)`, column `g` (lane `4g + t`): head `g / 2`, `hi` for even `g`, `lo`
/// for odd.
fn stage_weights(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    mma: &MmaLocals,
    half: u32,
) {
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let (one, two, three) = (b.u32(1), b.u32(2), b.u32(3));
    let head = b.binary(BinaryOp::Shr, lane, three);
    let gv = b.u32(dims.g);
    let has_head = b.cmp(CmpOp::Lt, head, gv);
    let live = b.binary(BinaryOp::And, has_head, is_span);
    let last = b.u32(dims.g - 1);
    let head = b.min(head, last);
    let col = b.binary(BinaryOp::Shr, lane, two);
    let part = b.binary(BinaryOp::And, col, one);
    let is_lo = b.cmp(CmpOp::Eq, part, one);
    let t = b.binary(BinaryOp::And, lane, three);
    let first = times(b, warp, WARP_SIZE);
    let first = affine(b, t, 2, first);
    let scale = b.f32(P_SCALE);
    let zero = b.f32(0.0);
    let zero = b.convert(ScalarType::F16, zero);
    for i in 0..MMA_B_LEN {
        let row = half * TOKENS + i % 2 + if i >= 2 { 8 } else { 0 };
        let rv = b.u32(row);
        let slot = b.add(first, rv);
        let pi = affine(b, slot, dims.gp, head);
        let p = b.load(sh.probs, pi, 1);
        let p = b.mul(p, scale);
        let hi = b.convert(ScalarType::F16, p);
        let back = b.convert(ScalarType::F32, hi);
        let rest = b.sub(p, back);
        let lo = b.convert(ScalarType::F16, rest);
        let x = b.select(is_lo, lo, hi);
        let x = b.select(live, x, zero);
        let iv = b.u32(i);
        b.write_local(mma.b, iv, x);
    }
}

/// This lane's `A` for 16 channels `16 m ..` of the 16-token `half`: element `i` is row
/// (channel) `g (+ 8 for i % 4 >= 2)`, column (token) `2t + i % 2 (+ 8 for i >= 4)`. One 8-byte
/// load gives the channels' 16-bit pieces of tokens `2t, 2t + 1` (word 0) and `2t + 8, 2t + 9`
/// (word 1); shifted right by the bit position of channel `g` in its byte, a word holds the
/// bits of channels `g` and `g + 8` of its two tokens at bits 0, 16 and 8, 24.
fn stage_codes(
    b: &mut Builder,
    dims: &Dims,
    sh: &Shared,
    mma: &MmaLocals,
    msb: bool,
    half: u32,
    m: u32,
) {
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let pieces = dims.v_row / 2;
    let mv = b.u32(m);
    let wm = affine(b, warp, pieces, mv);
    let hv = b.u32(half);
    let block = affine(b, wm, 2, hv);
    let three = b.u32(3);
    let t = b.binary(BinaryOp::And, lane, three);
    let t8 = times(b, t, 8);
    let at = affine(b, block, 2 * TOKENS, t8);
    let bytes = b.load_aligned(sh.vstage, at, 8);
    let words = b.bitcast_to(Type::Vector(ScalarType::U32, 2), bytes);
    let two = b.u32(2);
    let g = b.binary(BinaryOp::Shr, lane, two);
    let shift = match msb {
        true => {
            let seven = b.u32(7);
            b.sub(seven, g)
        }
        false => g,
    };
    let mask = b.u32((1 << HALF_BIT) | (1 << (16 + HALF_BIT)));
    let sixteen = b.u32(16);
    for w in 0..2u8 {
        let word = b.extract(words, w);
        let v = b.binary(BinaryOp::Shr, word, shift);
        // Channel g (bits 0, 16 of v) and channel g + 8 (bits 8, 24) to bit 10 of each half.
        for (k, up) in [HALF_BIT, HALF_BIT - 8].into_iter().enumerate() {
            let upv = b.u32(up);
            let x = b.binary(BinaryOp::Shl, v, upv);
            let pair = b.binary(BinaryOp::And, x, mask);
            let lo = b.convert(ScalarType::U16, pair);
            let hi = b.binary(BinaryOp::Shr, pair, sixteen);
            let hi = b.convert(ScalarType::U16, hi);
            let first = 4 * u32::from(w) + 2 * k as u32;
            for (j, bits) in [lo, hi].into_iter().enumerate() {
                let h = b.bitcast(ScalarType::F16, bits);
                let iv = b.u32(first + j as u32);
                b.write_local(mma.a, iv, h);
            }
        }
    }
}

/// Adds the full-precision value row staged at `slot` of `sh.fp_v`, weighed by `ps` (the
/// heads' weights), to the `D` fragments: lane `4g + t` adds head `t`'s weight times channels
/// `16 m + g` and `16 m + g + 8` to its `hi` columns (element 0 and 2 of fragment `m`), so that
/// an fp chunk's accumulators need no registers of their own.
pub(super) fn add_fp_token(
    b: &mut Builder,
    dims: &Dims,
    sh: &Shared,
    mma: &MmaLocals,
    ps: &[Value],
    slot: Value,
) {
    let lane = b.special(Special::LaneId);
    let (two, three) = (b.u32(2), b.u32(3));
    let t = b.binary(BinaryOp::And, lane, three);
    let g = b.binary(BinaryOp::Shr, lane, two);
    let mut p = b.f32(0.0);
    for (h, &x) in ps.iter().enumerate() {
        let hv = b.u32(h as u32);
        let mine = b.cmp(CmpOp::Eq, t, hv);
        p = b.select(mine, x, p);
    }
    let row = affine(b, slot, dims.d, g);
    for (m, &frag) in mma.d.iter().enumerate() {
        for i in (0..MMA_ACC_LEN).step_by(2) {
            let (r, _) = mma_acc_at(0, i);
            let c = b.u32(m as u32 * CHANNELS + r);
            let at = b.add(row, c);
            let v = b.load(sh.fp_v, at, 1);
            let iv = b.u32(i);
            let a = b.read_local(frag, iv);
            let x = b.mul(p, v);
            let a = b.add(a, x);
            b.write_local(frag, iv, a);
        }
    }
}

/// Scales the `D` fragments as the softmax's running maximum moves: lane `4g + t` holds head
/// `t`'s columns, so each element takes `corr[t]` (1 for a lane past the group's heads, whose
/// columns are zero).
pub(super) fn rescale(b: &mut Builder, mma: &MmaLocals, corr: &[Value]) {
    let lane = b.special(Special::LaneId);
    let three = b.u32(3);
    let t = b.binary(BinaryOp::And, lane, three);
    let mut c = b.f32(1.0);
    for (h, &x) in corr.iter().enumerate() {
        let hv = b.u32(h as u32);
        let mine = b.cmp(CmpOp::Eq, t, hv);
        c = b.select(mine, x, c);
    }
    for &d in &mma.d {
        for i in 0..MMA_ACC_LEN {
            let iv = b.u32(i);
            let x = b.read_local(d, iv);
            let x = b.mul(x, c);
            b.write_local(d, iv, x);
        }
    }
}

/// Stores the `D` fragments as the warp's accumulators `sh.acc[warp][head][channel]`: element
/// `i` of fragment `m` is channel `16 m + g (+ 8 for i >= 2)` and column `2t + i % 2`, so a
/// lane with `t` below the group stores `hi + lo` of head `t` for two channels a fragment, and
/// the lanes together every channel of every head.
pub(super) fn store_mma_sums(b: &mut Builder, dims: &Dims, sh: &Shared, mma: &MmaLocals) {
    let (d, g) = (dims.d, dims.g);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let three = b.u32(3);
    let t = b.binary(BinaryOp::And, lane, three);
    let gv = b.u32(g);
    let has_head = b.cmp(CmpOp::Lt, t, gv);
    b.if_then(has_head, |b| {
        let warp_head = affine(b, warp, g, t);
        let row = times(b, warp_head, d);
        let lane = b.special(Special::LaneId);
        for (m, &frag) in mma.d.iter().enumerate() {
            for i in (0..MMA_ACC_LEN).step_by(2) {
                // The fragment's rows for lane 0 give the channel offsets within `16 m`; a
                // lane adds its `g`.
                let (r, _) = mma_acc_at(0, i);
                let two = b.u32(2);
                let g8 = b.binary(BinaryOp::Shr, lane, two);
                let c = b.u32(m as u32 * CHANNELS + r);
                let c = b.add(c, g8);
                let to = b.add(row, c);
                let (iv, jv) = (b.u32(i), b.u32(i + 1));
                let hi = b.read_local(frag, iv);
                let lo = b.read_local(frag, jv);
                let sum = b.add(hi, lo);
                b.store(sh.acc, to, sum);
            }
        }
    });
}
