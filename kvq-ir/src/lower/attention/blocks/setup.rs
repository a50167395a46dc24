//! Setup of a block-per-item kernel: the staged query, the key tables and bias, the span's
//! calibration, the empty softmax state.

use super::*;

/// `qs[h][c] = q[seq, kv_head * g + h, c] / sqrt(d)` and, for a span item with keys of axis =
/// channel, group = all, `qk[h][c] = qs[h][c] scale_c`, threads over (head, channel).
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_query(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    block: u32,
) {
    let (d, g) = (dims.d, dims.g);
    let seq = field(b, lc, SEQ);
    let heads = b.mul(seq, at.kv_heads);
    let head0 = b.add(heads, at.h);
    let first = times(b, head0, g * d);
    let inv = b.f32(1.0 / (d as f32).sqrt());
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let params = field(b, lc, f::K_PARAMS);
    let prow = affine(b, at.h, d, params);
    let tid = b.special(Special::ThreadId);
    // Four channels per thread and step: one vector load of q (and of the scales).
    let n = b.u32(g * d / 4);
    b.for_range(tid, n, block, |b, e| {
        let e4 = times(b, e, 4);
        let i = b.add(first, e4);
        let q = b.load_aligned(bufs.q, i, 4);
        let qs: Vec<Value> = (0..4)
            .map(|k| {
                let x = b.extract(q, k);
                b.mul(x, inv)
            })
            .collect();
        let v = b.vector(qs.clone());
        b.store_aligned(sh.qs, e4, v);
        // (Keys of group = N scale the query per step instead: group_keys; token-axis keys
        // not at all: token_keys.)
        let scaled = match (key.axis, key.group) {
            (Axis::Channel, Group::All) => is_span,
            _ => b.bool(false),
        };
        b.if_then(scaled, |b| {
            let dv = b.u32(d);
            let c = b.rem(e4, dv);
            let pi = b.add(prow, c);
            let scales = params_f32(b, bufs.k[2], pi, 4, key);
            let qk: Vec<Value> = qs.iter().zip(scales).map(|(&x, s)| b.mul(x, s)).collect();
            let v = b.vector(qk);
            b.store_aligned(sh.qk, e4, v);
        });
    });
}

/// `n` consecutive parameters from `index` (one vector load), as f32.
pub(super) fn params_f32(
    b: &mut Builder,
    mem: Memory,
    index: Value,
    n: u32,
    s: &Scheme,
) -> Vec<Value> {
    let v = b.load(mem, index, n as u8);
    (0..n)
        .map(|k| {
            let x = if n == 1 { v } else { b.extract(v, k as u8) };
            match param_type(s.params) {
                ScalarType::F32 => x,
                _ => b.convert(ScalarType::F32, x),
            }
        })
        .collect()
}

/// The channels of key nibble `high` (the byte's high or low four bits) with the shift of
/// their code within the nibble.
pub(super) fn nibble_codes(key: &Scheme, high: bool) -> Vec<(u32, u32)> {
    let per_byte = key.bits.codes_per_byte();
    (0..per_byte)
        .filter_map(|k| {
            let shift = bit_shift(k, key.bits, key.order);
            match (high, shift >= 4) {
                (true, true) => Some((k as u32, shift - 4)),
                (false, false) => Some((k as u32, shift)),
                _ => None,
            }
        })
        .collect()
}

/// For a span item, `table[h][p][v]` = sum over nibble `p`'s channels `c` of `q'_c code_c(v)`,
/// threads over (nibble `p`, head; the high nibble of byte `j` is `p = 2j`): a thread loads its
/// nibble's `4 / bits` query values once and makes the 16 entries with `v` a constant, each
/// from a smaller one (`T[v] = T[v without its last channel's code] + q'_c code_c(v)`), so
/// that an entry costs one add. The terms are added in channel order, skipping zero codes:
/// the entries are those of the direct sum (up to the sign of a zero entry).
#[allow(clippy::too_many_arguments)]
pub(super) fn build_tables(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    block: u32,
) {
    let (d, g) = (dims.d, dims.g);
    let per_byte = key.bits.codes_per_byte() as u32;
    let mask = key.bits.max_code() as u32;
    // The nibble's channels (their index within the byte, high and low nibble) and the shift
    // of their code within the nibble, in channel order; the two nibbles have the same shifts
    // in the same order (the packing is the same rule per code).
    let slots: Vec<(u32, u32, u32)> = nibble_codes(key, true)
        .into_iter()
        .zip(nibble_codes(key, false))
        .map(|((k_hi, shift), (k_lo, shift_lo))| {
            debug_assert_eq!(shift, shift_lo);
            (k_hi, k_lo, shift)
        })
        .collect();
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        let tid = b.special(Special::ThreadId);
        let n = b.u32(g * dims.nibbles);
        b.for_range(tid, n, block, |b, e| {
            let gv = b.u32(g);
            let h = b.rem(e, gv);
            let p = b.div(e, gv);
            let two = b.u32(2);
            let j = b.div(p, two);
            let odd = b.rem(p, two);
            let zero = b.u32(0);
            let high = b.cmp(CmpOp::Eq, odd, zero);
            let row = times(b, h, d);
            let first = affine(b, j, per_byte, row);
            // terms[i][code - 1] = q'_c code for the slot's channel c and each nonzero code.
            let terms: Vec<Vec<Value>> = slots
                .iter()
                .map(|&(k_hi, k_lo, _)| {
                    let (hi, lo) = (b.u32(k_hi), b.u32(k_lo));
                    let k = b.select(high, hi, lo);
                    let qi = b.add(first, k);
                    let q = b.load(sh.qk, qi, 1);
                    (1..=mask)
                        .map(|code| match code {
                            1 => q,
                            _ => {
                                let c = b.f32(code as f32);
                                b.mul(q, c)
                            }
                        })
                        .collect()
                })
                .collect();
            let row = times(b, p, TABLE_ROW);
            let first_entry = affine(b, row, dims.gp, h);
            let mut entries: Vec<Value> = Vec::with_capacity(16);
            for v in 0..16u32 {
                let codes: Vec<u32> = slots.iter().map(|&(_, _, s)| (v >> s) & mask).collect();
                let entry = match codes.iter().rposition(|&c| c != 0) {
                    None => b.f32(0.0),
                    Some(last) => {
                        let term = terms[last][codes[last] as usize - 1];
                        let rest = v & !(mask << slots[last].2);
                        match codes[..last].iter().any(|&c| c != 0) {
                            true => b.add(entries[rest as usize], term),
                            false => term,
                        }
                    }
                };
                entries.push(entry);
                let off = b.u32(v * dims.gp);
                let to = b.add(first_entry, off);
                b.store(sh.table, to, entry);
            }
        });
    });
}

/// `bias_h = sum_c qs[h][c] zero_c` for a span item (0 for fp items), summed over each warp's
/// lanes (lane `l` takes channels `l, l + 32, ..`); every thread keeps it in `lc.bias`.
#[allow(clippy::too_many_arguments)]
pub(super) fn key_bias(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    calibrated: bool,
) {
    let (d, g) = (dims.d, dims.g);
    for h in 0..g {
        let hv = b.u32(h);
        let z = b.f32(0.0);
        b.write_local(lc.red, hv, z);
    }
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        let params = field(b, lc, f::K_PARAMS);
        let prow = affine(b, at.h, d, params);
        // Lane `l` takes channels `l * cpl ..`: one vector load of their zeros.
        let lane = b.special(Special::LaneId);
        let c0 = times(b, lane, dims.cpl);
        let pi = b.add(prow, c0);
        let zeros = params_f32(b, bufs.k[1], pi, dims.cpl, key);
        for h in 0..g {
            let hv = b.u32(h);
            let row = affine(b, hv, d, c0);
            let mut acc = b.read_local(lc.red, hv);
            for (k, &zero) in zeros.iter().enumerate() {
                let kv = b.u32(k as u32);
                let qi = b.add(row, kv);
                let q = b.load(sh.qs, qi, 1);
                let term = b.mul(q, zero);
                acc = b.add(acc, term);
            }
            b.write_local(lc.red, hv, acc);
        }
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: lc.red,
    });
    for h in 0..g {
        let hv = b.u32(h);
        let x = b.read_local(lc.red, hv);
        b.write_local(lc.bias, hv, x);
    }
    if calibrated {
        add_calibration_offset(b, dims, at, sh, lc);
    }
}

/// Head `h`'s calibration as an affine map of the raw logit, `a x + c` (SPEC.md section 4:
/// `m + (x - m) f` when the factor `f < 1`, else `x`), from `cal` (written by [`calibration`]).
pub(super) fn calibration_map(b: &mut Builder, dims: &Dims, sh: &Shared, h: u32) -> [Value; 2] {
    let hv = b.u32(h);
    let m = b.load(sh.cal, hv, 1);
    let fi = b.u32(dims.g + h);
    let f = b.load(sh.cal, fi, 1);
    let one = b.f32(1.0);
    let squeeze = b.cmp(CmpOp::Lt, f, one);
    let a = b.select(squeeze, f, one);
    let mf = b.mul(m, f);
    let c = b.sub(m, mf);
    let zero = b.f32(0.0);
    [a, b.select(squeeze, c, zero)]
}

/// For a calibrated span item, `qs[h][c] *= a_h` and (keys of axis = channel, group = all)
/// `qk[h][c] *= a_h`: every logit made from them is then `a_h` times the raw one, before the
/// bias gets `c_h` ([`add_calibration_offset`]), so the tile loop applies no calibration.
/// Threads over (head, channel); barriers must surround it.
#[allow(clippy::too_many_arguments)]
pub(super) fn fold_calibration(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    block: u32,
) {
    let (d, g) = (dims.d, dims.g);
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        let tid = b.special(Special::ThreadId);
        let n = b.u32(g * d);
        b.for_range(tid, n, block, |b, e| {
            let dv = b.u32(d);
            let h = b.div(e, dv);
            // `a` of head h: the map of every head, selected (g is small).
            let mut a = b.f32(1.0);
            for hh in 0..g {
                let [ah, _] = calibration_map(b, dims, sh, hh);
                let hv = b.u32(hh);
                let this = b.cmp(CmpOp::Eq, h, hv);
                a = b.select(this, ah, a);
            }
            let x = b.load(sh.qs, e, 1);
            let x = b.mul(x, a);
            b.store(sh.qs, e, x);
            if key.axis == Axis::Channel && key.group == Group::All {
                let x = b.load(sh.qk, e, 1);
                let x = b.mul(x, a);
                b.store(sh.qk, e, x);
            }
        });
    });
}

/// `bias_h += c_h` for a span item of a calibrated kernel (after the bias is made from the
/// folded query).
pub(super) fn add_calibration_offset(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
) {
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        for h in 0..dims.g {
            let [_, c] = calibration_map(b, dims, sh, h);
            let hv = b.u32(h);
            let x = b.read_local(lc.bias, hv);
            let x = b.add(x, c);
            b.write_local(lc.bias, hv, x);
        }
    });
}

/// For a span item, the span's logit extremes per query head from `stats` (every thread folds
/// chunks `tid, tid + block, ..` of the sequence's span, then a block reduction), and the
/// calibration of head `h` in `cal[h]` (the minimum) and `cal[g + h]` (the factor, 1 when the
/// spread is at most `dcal`), SPEC.md section 4.
#[allow(clippy::too_many_arguments)]
pub(super) fn calibration(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    dcal: f32,
    block: u32,
) {
    let g = dims.g;
    let (inf, ninf) = (b.f32(f32::INFINITY), b.f32(f32::NEG_INFINITY));
    for h in 0..g {
        let (lo, hi) = (b.u32(h), b.u32(g + h));
        b.write_local(lc.ext, lo, inf);
        b.write_local(lc.ext, hi, ninf);
    }
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        let first = field(b, lc, f::CHUNK_BASE);
        let n = field(b, lc, f::SPAN_CHUNKS);
        let end = b.add(first, n);
        let tid = b.special(Special::ThreadId);
        let start = b.add(first, tid);
        b.for_range(start, end, block, |b, w| {
            let wh = b.mul(w, at.kv_heads);
            let wh = b.add(wh, at.h);
            let row = times(b, wh, 2 * g);
            for h in 0..g {
                let (lo_i, hi_i) = (b.u32(h), b.u32(g + h));
                let off = b.u32(2 * h);
                let i = b.add(row, off);
                let lo = b.load(bufs.stats, i, 1);
                let one = b.u32(1);
                let j = b.add(i, one);
                let hi = b.load(bufs.stats, j, 1);
                let cur = b.read_local(lc.ext, lo_i);
                let cur = b.min(cur, lo);
                b.write_local(lc.ext, lo_i, cur);
                let cur = b.read_local(lc.ext, hi_i);
                let cur = b.max(cur, hi);
                b.write_local(lc.ext, hi_i, cur);
            }
        });
    });
    warp_extremes(b, dims, sh, lc);
    b.barrier();
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let tid = b.special(Special::ThreadId);
    let gn = b.u32(g);
    let head = b.cmp(CmpOp::Lt, tid, gn);
    let go = b.binary(BinaryOp::And, is_span, head);
    b.if_then(go, |b| {
        let (lo, hi) = fold_warp_extremes(b, dims, sh, tid);
        let (factor, _) = calibration_factor(b, lo, hi, dcal);
        b.store(sh.cal, tid, lo);
        let fi = b.add(tid, gn);
        b.store(sh.cal, fi, factor);
    });
}

/// Reduces the extremes in `lc.ext` (`[g]` minima, then `[g]` maxima) over each warp and has
/// lane 0 store them to `ml[(warp * g + h) * 2 + side]`. A barrier must follow before
/// [`fold_warp_extremes`].
pub(super) fn warp_extremes(b: &mut Builder, dims: &Dims, sh: &Shared, lc: &Locals) {
    let g = dims.g;
    for (side, op) in [(0, ReduceOp::Min), (1, ReduceOp::Max)] {
        for h in 0..g {
            let (hv, src) = (b.u32(h), b.u32(side * g + h));
            let x = b.read_local(lc.ext, src);
            b.write_local(lc.red, hv, x);
        }
        b.warp(WarpOp::Reduce { op, local: lc.red });
        let warp = b.special(Special::WarpId);
        let wg = times(b, warp, g);
        let lane = b.special(Special::LaneId);
        let zero = b.u32(0);
        let lane0 = b.cmp(CmpOp::Eq, lane, zero);
        b.if_then(lane0, |b| {
            for h in 0..g {
                let hv = b.u32(h);
                let x = b.read_local(lc.red, hv);
                let slot = b.add(wg, hv);
                let i = times(b, slot, 2);
                let sv = b.u32(side);
                let i = b.add(i, sv);
                b.store(sh.ml, i, x);
            }
        });
    }
}

/// Head `h`'s (minimum, maximum) over the warps' entries of [`warp_extremes`].
pub(super) fn fold_warp_extremes(
    b: &mut Builder,
    dims: &Dims,
    sh: &Shared,
    h: Value,
) -> (Value, Value) {
    let g = dims.g;
    let at_w = |b: &mut Builder, w: u32, side: u32| {
        let wg = b.u32(w * g);
        let slot = b.add(wg, h);
        let i = times(b, slot, 2);
        let sv = b.u32(side);
        let i = b.add(i, sv);
        b.load(sh.ml, i, 1)
    };
    let mut lo = at_w(b, 0, 0);
    let mut hi = at_w(b, 0, 1);
    for w in 1..dims.warps {
        let x = at_w(b, w, 0);
        lo = b.min(lo, x);
        let x = at_w(b, w, 1);
        hi = b.max(hi, x);
    }
    (lo, hi)
}

/// Empty softmax state (partial) or extremes (stats).
pub(super) fn init_state(b: &mut Builder, dims: &Dims, lc: &Locals, mode: Mode) {
    let g = dims.g;
    let (z, inf, ninf) = (b.f32(0.0), b.f32(f32::INFINITY), b.f32(f32::NEG_INFINITY));
    for h in 0..g {
        let (hv, hg) = (b.u32(h), b.u32(g + h));
        match mode {
            Mode::Partial => {
                b.write_local(lc.m, hv, ninf);
                b.write_local(lc.l, hv, z);
            }
            Mode::Stats => {
                b.write_local(lc.ext, hv, inf);
                b.write_local(lc.ext, hg, ninf);
            }
        }
    }
    if mode == Mode::Partial {
        for i in 0..g * dims.cpl {
            let iv = b.u32(i);
            b.write_local(lc.acc, iv, z);
        }
    }
}
