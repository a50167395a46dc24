//! Keys of axis = channel, group = N (KIVI's keys: a zero and scale per channel and group of N
//! tokens) in the block-per-item layout. N is a multiple of 32 and span chunks start at
//! multiples of 32 tokens, so the 32 tokens of a warp's step share one parameter row: per step,
//! each warp stages `q'[c][h] = qs[h][c] scale_c` of its row in shared memory (lanes over
//! channels) and sums `bias_h = q . zero` over its lanes; a lane's token's logit is then
//! `bias_h` plus the sum over channels of `q'[c][h] code_c` (the heads of a channel side by
//! side: one vector load for `gv` heads). No tables: a row of tables would serve only 32
//! tokens.

use super::*;

/// The warp's parameter row for the tile at `base` of a span item: `lc.bias` and the warp's
/// rows of `qg`; fp items and warps past the chunk's end leave them as they are. Warp
/// collective (a reduction); a barrier must separate it from the logits that read `qg`, and
/// from the previous step's.
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_group_query(
    b: &mut Builder,
    key: &Scheme,
    n: u32,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    base: Value,
    calibrated: bool,
) {
    let (d, g, cpl) = (dims.d, dims.g, dims.cpl);
    for h in 0..g {
        let hv = b.u32(h);
        let z = b.f32(0.0);
        b.write_local(lc.red, hv, z);
    }
    let [go, t0] = warp_row(b, dims, at, lc, base);
    b.if_then(go, |b| {
        let [zeros, scales] = lane_group_params(b, key, n, dims, at, lc, t0, f::K_PARAMS, bufs.k);
        let lane = b.special(Special::LaneId);
        let c0 = times(b, lane, cpl);
        let warp = b.special(Special::WarpId);
        let wrow = times(b, warp, d);
        for h in 0..g {
            let hv = b.u32(h);
            let qrow = times(b, hv, d);
            let mut acc = b.read_local(lc.red, hv);
            for k in 0..cpl {
                let kv = b.u32(k);
                let c = b.add(c0, kv);
                let qi = b.add(qrow, c);
                let q = b.load(sh.qs, qi, 1);
                let term = b.mul(q, zeros[k as usize]);
                acc = b.add(acc, term);
                let x = b.mul(q, scales[k as usize]);
                let wc = b.add(wrow, c);
                let to = affine(b, wc, dims.gp, hv);
                b.store(sh.qg, to, x);
            }
            b.write_local(lc.red, hv, acc);
        }
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: lc.red,
    });
    // (Values do not cross the reduction: its region is a new one.)
    let [go, _] = warp_row(b, dims, at, lc, base);
    b.if_then(go, |b| {
        for h in 0..g {
            let hv = b.u32(h);
            let x = b.read_local(lc.red, hv);
            let x = match calibrated {
                // The calibration's offset (its factor is in the folded query).
                true => {
                    let [_, c] = calibration_map(b, dims, sh, h);
                    b.add(x, c)
                }
                false => x,
            };
            b.write_local(lc.bias, hv, x);
        }
    });
}

/// The zeros and scales (as f32) of the lane's `d / 32` channels in parameter row (kv head,
/// `t0 / n`) of a `[kv_heads, ceil(span_len / n), d]` parameter array (keys or values of axis
/// = channel, group = N) whose offset is sequence field `params`; `mems` are the scheme's
/// (codes, zeros, scales) buffers.
#[allow(clippy::too_many_arguments)]
pub(super) fn lane_group_params(
    b: &mut Builder,
    scheme: &Scheme,
    n: u32,
    dims: &Dims,
    at: &Item,
    lc: &Locals,
    t0: Value,
    params: u32,
    mems: [Memory; 3],
) -> [Vec<Value>; 2] {
    let span_len = field(b, lc, f::SPAN_LEN);
    let nm1 = b.u32(n - 1);
    let padded = b.add(span_len, nm1);
    let nv = b.u32(n);
    let groups = b.div(padded, nv);
    let gi = b.div(t0, nv);
    let hg = b.mul(at.h, groups);
    let row = b.add(hg, gi);
    let params = field(b, lc, params);
    let prow = affine(b, row, dims.d, params);
    let lane = b.special(Special::LaneId);
    let c0 = times(b, lane, dims.cpl);
    let pi = b.add(prow, c0);
    [
        params_f32(b, mems[1], pi, dims.cpl, scheme),
        params_f32(b, mems[2], pi, dims.cpl, scheme),
    ]
}

/// Whether the warp's tile at `base` has tokens of a span item, and its first token.
pub(super) fn warp_row(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    lc: &Locals,
    base: Value,
) -> [Value; 2] {
    let [is_span, start, end] = chunk_tokens(b, dims, at, lc);
    let warp = b.special(Special::WarpId);
    let t0 = b.add(start, base);
    let t0 = affine(b, warp, WARP_SIZE, t0);
    let inside = b.cmp(CmpOp::Lt, t0, end);
    [b.binary(BinaryOp::And, is_span, inside), t0]
}

/// `s[h] += sum_c q'[c][h] code_c` over the key code row at byte `row` (aligned to `a`), from
/// the warp's rows of `qg`.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_group_logits(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    bufs: &ItemParams,
    sh: &Shared,
    row: Value,
    a: u32,
    s: &mut [Value],
) {
    let per_byte = key.bits.codes_per_byte() as u32;
    let warp = b.special(Special::WarpId);
    let wrow = times(b, warp, dims.d);
    for (j, byte) in key_row_bytes(b, dims, bufs, row, a).into_iter().enumerate() {
        for k in 0..per_byte {
            let code = b.unpack_bits(byte, k as u8, key.bits, key.order);
            let code = b.convert(ScalarType::F32, code);
            let cv = b.u32(j as u32 * per_byte + k);
            let entry = b.add(wrow, cv);
            add_heads(b, dims, sh.qg, entry, Some(code), s);
        }
    }
}
