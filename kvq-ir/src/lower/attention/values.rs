//! The softmax and value side of a work item: online softmax over tiles of logits, and the
//! `P V` accumulation from full-precision values or codes.

use crate::ir::{BinaryOp, Builder, CmpOp, Memory, ScalarType, UnaryOp, Value};
use crate::lower::InputType;
use crate::scheme::BitOrder;
use crate::scheme::{Axis, Group, Scheme};

use super::item_params::load_fp;

use super::keys::{affine, for_heads, logit_at, param_f32, table_at, times, unpack_row, Item, RUN};

/// Online softmax state locals: running max `[g]`, sum `[g]`, accumulator `[g, d]`; for
/// axis = channel values also the raw code sums `[g, d]` and weight sums `[g]` of the current
/// parameter row; for axis = token a dequantized row `[d]`. Values that use byte tables
/// ([`uses_tables`]) accumulate weights into histograms `[row bytes, 256, g]` instead: per
/// token, the weight is added to the bucket of each code byte, and a flush folds the buckets
/// into the raw code sums.
#[derive(Clone, Copy)]
pub(super) struct State {
    pub m: u32,
    pub l: u32,
    pub acc: u32,
    pub cacc: Option<(u32, u32)>,
    pub hist: Option<u32>,
    pub row: u32,
    /// One tile's weight sums: per head `[g]`, or per lane of [`over_lanes`] (at least
    /// [`LANES`] elements).
    pub wsum: u32,
    /// Per lane of [`over_lanes`] `[LANES]`: the tile's maxima, then the histograms'
    /// rescaling factors ([`softmax_tile`]), then the lane's head's running max
    /// ([`weights_flat`]).
    pub wmax: u32,
    /// Per head, the tile's largest logit `[g]` ([`flat_heads`] groups).
    pub tmax: u32,
    /// Whether a head's max grew in this tile `[1]` (U32; flat groups with histograms).
    pub grew: u32,
}

/// Fills `local[0..n]` with `x`.
fn fill(b: &mut Builder, local: u32, n: u32, x: Value) {
    let zero = b.u32(0);
    let end = b.u32(n);
    b.for_range(zero, end, 1, |b, i| b.write_local(local, i, x));
}

/// Multiplies `local[first..first + n]` by `x`.
fn scale_run(b: &mut Builder, local: u32, first: Value, n: u32, x: Value) {
    let zero = b.u32(0);
    let end = b.u32(n);
    b.for_range(zero, end, 1, |b, i| {
        let at = b.add(first, i);
        let v = b.read_local(local, at);
        let v = b.mul(v, x);
        b.write_local(local, at, v);
    });
}

/// `m = -inf`, `l = 0`, accumulators 0, and the histograms (when `st` has them: span items)
/// 0. These locals are unzeroed (a block does not clear them first): set here only. Full-precision
/// items never touch the histograms, and each fold leaves them zero for the next parameter row.
pub(super) fn init(b: &mut Builder, it: &Item, st: &State) {
    let (d, g) = (it.d, it.g);
    let ninf = b.f32(f32::NEG_INFINITY);
    let fz = b.f32(0.0);
    fill(b, st.m, g, ninf);
    fill(b, st.l, g, fz);
    fill(b, st.acc, g * d, fz);
    if let Some((cacc, psum)) = st.cacc {
        fill(b, cacc, g * d, fz);
        fill(b, psum, g, fz);
    }
    if let Some(hist) = st.hist {
        fill(b, hist, g * hist_cells(it) * 256, fz);
    }
}

/// Histogram cells (code bytes) per query head.
fn hist_cells(it: &Item) -> u32 {
    it.value_row_bytes
}

/// One tile of `n` logits per query head: raises the running max (rescaling the state when it
/// grows), turns the logits into weights `e^(s - m)` and adds them to `l`. The histograms are
/// rescaled only where the Bool `span` holds: full-precision tiles leave them alone (they hold
/// nothing then, and rescaling them would cost a pass over 64 KB at head_dim 128, group 4).
pub(super) fn softmax_tile(b: &mut Builder, it: &Item, st: &State, n: Value, span: Value) {
    let (d, g) = (it.d, it.g);
    let flat = flat_heads(g);
    if flat {
        tile_maxima(b, it, st, n);
    }
    // Flat groups rescale the histograms once for all heads, after the heads' loop: each
    // lane's factor in `wmax` (1 for heads whose max stays), `grew` set when any max grows.
    let flat_hist = st.hist.filter(|_| flat);
    if flat_hist.is_some() {
        let one = b.f32(1.0);
        fill(b, st.wmax, LANES, one);
        let (z, no) = (b.u32(0), b.u32(0));
        b.write_local(st.grew, z, no);
    }
    let zero = b.u32(0);
    let gn = b.u32(g);
    b.for_range(zero, gn, 1, |b, gi| {
        let z = b.u32(0);
        let tile_max = match flat {
            true => b.read_local(st.tmax, gi),
            false => {
                let ninf = b.f32(f32::NEG_INFINITY);
                b.write_local(it.sum, z, ninf);
                b.for_range(z, n, 1, |b, i| {
                    let at = logit_at(b, it, i, gi);
                    let s = b.read_local(it.logits, at);
                    let z = b.u32(0);
                    let m = b.read_local(it.sum, z);
                    let m = b.max(m, s);
                    b.write_local(it.sum, z, m);
                });
                b.read_local(it.sum, z)
            }
        };
        let old = b.read_local(st.m, gi);
        let new = b.max(old, tile_max);
        let grows = b.cmp(CmpOp::Gt, new, old);
        b.if_then(grows, |b| {
            let diff = b.sub(old, new);
            let corr = b.unary(UnaryOp::Exp, diff);
            let l = b.read_local(st.l, gi);
            let l = b.mul(l, corr);
            b.write_local(st.l, gi, l);
            let row = times(b, gi, d);
            scale_run(b, st.acc, row, d, corr);
            if let Some((cacc, psum)) = st.cacc {
                scale_run(b, cacc, row, d, corr);
                scale_run(b, psum, gi, 1, corr);
            }
            if flat_hist.is_some() {
                for k in 0..LANES / g {
                    let off = b.u32(k * g);
                    let lane = b.add(gi, off);
                    b.write_local(st.wmax, lane, corr);
                }
                let (z, yes) = (b.u32(0), b.u32(1));
                b.write_local(st.grew, z, yes);
            } else if let Some(hist) = st.hist {
                // This head's entries: every g-th from gi.
                b.if_then(span, |b| {
                    let z = b.u32(0);
                    let n = b.u32(it.value_row_bytes * 256);
                    b.for_range(z, n, 1, |b, e| {
                        let at = affine(b, e, g, gi);
                        let v = b.read_local(hist, at);
                        let v = b.mul(v, corr);
                        b.write_local(hist, at, v);
                    });
                });
            }
            b.write_local(st.m, gi, new);
        });
    });
    if let Some(hist) = flat_hist {
        let z = b.u32(0);
        let grew = b.read_local(st.grew, z);
        let grew = b.cmp(CmpOp::Ne, grew, z);
        let grew = b.binary(BinaryOp::And, grew, span);
        b.if_then(grew, |b| {
            // Entry e of `[row bytes, 256, g]` is head e % g's, so lane e % 16's factor.
            let total = b.u32(g * hist_cells(it) * 256);
            over_lanes(b, total, &|b, e, lane| {
                let v = b.read_local(hist, e);
                let f = b.read_local(st.wmax, lane);
                let v = b.mul(v, f);
                b.write_local(hist, e, v);
            });
        });
    }
    weights(b, it, st, n);
}

/// Lanes of the flat loops ([`over_lanes`], and [`super::keys::sum_over`]'s partial sums): one
/// AVX-512 register of f32.
pub(super) const LANES: u32 = 16;

/// Whether a group of `g` query heads takes the flat loops: `g` divides [`LANES`], so
/// that lane `j` of a tile's token-major `n x g` logits is always head `j % g`'s.
pub(super) fn flat_heads(g: u32) -> bool {
    LANES % g == 0
}

/// Runs `body(b, e, lane)` for every `e` in `0..total`, `lane = e % LANES`: steps of
/// [`LANES`] elements as an inner loop over the lanes (which vectorizes: a step's
/// elements and the lanes' locals are consecutive), then the rest one at a time.
pub(super) fn over_lanes(b: &mut Builder, total: Value, body: &dyn Fn(&mut Builder, Value, Value)) {
    over_lanes_staged(b, total, &[body]);
}

/// The work of one element `e` of [`over_lanes`], in lane `e % LANES`: `body(b, e, lane)`.
type LaneBody<'a> = &'a dyn Fn(&mut Builder, Value, Value);

/// [`over_lanes`] with several bodies: each step's lanes run through every body in turn, a
/// lane loop each (the rest one element at a time, every body each).
fn over_lanes_staged(b: &mut Builder, total: Value, bodies: &[LaneBody<'_>]) {
    let lanes = b.u32(LANES);
    let steps = b.div(total, lanes);
    let zero = b.u32(0);
    b.for_range(zero, steps, 1, |b, step| {
        let base = times(b, step, LANES);
        for body in bodies {
            let (z, lanes) = (b.u32(0), b.u32(LANES));
            b.for_range(z, lanes, 1, |b, lane| {
                let e = b.add(base, lane);
                body(b, e, lane);
            });
        }
    });
    let done = times(b, steps, LANES);
    b.for_range(done, total, 1, |b, e| {
        let lanes = b.u32(LANES);
        let lane = b.rem(e, lanes);
        for body in bodies {
            body(b, e, lane);
        }
    });
}

/// Folds the per-lane values of `lanes` (a local of [`LANES`]) into head `gi`'s: `op`
/// over its lanes `gi, gi + g, ..` in lane order.
pub(super) fn fold_lanes(
    b: &mut Builder,
    lanes: u32,
    g: u32,
    gi: u32,
    op: fn(&mut Builder, Value, Value) -> Value,
) -> Value {
    let first = b.u32(gi);
    let mut x = b.read_local(lanes, first);
    for j in (gi + g..LANES).step_by(g as usize) {
        let jv = b.u32(j);
        let y = b.read_local(lanes, jv);
        x = op(b, x, y);
    }
    x
}

/// [`weights`] for [`flat_heads`] groups: the tile's logits as one flat run ([`over_lanes`]),
/// each lane subtracting its head's max and keeping its own sum in `wsum[lane]`; a head's
/// weight sum is its lanes' sums in lane order.
fn weights_flat(b: &mut Builder, it: &Item, st: &State, n: Value) {
    let g = it.g;
    let fz = b.f32(0.0);
    for j in 0..LANES {
        let (jv, gv) = (b.u32(j), b.u32(j % g));
        let m = b.read_local(st.m, gv);
        b.write_local(st.wmax, jv, m);
        b.write_local(st.wsum, jv, fz);
    }
    let gv = b.u32(g);
    let total = b.mul(n, gv);
    over_lanes(b, total, &|b, e, lane| {
        let m = b.read_local(st.wmax, lane);
        weigh(b, it, st, e, m, lane);
    });
    for gi in 0..g {
        let w = fold_lanes(b, st.wsum, g, gi, |b, x, y| b.add(x, y));
        let gv = b.u32(gi);
        let l = b.read_local(st.l, gv);
        let l = b.add(l, w);
        b.write_local(st.l, gv, l);
    }
}

/// `logits[e] = e^(logits[e] - m)`, added to `wsum[slot]` (a lane's or a head's sum).
fn weigh(b: &mut Builder, it: &Item, st: &State, e: Value, m: Value, slot: Value) {
    let s = b.read_local(it.logits, e);
    let x = b.sub(s, m);
    let p = b.unary(UnaryOp::Exp, x);
    b.write_local(it.logits, e, p);
    let w = b.read_local(st.wsum, slot);
    let w = b.add(w, p);
    b.write_local(st.wsum, slot, w);
}

/// Each head's largest logit of the tile into `tmax` ([`flat_heads`] groups): the lanes'
/// maxima over the flat run, then each head's over its lanes.
fn tile_maxima(b: &mut Builder, it: &Item, st: &State, n: Value) {
    let g = it.g;
    let ninf = b.f32(f32::NEG_INFINITY);
    fill(b, st.wmax, LANES, ninf);
    let gv = b.u32(g);
    let total = b.mul(n, gv);
    over_lanes(b, total, &|b, e, lane| {
        let s = b.read_local(it.logits, e);
        let m = b.read_local(st.wmax, lane);
        let m = b.max(m, s);
        b.write_local(st.wmax, lane, m);
    });
    for gi in 0..g {
        let m = fold_lanes(b, st.wmax, g, gi, |b, x, y| b.max(x, y));
        let gv = b.u32(gi);
        b.write_local(st.tmax, gv, m);
    }
}

/// Turns the tile's logits into weights `e^(s - m)` against each head's running max and adds
/// their sums to `l`. [`flat_heads`] groups take [`weights_flat`]; other groups of
/// up to 8 heads do the heads of a token together (their logits are adjacent, so the
/// exponentials vectorize across heads).
fn weights(b: &mut Builder, it: &Item, st: &State, n: Value) {
    let g = it.g;
    let zero = b.u32(0);
    let fz = b.f32(0.0);
    if flat_heads(g) {
        weights_flat(b, it, st, n);
        return;
    }
    if g <= 8 {
        let maxes: Vec<Value> = (0..g)
            .map(|gi| {
                let gv = b.u32(gi);
                b.write_local(st.wsum, gv, fz);
                b.read_local(st.m, gv)
            })
            .collect();
        b.for_range(zero, n, 1, |b, i| {
            for (gi, &m) in maxes.iter().enumerate() {
                let gv = b.u32(gi as u32);
                let at = logit_at(b, it, i, gv);
                weigh(b, it, st, at, m, gv);
            }
        });
    } else {
        let gn = b.u32(g);
        b.for_range(zero, gn, 1, |b, gi| {
            let m = b.read_local(st.m, gi);
            let fz = b.f32(0.0);
            b.write_local(st.wsum, gi, fz);
            let z = b.u32(0);
            b.for_range(z, n, 1, |b, i| {
                let at = logit_at(b, it, i, gi);
                weigh(b, it, st, at, m, gi);
            });
        });
    }
    let gn = b.u32(g);
    b.for_range(zero, gn, 1, |b, gi| {
        let w = b.read_local(st.wsum, gi);
        let l = b.read_local(st.l, gi);
        let l = b.add(l, w);
        b.write_local(st.l, gi, l);
    });
}

/// `dst[row + c] += w * src(c)` for every query head's weight `w = logits[gi, slot]`.
fn add_weighted(
    b: &mut Builder,
    it: &Item,
    dst: u32,
    slot: Value,
    weight_sum: Option<u32>,
    src: impl Fn(&mut Builder, Value) -> Value + Copy,
) {
    let (d, g) = (it.d, it.g);
    let zero = b.u32(0);
    let gn = b.u32(g);
    b.for_range(zero, gn, 1, |b, gi| {
        let at = logit_at(b, it, slot, gi);
        let p = b.read_local(it.logits, at);
        if let Some(ps) = weight_sum {
            let s = b.read_local(ps, gi);
            let s = b.add(s, p);
            b.write_local(ps, gi, s);
        }
        let row = times(b, gi, d);
        let z = b.u32(0);
        let dn = b.u32(d);
        b.for_range(z, dn, 1, |b, c| {
            let x = src(b, c);
            let px = b.mul(p, x);
            let at = b.add(row, c);
            let a = b.read_local(dst, at);
            let a = b.add(a, px);
            b.write_local(dst, at, a);
        });
    });
}

/// Adds span token `t` (weights in `logits[.., slot]`) to the state.
pub(super) fn span_values(
    b: &mut Builder,
    it: &Item,
    st: &State,
    value: &Scheme,
    [codes_m, zero_m, scale_m]: [Memory; 3],
    t: Value,
    slot: Value,
) {
    let d = it.d;
    let row_bytes = d / value.bits.codes_per_byte() as u32;
    let hs = b.mul(it.h, it.span_len);
    let tok_row = b.add(hs, t);
    let at = affine(b, tok_row, row_bytes, it.v_codes);
    if let Some(hist) = st.hist {
        // No running weight sum: every token adds its weight to one bucket of each code byte,
        // so the fold takes a head's sum from byte 0's buckets.
        let bytes = load_bytes(b, codes_m, at, row_bytes);
        for_heads(b, it.g, |b, gi| {
            let w = logit_at(b, it, slot, gi);
            let p = b.read_local(it.logits, w);
            for (j, &byte) in bytes.iter().enumerate() {
                let jv = b.u32(j as u32);
                let idx = table_at(b, it.g, jv, byte, gi);
                let x = b.read_local(hist, idx);
                let x = b.add(x, p);
                b.write_local(hist, idx, x);
            }
        });
        return;
    }
    unpack_row(b, it, value, codes_m, at);
    let codes = it.codes;
    match (value.axis, st.cacc) {
        (Axis::Channel, Some((cacc, psum))) => {
            add_weighted(b, it, cacc, slot, Some(psum), move |b, c| {
                b.read_local(codes, c)
            });
        }
        _ => {
            let width = match value.group {
                Group::All => d,
                Group::Size(n) => n.get() as u32,
            };
            let groups = d / width;
            let pbase = affine(b, tok_row, groups, it.v_params);
            for j in 0..groups {
                let jv = b.u32(j);
                let pat = b.add(pbase, jv);
                let z = param_f32(b, zero_m, pat, value);
                let sc = param_f32(b, scale_m, pat, value);
                let first = b.u32(j * width);
                let zero = b.u32(0);
                let wn = b.u32(width);
                b.for_range(zero, wn, 1, |b, i| {
                    let c = b.add(first, i);
                    let code = b.read_local(codes, c);
                    let x = b.mul(sc, code);
                    let x = b.add(z, x);
                    b.write_local(st.row, c, x);
                });
            }
            let row = st.row;
            add_weighted(b, it, st.acc, slot, None, move |b, c| b.read_local(row, c));
        }
    }
}

/// Folds the raw code sums of axis = channel values into the accumulator with the parameter
/// row starting at element `param`: `acc += scale * cacc + zero * psum`; then clears them.
pub(super) fn flush(
    b: &mut Builder,
    it: &Item,
    st: &State,
    value: &Scheme,
    [zero_m, scale_m]: [Memory; 2],
    param: Value,
) {
    let Some((cacc, psum)) = st.cacc else { return };
    let (d, g) = (it.d, it.g);
    if let Some(hist) = st.hist {
        match flat_heads(g) {
            true => fold_histograms_flat(b, it, value, hist, (cacc, psum)),
            false => fold_histograms(b, it, value, hist, (cacc, psum)),
        }
    }
    let zero = b.u32(0);
    let gn = b.u32(g);
    b.for_range(zero, gn, 1, |b, gi| {
        let ps = b.read_local(psum, gi);
        let row = times(b, gi, d);
        let z = b.u32(0);
        let dn = b.u32(d);
        b.for_range(z, dn, 1, |b, c| {
            let pat = b.add(param, c);
            let zc = param_f32(b, zero_m, pat, value);
            let sc = param_f32(b, scale_m, pat, value);
            let at = b.add(row, c);
            let raw = b.read_local(cacc, at);
            let x = b.mul(sc, raw);
            let y = b.mul(zc, ps);
            let x = b.add(x, y);
            let a = b.read_local(st.acc, at);
            let a = b.add(a, x);
            b.write_local(st.acc, at, a);
            let fz = b.f32(0.0);
            b.write_local(cacc, at, fz);
        });
        let fz = b.f32(0.0);
        b.write_local(psum, gi, fz);
    });
}

/// Adds the full-precision tokens `t0..stop` of a tile (weights in `logits[.., t - t0]`) to the
/// state. For `d` a multiple of [`LANES`], per query head and run of channels (the largest of
/// [`RUN`], 2 and 1 vectors that divides `d`), the run's accumulators are held in the local `run`
/// (registers) over the tile's tokens; the same products added in the same order as token by
/// token.
pub(super) fn fp_values(
    b: &mut Builder,
    it: &Item,
    st: &State,
    (fp_v, fp): (Memory, InputType),
    [t0, stop]: [Value; 2],
) {
    let hf = b.mul(it.h, it.fp_len);
    let row_at = move |b: &mut Builder, t: Value| {
        let tok = b.add(hf, t);
        affine(b, tok, it.d, it.fp_base)
    };
    let d = it.d;
    if d % LANES != 0 {
        b.for_range(t0, stop, 1, |b, t| {
            let slot = b.sub(t, t0);
            let at = row_at(b, t);
            add_weighted(b, it, st.acc, slot, None, move |b, c| {
                let i = b.add(at, c);
                load_fp(b, fp, fp_v, i, 1)
            });
        });
        return;
    }
    let w = [RUN, 2 * LANES, LANES]
        .into_iter()
        .find(|w| d % w == 0)
        .unwrap_or(LANES);
    let zero = b.u32(0);
    let runs = b.u32(it.g * (d / w));
    b.for_range(zero, runs, 1, |b, r| {
        // Run r: head r / (d / w), channels (r % (d / w)) * w ..
        let per_head = b.u32(d / w);
        let gi = b.div(r, per_head);
        let first = times(b, r, w);
        for j in 0..w {
            let jv = b.u32(j);
            let from = b.add(first, jv);
            let a = b.read_local(st.acc, from);
            b.write_local(it.run, jv, a);
        }
        let part = b.rem(r, per_head);
        let c0 = times(b, part, w);
        b.for_range(t0, stop, 1, |b, t| {
            let slot = b.sub(t, t0);
            let at = row_at(b, t);
            let at = b.add(at, c0);
            let pat = logit_at(b, it, slot, gi);
            let p = b.read_local(it.logits, pat);
            for v in 0..w / LANES {
                let off = b.u32(v * LANES);
                let i = b.add(at, off);
                let x = load_fp(b, fp, fp_v, i, LANES as u8);
                for l in 0..LANES {
                    let xl = b.extract(x, l as u8);
                    let px = b.mul(p, xl);
                    let jv = b.u32(v * LANES + l);
                    let a = b.read_local(it.run, jv);
                    let a = b.add(a, px);
                    b.write_local(it.run, jv, a);
                }
            }
        });
        for j in 0..w {
            let jv = b.u32(j);
            let a = b.read_local(it.run, jv);
            let to = b.add(first, jv);
            b.write_local(st.acc, to, a);
        }
    });
}

/// Adds each histogram's code sums to `cacc` and clears it: for each code position from the
/// highest, `cacc[lane] += sum_c c * (weight of bytes whose code there is c)`, folding those
/// buckets onto the lower positions' (two passes over 256 buckets per code byte). Bucket 0 of a
/// byte ends with the weight of every token; byte 0's is added to `psum`. Positions and codes
/// are loops, not written out: this runs once per parameter row, and written out it made the
/// largest part of `partial`'s text for LLVM to compile.
fn fold_histograms(
    b: &mut Builder,
    it: &Item,
    value: &Scheme,
    hist: u32,
    (cacc, psum): (u32, u32),
) {
    let per_byte = value.bits.codes_per_byte() as u32;
    let zero = b.u32(0);
    let cells = b.u32(it.g * it.value_row_bytes);
    b.for_range(zero, cells, 1, |b, cell| {
        // cell = gi * row_bytes + j: channel j * per_byte + lane of query head gi, i.e.
        // gi * d + j * per_byte + lane = cell * per_byte + lane.
        let rb = b.u32(it.value_row_bytes);
        let gi = b.div(cell, rb);
        let j = b.rem(cell, rb);
        let first = times(b, cell, per_byte);
        for_positions(b, value, |b, width, lane| {
            let z = b.u32(0);
            let fz = b.f32(0.0);
            b.write_local(it.sum, z, fz);
            for_codes(b, value, |b, c, cf| {
                let off = b.mul(c, width);
                b.for_range(z, width, 1, |b, v| {
                    let hv = b.add(off, v);
                    let from = table_at(b, it.g, j, hv, gi);
                    let x = b.read_local(hist, from);
                    let fz = b.f32(0.0);
                    b.write_local(hist, from, fz);
                    let to = table_at(b, it.g, j, v, gi);
                    let y = b.read_local(hist, to);
                    let y = b.add(y, x);
                    b.write_local(hist, to, y);
                    let z = b.u32(0);
                    let s = b.read_local(it.sum, z);
                    let cx = b.mul(cf, x);
                    let s = b.add(s, cx);
                    b.write_local(it.sum, z, s);
                });
            });
            let at = b.add(first, lane);
            let s = b.read_local(it.sum, z);
            let cur = b.read_local(cacc, at);
            let cur = b.add(cur, s);
            b.write_local(cacc, at, cur);
        });
        let z = b.u32(0);
        let base = table_at(b, it.g, j, z, gi);
        let first_byte = b.cmp(CmpOp::Eq, j, z);
        b.if_then(first_byte, |b| add_weight_sum(b, hist, base, psum, gi));
        let fz = b.f32(0.0);
        b.write_local(hist, base, fz);
    });
}

/// Runs `body(b, width, lane)` for each code position of a byte from the highest: `width =
/// 2^(bits * p)` for the code at bit `bits * p`, which is code `lane` of its byte.
fn for_positions(b: &mut Builder, value: &Scheme, body: impl FnOnce(&mut Builder, Value, Value)) {
    let bits = value.bits.width();
    let per_byte = value.bits.codes_per_byte() as u32;
    let (z, n) = (b.u32(0), b.u32(per_byte));
    b.for_range(z, n, 1, |b, q| {
        let top = b.u32(per_byte - 1);
        let p = b.sub(top, q);
        let bw = b.u32(bits);
        let shift = b.mul(p, bw);
        let one = b.u32(1);
        let width = b.binary(BinaryOp::Shl, one, shift);
        // The code at bit `bits * p` is code `per_byte - 1 - p` of its byte in msb order
        // and code `p` in lsb order (`reference::pack::bit_shift`).
        let lane = match value.order {
            BitOrder::Msb => q,
            BitOrder::Lsb => p,
        };
        body(b, width, lane);
    });
}

/// Runs `body(b, c, c as f32)` for each nonzero code `c` in ascending order.
fn for_codes(b: &mut Builder, value: &Scheme, body: impl FnOnce(&mut Builder, Value, Value)) {
    let levels = (1u32 << value.bits.width()) - 1;
    let (one, end) = (b.u32(1), b.u32(levels + 1));
    b.for_range(one, end, 1, |b, c| {
        let cf = b.convert(ScalarType::F32, c);
        body(b, c, cf);
    });
}

/// `psum[gi] += hist[at]`.
fn add_weight_sum(b: &mut Builder, hist: u32, at: Value, psum: u32, gi: Value) {
    let total = b.read_local(hist, at);
    let s = b.read_local(psum, gi);
    let s = b.add(s, total);
    b.write_local(psum, gi, s);
}

/// [`fold_histograms`] for [`flat_heads`] groups: per code byte, the buckets of all heads
/// together (a bucket's heads are adjacent, so each run of buckets is one flat run over lanes,
/// lane `e % LANES` summing head `e % g`'s), each head's sum its lanes' in lane order; the
/// weight sums from byte 0's bucket 0 as there.
fn fold_histograms_flat(
    b: &mut Builder,
    it: &Item,
    value: &Scheme,
    hist: u32,
    (cacc, psum): (u32, u32),
) {
    let g = it.g;
    let per_byte = value.bits.codes_per_byte() as u32;
    let zero = b.u32(0);
    let bytes = b.u32(it.value_row_bytes);
    b.for_range(zero, bytes, 1, |b, j| {
        // Bucket v of byte j, head 0: (j * 256 + v) * g.
        let first = times(b, j, 256 * g);
        for_positions(b, value, |b, width, lane| {
            let (z, lanes) = (b.u32(0), b.u32(LANES));
            b.for_range(z, lanes, 1, |b, l| {
                let fz = b.f32(0.0);
                b.write_local(it.sum, l, fz);
            });
            let run = times(b, width, g);
            for_codes(b, value, |b, c, cf| {
                let from = b.mul(c, run);
                let from = b.add(first, from);
                // Moved buckets `from + e` first, then their adds: the two ranges are
                // disjoint, so each step is the same as element by element, and neither
                // lane loop needs LLVM to check at run time that they are (a check that
                // kept `it.sum` in memory across the steps).
                let take = |b: &mut Builder, e: Value, lane: Value| {
                    let at = b.add(from, e);
                    let x = b.read_local(hist, at);
                    let fz = b.f32(0.0);
                    b.write_local(hist, at, fz);
                    b.write_local(it.moved, lane, x);
                };
                let give = |b: &mut Builder, e: Value, lane: Value| {
                    let x = b.read_local(it.moved, lane);
                    let to = b.add(first, e);
                    let y = b.read_local(hist, to);
                    let y = b.add(y, x);
                    b.write_local(hist, to, y);
                    let s = b.read_local(it.sum, lane);
                    let cx = b.mul(cf, x);
                    let s = b.add(s, cx);
                    b.write_local(it.sum, lane, s);
                };
                over_lanes_staged(b, run, &[&take, &give]);
            });
            let pos = times(b, j, per_byte);
            let pos = b.add(pos, lane);
            for gi in 0..g {
                let s = fold_lanes(b, it.sum, g, gi, |b, x, y| b.add(x, y));
                let row = b.u32(gi * it.d);
                let at = b.add(row, pos);
                let cur = b.read_local(cacc, at);
                let cur = b.add(cur, s);
                b.write_local(cacc, at, cur);
            }
        });
        let z = b.u32(0);
        let first_byte = b.cmp(CmpOp::Eq, j, z);
        b.if_then(first_byte, |b| {
            for gi in 0..g {
                let gv = b.u32(gi);
                add_weight_sum(b, hist, gv, psum, gv);
            }
        });
        let fz = b.f32(0.0);
        for gi in 0..g {
            let gv = b.u32(gi);
            let at = b.add(first, gv);
            b.write_local(hist, at, fz);
        }
    });
}

/// Loads `n` bytes at `at` (widest vector loads that divide `n`) as U32 values.
pub(super) fn load_bytes(b: &mut Builder, mem: Memory, at: Value, n: u32) -> Vec<Value> {
    let lanes = [16u8, 8, 4, 2, 1]
        .into_iter()
        .find(|&l| n % l as u32 == 0)
        .unwrap_or(1);
    let mut bytes = Vec::new();
    for j in (0..n).step_by(lanes as usize) {
        let off = b.u32(j);
        let idx = b.add(at, off);
        let v = b.load(mem, idx, lanes);
        for l in 0..lanes {
            let byte = if lanes == 1 { v } else { b.extract(v, l) };
            bytes.push(b.convert(crate::ir::ScalarType::U32, byte));
        }
    }
    bytes
}
