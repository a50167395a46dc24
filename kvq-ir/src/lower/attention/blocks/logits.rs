//! One step of the tile loop, logits side: fp rows staged, each lane's token's logits (key
//! tables or fp dot products), the value code rows staged, and the warp's online softmax.

use super::*;
use crate::lower::attention::item_params::load_fp;

/// For an fp item, the block copies the tokens `start + base ..` of its chunk (at most
/// [`FP_CHUNK`]) into `fp_k_rows` and (partial only) `fp_v_rows`, threads over four floats of a
/// row: whole rows per warp request. A barrier must follow.
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_fp_rows(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    base: Value,
    mode: Mode,
    block: u32,
) {
    let d = dims.d;
    let [is_span, start, end] = chunk_tokens(b, dims, at, lc);
    let no = b.bool(false);
    let is_fp = b.cmp(CmpOp::Eq, is_span, no);
    b.if_then(is_fp, |b| {
        let fp_base = field(b, lc, f::FP_BASE);
        let fp_len = field(b, lc, f::FP_LEN);
        let t0 = b.add(start, base);
        let tid = b.special(Special::ThreadId);
        let n = b.u32(dims.fp_chunk * d / 4);
        b.for_range(tid, n, block, |b, e| {
            let quads = b.u32(d / 4);
            let r = b.div(e, quads);
            let c = b.rem(e, quads);
            let c = times(b, c, 4);
            let t = b.add(t0, r);
            let ok = b.cmp(CmpOp::Lt, t, end);
            b.if_then(ok, |b| {
                let hr = b.mul(at.h, fp_len);
                let tr = b.add(hr, t);
                let row = affine(b, tr, d, fp_base);
                let src = b.add(row, c);
                let k = load_fp(b, bufs.fp, bufs.fp_k, src, 4);
                let kr = times(b, r, d + 1);
                let kr = b.add(kr, c);
                for i in 0..4u8 {
                    let x = b.extract(k, i);
                    let off = b.u32(u32::from(i));
                    let to = b.add(kr, off);
                    b.store(sh.fp_k, to, x);
                }
                if mode == Mode::Partial {
                    let v = load_fp(b, bufs.fp, bufs.fp_v, src, 4);
                    let vr = affine(b, r, d, c);
                    b.store_aligned(sh.fp_v, vr, v);
                }
            });
        });
    });
}

/// The lane's token at tile offset `base`: (is the item a span chunk, token index, whether the
/// token exists).
pub(super) fn lane_token(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    lc: &Locals,
    base: Value,
) -> [Value; 3] {
    let [is_span, start, end] = chunk_tokens(b, dims, at, lc);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let t = b.add(start, base);
    let t = affine(b, warp, WARP_SIZE, t);
    let t = b.add(t, lane);
    let valid = b.cmp(CmpOp::Lt, t, end);
    [is_span, t, valid]
}

/// The largest power of two up to 16 dividing `bytes`: the vector width of aligned loads of
/// rows of `bytes` bytes.
pub(super) fn row_vector(bytes: u32) -> u32 {
    let mut a = 16;
    while bytes % a != 0 {
        a /= 2;
    }
    a
}

/// `offset` rounded down to a multiple of `a` (a no-op for the batch plan's offsets, which are
/// whole rows), so that the verifier can prove the alignment of the row loads.
pub(super) fn aligned_offset(b: &mut Builder, offset: Value, a: u32) -> Value {
    let av = b.u32(a);
    let q = b.div(offset, av);
    b.mul(q, av)
}

/// The lane's token's logits into `lc.s` (-inf for a lane without a token): for a span token
/// from its key codes (the calibration, if any, is folded into the staged query and bias:
/// [`fold_calibration`]), for an fp token its dot products; `partial` also stages the span
/// token's value row.
#[allow(clippy::too_many_arguments)]
pub(super) fn logits(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    base: Value,
    mode: Mode,
) {
    let (d, g) = (dims.d, dims.g);
    let ninf = b.f32(f32::NEG_INFINITY);
    for h in 0..g {
        let hv = b.u32(h);
        b.write_local(lc.s, hv, ninf);
    }
    let [is_span, t, valid] = lane_token(b, dims, at, lc, base);
    b.if_then(valid, |b| {
        b.if_else(
            is_span,
            |b| {
                let a = row_vector(dims.k_row);
                let kc = field(b, lc, f::K_CODES);
                let kc = aligned_offset(b, kc, a);
                let span_len = field(b, lc, f::SPAN_LEN);
                let hr = b.mul(at.h, span_len);
                let tr = b.add(hr, t);
                let row = affine(b, tr, dims.k_row, kc);
                let mut s: Vec<Value> = (0..g)
                    .map(|h| {
                        let hv = b.u32(h);
                        b.read_local(lc.bias, hv)
                    })
                    .collect();
                match dims.keys {
                    KeyLayout::Tables => add_table_logits(b, dims, bufs, sh, row, a, &mut s),
                    KeyLayout::ChannelGroups(_) => {
                        add_group_logits(b, key, dims, bufs, sh, row, a, &mut s)
                    }
                    KeyLayout::TokenRows { groups, width } => {
                        let rows = TokenRows { groups, width };
                        add_token_logits(b, key, dims, bufs, sh, lc, tr, row, a, rows, &mut s)
                    }
                }
                if mode == Mode::Partial {
                    stage_value_row(b, dims, at, bufs, sh, lc, t);
                }
                for (h, x) in s.into_iter().enumerate() {
                    let hv = b.u32(h as u32);
                    b.write_local(lc.s, hv, x);
                }
            },
            |b| {
                // The token's row of the staged fp chunk: `t - start - base`.
                let warp = b.special(Special::WarpId);
                let lane = b.special(Special::LaneId);
                let r = affine(b, warp, WARP_SIZE, lane);
                let row = times(b, r, d + 1);
                let z = b.f32(0.0);
                for h in 0..g {
                    let hv = b.u32(h);
                    b.write_local(lc.s, hv, z);
                }
                let zero = b.u32(0);
                let dn = b.u32(d);
                b.for_range(zero, dn, 1, |b, c| {
                    let i = b.add(row, c);
                    let k = b.load(sh.fp_k, i, 1);
                    for h in 0..g {
                        let hv = b.u32(h);
                        let qi = affine(b, hv, d, c);
                        let q = b.load(sh.qs, qi, 1);
                        let x = b.mul(q, k);
                        let acc = b.read_local(lc.s, hv);
                        let acc = b.add(acc, x);
                        b.write_local(lc.s, hv, acc);
                    }
                });
            },
        );
    });
}

/// `s[h] += sum_p T[h][p][nibble p]` over the key code row at byte `row` (aligned to `a`), from
/// the key tables (keys of group = all).
fn add_table_logits(
    b: &mut Builder,
    dims: &Dims,
    bufs: &ItemParams,
    sh: &Shared,
    row: Value,
    a: u32,
    s: &mut [Value],
) {
    for (j, byte) in key_row_bytes(b, dims, bufs, row, a).into_iter().enumerate() {
        let j = j as u32;
        let byte = b.convert(ScalarType::U32, byte);
        let four = b.u32(4);
        let hi = b.binary(BinaryOp::Shr, byte, four);
        let fifteen = b.u32(15);
        let lo = b.binary(BinaryOp::And, byte, fifteen);
        for (p, nib) in [(2 * j, hi), (2 * j + 1, lo)] {
            let row = b.u32(p * TABLE_ROW);
            let entry = b.add(row, nib);
            add_heads(b, dims, sh.table, entry, None, s);
        }
    }
}

/// The `k_row` bytes of the key code row at byte `row`, read with aligned vector loads of `a`
/// bytes.
pub(super) fn key_row_bytes(
    b: &mut Builder,
    dims: &Dims,
    bufs: &ItemParams,
    row: Value,
    a: u32,
) -> Vec<Value> {
    let mut bytes = Vec::with_capacity(dims.k_row as usize);
    for piece in 0..dims.k_row / a {
        let off = b.u32(piece * a);
        let idx = b.add(row, off);
        let v = b.load_aligned(bufs.k[0], idx, a as u8);
        for i in 0..a {
            bytes.push(if a == 1 { v } else { b.extract(v, i as u8) });
        }
    }
    bytes
}

/// Adds the `g` heads of table entry `entry` (`(nibble position) * TABLE_ROW + nibble`) to `s`,
/// `gv` heads per aligned vector load.
pub(super) fn add_heads(
    b: &mut Builder,
    dims: &Dims,
    table: Memory,
    entry: Value,
    weight: Option<Value>,
    s: &mut [Value],
) {
    let base = times(b, entry, dims.gp);
    for k in 0..dims.gp / dims.gv {
        let off = b.u32(k * dims.gv);
        let idx = b.add(base, off);
        let v = b.load_aligned(table, idx, dims.gv as u8);
        for i in 0..dims.gv {
            let h = (k * dims.gv + i) as usize;
            if let Some(acc) = s.get_mut(h) {
                let x = if dims.gv == 1 {
                    v
                } else {
                    b.extract(v, i as u8)
                };
                let x = match weight {
                    Some(w) => b.mul(x, w),
                    None => x,
                };
                *acc = b.add(*acc, x);
            }
        }
    }
}

/// For a span token, the lane copies its value code row into the warp's rows of `vstage`
/// (aligned vector loads and stores: one request per warp for 32 rows), or, for values through
/// quad tables, into byte `j`'s row of 32 tokens for each `j` (so that a lane reads its byte of
/// four tokens with one load: [`span_values_quads`]).
pub(super) fn stage_value_row(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    t: Value,
) {
    let a = row_vector(dims.v_row);
    let vc = field(b, lc, f::V_CODES);
    let vc = aligned_offset(b, vc, a);
    let span_len = field(b, lc, f::SPAN_LEN);
    let hr = b.mul(at.h, span_len);
    let tr = b.add(hr, t);
    let row = affine(b, tr, dims.v_row, vc);
    if dims.mma_values {
        let v = b.load_aligned(bufs.v[0], row, dims.v_row as u8);
        stage_value_row_mma(b, dims, sh, v);
        return;
    }
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    if dims.quad_values {
        // Transposed: byte j of the lane's row at `(warp * v_row + j) * 32 + lane`.
        let rows = times(b, warp, dims.v_row * WARP_SIZE);
        let to = b.add(rows, lane);
        for piece in 0..dims.v_row / a {
            let off = b.u32(piece * a);
            let from = b.add(row, off);
            let v = b.load_aligned(bufs.v[0], from, a as u8);
            for i in 0..a {
                let byte = if a == 1 { v } else { b.extract(v, i as u8) };
                let off = b.u32((piece * a + i) * WARP_SIZE);
                let dst = b.add(to, off);
                b.store(sh.vstage, dst, byte);
            }
        }
        return;
    }
    let slot = affine(b, warp, WARP_SIZE, lane);
    let to = times(b, slot, dims.v_row);
    for piece in 0..dims.v_row / a {
        let off = b.u32(piece * a);
        let from = b.add(row, off);
        let v = b.load_aligned(bufs.v[0], from, a as u8);
        let dst = b.add(to, off);
        b.store_aligned(sh.vstage, dst, v);
    }
}

/// Stats: folds the lane's span logits into its extremes.
pub(super) fn fold_extremes(b: &mut Builder, dims: &Dims, at: &Item, lc: &Locals, base: Value) {
    let g = dims.g;
    let [_, _, valid] = lane_token(b, dims, at, lc, base);
    let (inf, ninf) = (b.f32(f32::INFINITY), b.f32(f32::NEG_INFINITY));
    for h in 0..g {
        let (hv, hg) = (b.u32(h), b.u32(g + h));
        let s = b.read_local(lc.s, hv);
        let lo_in = b.select(valid, s, inf);
        let hi_in = b.select(valid, s, ninf);
        let lo = b.read_local(lc.ext, hv);
        let lo = b.min(lo, lo_in);
        b.write_local(lc.ext, hv, lo);
        let hi = b.read_local(lc.ext, hg);
        let hi = b.max(hi, hi_in);
        b.write_local(lc.ext, hg, hi);
    }
}

/// One tile of the warp's online softmax: the tile's max over the lanes, the rescaling of the
/// state, the lane's weights (to `probs`) and their sum over the lanes.
pub(super) fn softmax_step(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    base: Value,
) {
    let g = dims.g;
    for h in 0..g {
        let hv = b.u32(h);
        let s = b.read_local(lc.s, hv);
        b.write_local(lc.red, hv, s);
    }
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Max,
        local: lc.red,
    });
    let [_, _, valid] = lane_token(b, dims, at, lc, base);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let slot = affine(b, warp, WARP_SIZE, lane);
    let mut corrs = Vec::with_capacity(g as usize);
    for h in 0..g {
        let hv = b.u32(h);
        let tile_max = b.read_local(lc.red, hv);
        let old = b.read_local(lc.m, hv);
        let new = b.max(old, tile_max);
        let ninf = b.f32(f32::NEG_INFINITY);
        let dead = b.cmp(CmpOp::Eq, new, ninf);
        let diff = b.sub(old, new);
        let corr = b.unary(UnaryOp::Exp, diff);
        let one = b.f32(1.0);
        let corr = b.select(dead, one, corr);
        let l = b.read_local(lc.l, hv);
        let l = b.mul(l, corr);
        b.write_local(lc.l, hv, l);
        b.write_local(lc.m, hv, new);
        corrs.push(corr);
        // (The tensor-core `P V` keeps no accumulators here: `rescale` below.)
        for k in 0..dims.cpl * u32::from(lc.mma.is_none()) {
            let i = b.u32(h * dims.cpl + k);
            let a = b.read_local(lc.acc, i);
            let a = b.mul(a, corr);
            b.write_local(lc.acc, i, a);
        }
        let s = b.read_local(lc.s, hv);
        let x = b.sub(s, new);
        let p = b.unary(UnaryOp::Exp, x);
        let z = b.f32(0.0);
        let p = b.select(valid, p, z);
        b.write_local(lc.red, hv, p);
        let pi = affine(b, slot, dims.gp, hv);
        b.store(sh.probs, pi, p);
    }
    if let Some(mma) = &lc.mma {
        rescale(b, mma, &corrs);
    }
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: lc.red,
    });
    for h in 0..g {
        let hv = b.u32(h);
        let sum = b.read_local(lc.red, hv);
        let l = b.read_local(lc.l, hv);
        let l = b.add(l, sum);
        b.write_local(lc.l, hv, l);
    }
}
