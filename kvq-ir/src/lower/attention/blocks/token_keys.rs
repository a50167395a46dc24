//! Keys of axis = token (a zero and scale per token and group of channels) in the
//! block-per-item layout. A lane's token has its own parameters, so nothing can be folded into
//! the query ahead: the block stages `qs` with the heads side by side (`qg[c][h]`) and its sum
//! over each group's channels (`qsum[j][h]`) once, and a token's logit is
//! `sum_j scale_j (sum over group j of qs[h][c] code_c) + zero_j qsum[j][h]`.

use super::*;

/// A token-axis key row: `groups` parameters of `width` channels each.
#[derive(Clone, Copy)]
pub(super) struct TokenRows {
    pub groups: u32,
    pub width: u32,
}

/// Setup for token-axis keys: `qg[c][h] = qs[h][c]`, `qsum[j][h]` (a fixed order: channels
/// ascending), threads over (channel or group, head). A barrier must follow before the logits
/// read them.
pub(super) fn stage_token_query(
    b: &mut Builder,
    dims: &Dims,
    sh: &Shared,
    groups: u32,
    width: u32,
    block: u32,
) {
    let (d, g) = (dims.d, dims.g);
    let tid = b.special(Special::ThreadId);
    let n = b.u32(d * g);
    b.for_range(tid, n, block, |b, e| {
        let gv = b.u32(g);
        let c = b.div(e, gv);
        let h = b.rem(e, gv);
        let from = affine(b, h, d, c);
        let x = b.load(sh.qs, from, 1);
        let to = affine(b, c, dims.gp, h);
        b.store(sh.qg, to, x);
    });
    let tid = b.special(Special::ThreadId);
    let n = b.u32(groups * g);
    b.for_range(tid, n, block, |b, e| {
        let gv = b.u32(g);
        let j = b.div(e, gv);
        let h = b.rem(e, gv);
        let first = times(b, j, width);
        let row = affine(b, h, d, first);
        let mut acc = b.f32(0.0);
        for i in 0..width {
            let iv = b.u32(i);
            let at = b.add(row, iv);
            let x = b.load(sh.qs, at, 1);
            acc = b.add(acc, x);
        }
        let to = affine(b, j, dims.gp, h);
        b.store(sh.qsum, to, acc);
    });
}

/// The bias of token-axis keys: 0, plus the calibration offset of a calibrated span item.
pub(super) fn token_bias(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    calibrated: bool,
) {
    for h in 0..dims.g {
        let hv = b.u32(h);
        let z = b.f32(0.0);
        b.write_local(lc.bias, hv, z);
    }
    if calibrated {
        add_calibration_offset(b, dims, at, sh, lc);
    }
}

/// `s[h] += sum_j scale_j part_j[h] + zero_j qsum[j][h]` for the key code row at byte `row`
/// (aligned to `a`) of token row `tr` (kv head x span length + token), `part_j[h]` the sum over
/// group `j`'s channels of `qg[c][h] code_c`.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_token_logits(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    tr: Value,
    row: Value,
    a: u32,
    rows: TokenRows,
    s: &mut [Value],
) {
    let per_byte = key.bits.codes_per_byte() as u32;
    let params = field(b, lc, f::K_PARAMS);
    let pbase = affine(b, tr, rows.groups, params);
    let zero = b.f32(0.0);
    let mut part = vec![zero; s.len()];
    for (j, byte) in key_row_bytes(b, dims, bufs, row, a).into_iter().enumerate() {
        for k in 0..per_byte {
            let c = j as u32 * per_byte + k;
            let code = b.unpack_bits(byte, k as u8, key.bits, key.order);
            let code = b.convert(ScalarType::F32, code);
            let cv = b.u32(c);
            add_heads(b, dims, sh.qg, cv, Some(code), &mut part);
            if (c + 1) % rows.width == 0 {
                // The end of group j: fold it with the token's parameters.
                let j = c / rows.width;
                let jv = b.u32(j);
                let pi = b.add(pbase, jv);
                let z = param_f32(b, bufs.k[1], pi, key);
                let sc = param_f32(b, bufs.k[2], pi, key);
                let mut sums = vec![zero; s.len()];
                add_heads(b, dims, sh.qsum, jv, None, &mut sums);
                for ((acc, p), q) in s.iter_mut().zip(&part).zip(sums) {
                    let x = b.mul(sc, *p);
                    let y = b.mul(z, q);
                    let x = b.add(x, y);
                    *acc = b.add(*acc, x);
                }
                part.fill(zero);
            }
        }
    }
}
