//! One step of the tile loop, `P V` side: lanes over channels; 1-bit values at head_dim 128
//! through quad tables and warp shuffles.

use super::*;

/// `acc[h][k] += p_h(t) v_t[lane channel k]` over the warp's tile, lanes over channels: raw
/// codes for a span token, floats for an fp token.
#[allow(clippy::too_many_arguments)]
pub(super) fn values_step(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    base: Value,
) {
    let quads = dims.quad_values || dims.mma_values;
    if dims.quad_values {
        span_values_quads(b, value, dims, at, sh, lc);
    }
    if let Some(mma) = &lc.mma {
        span_values_mma(b, value, dims, at, sh, lc, mma);
    }
    if let (Axis::Channel, Group::Size(n)) = (value.axis, value.group) {
        load_value_row(b, value, n.get() as u32, dims, at, bufs, lc, base);
    }
    let [is_span, start, end] = chunk_tokens(b, dims, at, lc);
    let warp = b.special(Special::WarpId);
    let t0 = b.add(start, base);
    let t0 = affine(b, warp, WARP_SIZE, t0);
    // The quad tables or tensor cores did the span tokens: an item that is a span chunk
    // (block-uniform) skips the loop.
    let todo = match quads {
        true => {
            let no = b.bool(false);
            b.cmp(CmpOp::Eq, is_span, no)
        }
        false => b.bool(true),
    };
    b.if_then(todo, |b| {
        per_token_values(b, value, dims, at, bufs, sh, lc, t0, [is_span, end])
    });
}

/// `values_step`'s loop over the warp's 32 tokens, one token at a time (the lanes over
/// channels): every token of an fp chunk, and of a span chunk unless quad tables did them.
#[allow(clippy::too_many_arguments)]
fn per_token_values(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    t0: Value,
    [is_span, end]: [Value; 2],
) {
    let (d, cpl) = (dims.d, dims.cpl);
    let z = b.u32(0);
    let n = b.u32(WARP_SIZE);
    b.for_range(z, n, 1, |b, j| {
        let t = b.add(t0, j);
        let ok = b.cmp(CmpOp::Lt, t, end);
        b.if_then(ok, |b| {
            let warp = b.special(Special::WarpId);
            let slot = affine(b, warp, WARP_SIZE, j);
            let ps = load_probs(b, dims, sh, slot);
            if let Some(mma) = &lc.mma {
                // Only fp chunks come here (the tensor cores did the span's tokens).
                add_fp_token(b, dims, sh, mma, &ps, slot);
                return;
            }
            let accumulate = |b: &mut Builder, vals: &[Value]| {
                for (h, &p) in ps.iter().enumerate() {
                    for (k, &v) in vals.iter().enumerate() {
                        let i = b.u32(h as u32 * cpl + k as u32);
                        let a = b.read_local(lc.acc, i);
                        let x = b.mul(p, v);
                        let a = b.add(a, x);
                        b.write_local(lc.acc, i, a);
                    }
                }
            };
            b.if_else(
                is_span,
                |b| {
                    let codes = lane_value_codes(b, value, dims, sh, j);
                    match (value.axis, value.group) {
                        (Axis::Channel, Group::All) => accumulate(b, &codes),
                        (Axis::Channel, Group::Size(_)) => {
                            let vals = dequantize_with_row(b, lc, codes);
                            accumulate(b, &vals);
                        }
                        (Axis::Token, _) => {
                            let vals = dequantize_token_row(b, value, dims, at, bufs, lc, t, codes);
                            accumulate(b, &vals);
                        }
                    }
                },
                |b| {
                    let row = times(b, slot, d);
                    let lane = b.special(Special::LaneId);
                    let c0 = affine(b, lane, cpl, row);
                    let vals: Vec<Value> = (0..cpl)
                        .map(|k| {
                            let kv = b.u32(k);
                            let i = b.add(c0, kv);
                            b.load(sh.fp_v, i, 1)
                        })
                        .collect();
                    accumulate(b, &vals);
                },
            );
        });
    });
}

/// Values of axis = channel, group = N (N a multiple of 32, so the warp's 32 tokens of the step
/// at `base` share one parameter row): the zeros and scales of the lane's channels in that row
/// into `lc.vpar`, for a span item whose step has tokens.
#[allow(clippy::too_many_arguments)]
fn load_value_row(
    b: &mut Builder,
    value: &Scheme,
    n: u32,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    lc: &Locals,
    base: Value,
) {
    let [go, t0] = warp_row(b, dims, at, lc, base);
    b.if_then(go, |b| {
        let [zeros, scales] = lane_group_params(b, value, n, dims, at, lc, t0, f::V_PARAMS, bufs.v);
        for (k, x) in zeros.into_iter().chain(scales).enumerate() {
            let kv = b.u32(k as u32);
            b.write_local(lc.vpar, kv, x);
        }
    });
}

/// `zero_k + scale_k code_k` for the lane's channels, with the row in `lc.vpar`.
fn dequantize_with_row(b: &mut Builder, lc: &Locals, codes: Vec<Value>) -> Vec<Value> {
    let cpl = codes.len() as u32;
    codes
        .into_iter()
        .enumerate()
        .map(|(k, code)| {
            let zi = b.u32(k as u32);
            let z = b.read_local(lc.vpar, zi);
            let si = b.u32(cpl + k as u32);
            let s = b.read_local(lc.vpar, si);
            let x = b.mul(s, code);
            b.add(z, x)
        })
        .collect()
}

/// The lane's channels of span token `t`'s value row for token-axis values: `zero + scale *
/// code` with the row's parameter of the lane's channel group (a lane's `d / 32` channels lie
/// in one group: [`supports`]).
#[allow(clippy::too_many_arguments)]
fn dequantize_token_row(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    lc: &Locals,
    t: Value,
    codes: Vec<Value>,
) -> Vec<Value> {
    let groups = match value.group {
        Group::All => 1,
        Group::Size(n) => dims.d / n.get() as u32,
    };
    let span_len = field(b, lc, f::SPAN_LEN);
    let params = field(b, lc, f::V_PARAMS);
    let hs = b.mul(at.h, span_len);
    let row = b.add(hs, t);
    let first = affine(b, row, groups, params);
    let pi = match value.group {
        Group::All => first,
        Group::Size(n) => {
            // Group of the lane's first channel: lane * cpl / n = lane / (n / cpl).
            let lane = b.special(Special::LaneId);
            let lanes = b.u32(n.get() as u32 / dims.cpl);
            let gi = b.div(lane, lanes);
            b.add(first, gi)
        }
    };
    let zero = param_f32(b, bufs.v[1], pi, value);
    let scale = param_f32(b, bufs.v[2], pi, value);
    codes
        .into_iter()
        .map(|code| {
            let x = b.mul(scale, code);
            b.add(zero, x)
        })
        .collect()
}

/// The weights of the `g` heads of the warp's token row `slot`, `gv` heads per load.
pub(super) fn load_probs(b: &mut Builder, dims: &Dims, sh: &Shared, slot: Value) -> Vec<Value> {
    let first = times(b, slot, dims.gp);
    load_probs_at(b, dims, sh, first, 0)
}

/// The weights of the `g` heads of the token row whose first weight is at `first + offset`.
fn load_probs_at(
    b: &mut Builder,
    dims: &Dims,
    sh: &Shared,
    first: Value,
    offset: u32,
) -> Vec<Value> {
    let g = dims.g as usize;
    let mut ps: Vec<Value> = Vec::with_capacity(g);
    for k in 0..dims.gp / dims.gv {
        let off = b.u32(offset + k * dims.gv);
        let pi = b.add(first, off);
        let v = b.load_aligned(sh.probs, pi, dims.gv as u8);
        for i in 0..dims.gv {
            if ps.len() < g {
                ps.push(if dims.gv == 1 {
                    v
                } else {
                    b.extract(v, i as u8)
                });
            }
        }
    }
    ps
}

/// Whether the span's values go through quad tables: 1-bit channel-axis codes (post-scaled)
/// and four channels per lane (head_dim 128), so that a lane's channels are one nibble of each
/// code row.
pub(super) fn quad_values(value: &Scheme, dims: &Dims) -> bool {
    value.axis == Axis::Channel
        && value.group == Group::All
        && value.bits.width() == 1
        && dims.cpl == 4
}

/// `acc[h][k] += sum_t p_h(t) code_t[lane channel k]` over the warp's tile for 1-bit value
/// codes, four tokens (a quad) per table, two quads per step: lane `l` builds entry
/// `v = l % 16` of each head's table of quad `l / 16`, `sum over the quad's tokens i with bit i
/// of v set of p_h(i)`; for each of its four channels and both quads, the lane gathers the
/// channel's four code bits (one per token) into a nibble and receives that entry from the lane
/// holding it (a warp shuffle per channel and quad for all heads): 4 shuffles and adds per
/// channel and quad instead of 4 multiply-adds per token, and each lane builds one table per
/// two quads. Collective, so it runs for every item; fp items add zeros (their entries are 0).
pub(super) fn span_values_quads(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
) {
    let (g, cpl) = (dims.g, dims.cpl);
    // Bit position of lane channel k within the lane's nibble, and of that nibble in its byte
    // (even lanes own the first four channels of a byte).
    let msb = value.order == crate::scheme::BitOrder::Msb;
    let pos = |k: u32| if msb { 3 - k } else { k };
    let z = b.u32(0);
    let pairs = b.u32(WARP_SIZE / 8);
    b.for_range(z, pairs, 1, |b, pair| {
        let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
        let warp = b.special(Special::WarpId);
        let lane = b.special(Special::LaneId);
        // Lanes 0..16 hold the table of the pair's first quad, lanes 16..32 of its second:
        // entry v = lane % 16 of quad 2 pair + lane / 16.
        let q8 = times(b, pair, 8);
        let four = b.u32(4);
        let upper = b.binary(BinaryOp::Shr, lane, four);
        let mine = affine(b, upper, 4, q8);
        let row0 = affine(b, warp, WARP_SIZE, mine);
        let fifteen = b.u32(15);
        let v = b.binary(BinaryOp::And, lane, fifteen);
        let fz = b.f32(0.0);
        let first = times(b, row0, dims.gp);
        let mut entries: Vec<Value> = Vec::with_capacity(g as usize);
        for i in 0..4u32 {
            let ps = load_probs_at(b, dims, sh, first, i * dims.gp);
            let bit = b.u32(1 << i);
            let set = b.binary(BinaryOp::And, v, bit);
            let zero = b.u32(0);
            let set = b.cmp(CmpOp::Ne, set, zero);
            for (h, p) in ps.into_iter().enumerate() {
                let x = b.select(set, p, fz);
                match entries.get_mut(h) {
                    Some(e) => *e = b.add(*e, x),
                    None => entries.push(x),
                }
            }
        }
        for (h, e) in entries.into_iter().enumerate() {
            let e = b.select(is_span, e, fz);
            let hv = b.u32(h as u32);
            b.write_local(lc.entry, hv, e);
        }
        let one = b.u32(1);
        let odd = b.binary(BinaryOp::And, lane, one);
        let zero = b.u32(0);
        let is_odd = b.cmp(CmpOp::Ne, odd, zero);
        let nil = b.u32(0);
        let shift = match msb {
            true => b.select(is_odd, nil, four),
            false => b.select(is_odd, four, nil),
        };
        let half = b.binary(BinaryOp::Shr, lane, one);
        let rows = affine(b, warp, dims.v_row, half);
        let rows = times(b, rows, WARP_SIZE);
        for quad in 0..2u32 {
            // The lane's byte of the quad's four rows, one per byte of a word (the rows are
            // staged transposed: `stage_value_row`), its nibble at bits 8i..8i+4 of `x`.
            let off = b.u32(4 * quad);
            let q4 = b.add(q8, off);
            let at = b.add(rows, q4);
            let bytes = b.load_aligned(sh.vstage, at, 4);
            let word = b.bitcast(ScalarType::U32, bytes);
            let x = b.binary(BinaryOp::Shr, word, shift);
            for k in 0..cpl {
                // Bits 8i + pos(k) of x, gathered into bits 21..25 by one multiply (the
                // partial products land on distinct bits, so nothing carries into them); the
                // entry lives in lane nibble (first quad) or 16 + nibble (second).
                let pk = b.u32(pos(k));
                let y = b.binary(BinaryOp::Shr, x, pk);
                let spread = b.u32(0x0101_0101);
                let y = b.binary(BinaryOp::And, y, spread);
                let gather = b.u32(0x0020_4081);
                let y = b.mul(y, gather);
                let at = b.u32(21);
                let y = b.binary(BinaryOp::Shr, y, at);
                let nib = b.binary(BinaryOp::And, y, fifteen);
                let src = match quad {
                    0 => nib,
                    _ => {
                        let sixteen = b.u32(16);
                        b.binary(BinaryOp::Or, nib, sixteen)
                    }
                };
                let kv = b.u32(quad * cpl + k);
                b.write_local(lc.nibs, kv, src);
            }
        }
        for j in 0..2 * cpl {
            let k = j % cpl;
            let jv = b.u32(j);
            let nib = b.read_local(lc.nibs, jv);
            let z = b.u32(0);
            b.write_local(lc.src_lane, z, nib);
            b.warp(WarpOp::ShuffleIdx {
                src: lc.entry,
                dst: lc.got,
                lane: lc.src_lane,
            });
            for h in 0..g {
                let hv = b.u32(h);
                let got = b.read_local(lc.got, hv);
                let i = b.u32(h * cpl + k);
                let a = b.read_local(lc.acc, i);
                let a = b.add(a, got);
                b.write_local(lc.acc, i, a);
            }
        }
    });
}

/// The codes (as f32) of the lane's `d / 32` channels in row `j` of the warp's staged value
/// rows.
pub(super) fn lane_value_codes(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    sh: &Shared,
    j: Value,
) -> Vec<Value> {
    let cpl = dims.cpl;
    let vb = value.bits.width();
    let per_byte = value.bits.codes_per_byte() as u32;
    let warp = b.special(Special::WarpId);
    let slot = affine(b, warp, WARP_SIZE, j);
    let row = times(b, slot, dims.v_row);
    let lane = b.special(Special::LaneId);
    let lane_bits = cpl * vb;
    if lane_bits >= 8 {
        // The lane owns whole bytes: `nb` of them from byte `lane * nb`.
        let nb = lane_bits / 8;
        let start = affine(b, lane, nb, row);
        let mut out = Vec::with_capacity(cpl as usize);
        for i in 0..nb {
            let off = b.u32(i);
            let idx = b.add(start, off);
            let byte = b.load(sh.vstage, idx, 1);
            for k in 0..per_byte {
                let code = b.unpack_bits(byte, k as u8, value.bits, value.order);
                out.push(b.convert(ScalarType::F32, code));
            }
        }
        return out;
    }
    // Several lanes share a byte: the lane's codes are at positions `(lane % lanes) * cpl + k`.
    let lanes = 8 / lane_bits;
    let lv = b.u32(lanes);
    let bi = b.div(lane, lv);
    let idx = b.add(row, bi);
    let byte = b.load(sh.vstage, idx, 1);
    let byte = b.convert(ScalarType::U32, byte);
    let sub = b.rem(lane, lv);
    let first = times(b, sub, cpl);
    let mask = b.u32(value.bits.max_code() as u32);
    (0..cpl)
        .map(|k| {
            let kv = b.u32(k);
            let pos = b.add(first, kv);
            // bit_shift of position `pos`: msb: 8 - (pos + 1) b; lsb: pos b.
            let shift = match value.order {
                crate::scheme::BitOrder::Msb => {
                    let one = b.u32(1);
                    let p1 = b.add(pos, one);
                    let used = times(b, p1, vb);
                    let eight = b.u32(8);
                    b.sub(eight, used)
                }
                crate::scheme::BitOrder::Lsb => times(b, pos, vb),
            };
            let code = b.binary(BinaryOp::Shr, byte, shift);
            let code = b.binary(BinaryOp::And, code, mask);
            b.convert(ScalarType::F32, code)
        })
        .collect()
}
