//! The query and key side of a work item: the scaled query, per-row post-scaling (or the byte
//! tables), and the logit of one token.

use crate::ir::{BinaryOp, Builder, Memory, ScalarType, Value};
use crate::lower::emit::param_type;
use crate::lower::InputType;
use crate::reference::pack::bit_shift;
use crate::scheme::{Axis, Group, Scheme};

use super::item_params::load_fp;
use super::values::{flat_heads, over_lanes, LANES};

/// Locals and loop-invariant values of one work item, shared by the key and value code.
pub(super) struct Item {
    /// head_dim, group.
    pub d: u32,
    pub g: u32,
    /// The work item's flat index (chunk * kv heads + kv head).
    pub item: Value,
    /// Kv head and kv heads (U32).
    pub h: Value,
    pub kv_heads: Value,
    /// Span tokens, fp tokens of the sequence (U32).
    pub span_len: Value,
    pub fp_len: Value,
    /// Offsets of the sequence's data (U32).
    pub fp_base: Value,
    pub k_codes: Value,
    pub k_params: Value,
    /// Code bytes per value row.
    pub value_row_bytes: u32,
    pub v_codes: Value,
    pub v_params: Value,
    /// The sequence's first chunk and its number of span chunks (U32).
    pub chunk_base: Value,
    pub span_chunks: Value,
    /// Locals: the scaled query `[g, d]`, post-scaled query `[g, d]`, bias `[g]`, byte tables
    /// `[row bytes, 256, g]` (when used), one token's codes as f32 `[d]`, logits `[tile, g]`,
    /// partial sums ([`LANES`], and [`LANES`] per query head for [`row_dots`]), and a run of
    /// accumulators that only constant indices reach ([`RUN`] elements: registers for the
    /// full-precision values' sums), and the [`LANES`] histogram buckets a step of the fold moves.
    pub q: u32,
    pub qs: u32,
    pub bias: u32,
    pub lut: Option<u32>,
    pub codes: u32,
    pub logits: u32,
    pub sum: u32,
    pub run: u32,
    pub moved: u32,
}

/// Elements of [`Item::run`]: four vectors of [`LANES`].
pub(super) const RUN: u32 = 4 * LANES;

/// True when the keys use byte tables: axis = channel, group = all, at most 4 bits.
pub(super) fn uses_tables(key: &Scheme) -> bool {
    key.axis == Axis::Channel && key.group == Group::All && key.bits.width() <= 4
}

/// `sum_i term(i)` over `0..n`, in the [`LANES`] elements of the local `sum`: for `n` a
/// multiple of the lanes, term `i` goes to lane `i % LANES` (an inner loop over the lanes,
/// which vectorizes) and the lanes add up as a balanced tree; else one running sum in order.
pub(super) fn sum_over(
    b: &mut Builder,
    sum: u32,
    n: u32,
    term: impl FnOnce(&mut Builder, Value) -> Value,
) -> Value {
    let zero = b.u32(0);
    let fz = b.f32(0.0);
    if n % LANES != 0 {
        b.write_local(sum, zero, fz);
        let end = b.u32(n);
        b.for_range(zero, end, 1, |b, i| {
            let x = term(b, i);
            let z = b.u32(0);
            let acc = b.read_local(sum, z);
            let acc = b.add(acc, x);
            b.write_local(sum, z, acc);
        });
        return b.read_local(sum, zero);
    }
    zero_lanes(b, sum, fz, 1);
    let steps = b.u32(n / LANES);
    b.for_range(zero, steps, 1, |b, step| {
        let base = times(b, step, LANES);
        let (z, lanes) = (b.u32(0), b.u32(LANES));
        b.for_range(z, lanes, 1, |b, j| {
            let i = b.add(base, j);
            let x = term(b, i);
            let acc = b.read_local(sum, j);
            let acc = b.add(acc, x);
            b.write_local(sum, j, acc);
        });
    });
    lanes_total(b, sum, 0)
}

/// Sets the first `heads` x [`LANES`] partial sums of the local `sum` to `fz` (an f32 zero).
fn zero_lanes(b: &mut Builder, sum: u32, fz: Value, heads: u32) {
    for j in 0..heads * LANES {
        let jv = b.u32(j);
        b.write_local(sum, jv, fz);
    }
}

/// The total of the [`LANES`] partial sums of the local `sum` from element `first`, added as a
/// balanced tree.
fn lanes_total(b: &mut Builder, sum: u32, first: u32) -> Value {
    let lanes = (first..first + LANES)
        .map(|j| {
            let jv = b.u32(j);
            b.read_local(sum, jv)
        })
        .collect();
    tree_sum(b, lanes)
}

/// `index = a * k + c` with constants `k`, `c`.
pub(super) fn affine(b: &mut Builder, a: Value, k: u32, c: Value) -> Value {
    let kv = b.u32(k);
    let m = b.mul(a, kv);
    b.add(m, c)
}

/// Loads a parameter as f32.
pub(super) fn param_f32(b: &mut Builder, mem: Memory, index: Value, s: &Scheme) -> Value {
    let x = b.load(mem, index, 1);
    if param_type(s.params) == ScalarType::F32 {
        x
    } else {
        b.convert(ScalarType::F32, x)
    }
}

/// Unpacks the code row starting at byte `at` of `mem` into the `codes` local as f32.
pub(super) fn unpack_row(b: &mut Builder, it: &Item, s: &Scheme, mem: Memory, at: Value) {
    let per_byte = s.bits.codes_per_byte() as u32;
    let row_bytes = it.d / per_byte;
    let lanes = [16u8, 8, 4, 2, 1]
        .into_iter()
        .find(|&l| row_bytes % l as u32 == 0)
        .unwrap_or(1);
    let zero = b.u32(0);
    let end = b.u32(row_bytes);
    b.for_range(zero, end, lanes as u32, |b, j| {
        let idx = b.add(at, j);
        let v = b.load(mem, idx, lanes);
        for l in 0..lanes {
            let byte = if lanes == 1 { v } else { b.extract(v, l) };
            for k in 0..per_byte {
                let code = b.unpack_bits(byte, k as u8, s.bits, s.order);
                let cf = b.convert(ScalarType::F32, code);
                let off = b.u32(l as u32 * per_byte + k);
                let base = b.u32(per_byte);
                let c = b.mul(j, base);
                let c = b.add(c, off);
                b.write_local(it.codes, c, cf);
            }
        }
    });
}

/// `q[gi, c] = Q[seq, h * g + gi, c] / sqrt(d)`.
pub(super) fn load_query(b: &mut Builder, it: &Item, q_mem: Memory, seq: Value) {
    let (d, g) = (it.d, it.g);
    let inv = b.f32(1.0 / (d as f32).sqrt());
    let heads = b.mul(seq, it.kv_heads);
    let head0 = b.add(heads, it.h);
    let head0 = times(b, head0, g);
    let zero = b.u32(0);
    let n = b.u32(g * d);
    b.for_range(zero, n, 1, |b, i| {
        let base = b.u32(d);
        let row = b.mul(head0, base);
        let at = b.add(row, i);
        let x = b.load(q_mem, at, 1);
        let x = b.mul(x, inv);
        b.write_local(it.q, i, x);
    });
}

/// `a * k` with a constant `k`.
pub(super) fn times(b: &mut Builder, a: Value, k: u32) -> Value {
    let kv = b.u32(k);
    b.mul(a, kv)
}

/// Post-scaling for the key parameter row whose first element is `param` (axis = channel):
/// `qs = q * scale`, `bias = q . zero`; with byte tables, also
/// `T[gi, j, v] = sum_l qs[gi, j * per_byte + l] * code_l(v)`.
pub(super) fn key_row(
    b: &mut Builder,
    it: &Item,
    key: &Scheme,
    [zero_m, scale_m]: [Memory; 2],
    param: Value,
) {
    let (d, g) = (it.d, it.g);
    let zero = b.u32(0);
    let gn = b.u32(g);
    b.for_range(zero, gn, 1, |b, gi| {
        let row = times(b, gi, d);
        let bias = sum_over(b, it.sum, d, |b, c| {
            let at = b.add(param, c);
            let z = param_f32(b, zero_m, at, key);
            let s = param_f32(b, scale_m, at, key);
            let qi = b.add(row, c);
            let q = b.read_local(it.q, qi);
            let qs = b.mul(q, s);
            b.write_local(it.qs, qi, qs);
            b.mul(q, z)
        });
        b.write_local(it.bias, gi, bias);
    });
    let Some(lut) = it.lut else { return };
    if flat_heads(g) {
        return tables_flat(b, it, key, lut);
    }
    let per_byte = key.bits.codes_per_byte() as u32;
    let row_bytes = d / per_byte;
    let cells = b.u32(g * row_bytes);
    b.for_range(zero, cells, 1, |b, cell| {
        // cell = gi * row_bytes + j; its channels start at gi * d + j * per_byte.
        let first = times(b, cell, per_byte);
        let qs: Vec<Value> = (0..per_byte)
            .map(|l| {
                let off = b.u32(l);
                let at = b.add(first, off);
                b.read_local(it.qs, at)
            })
            .collect();
        // By doubling: T[0] = 0; bytes below 2^(bits (p + 1)) add code position p's term to
        // the entry of their lower positions, one multiply-add per entry.
        let rb = b.u32(row_bytes);
        let gi = b.div(cell, rb);
        let j = b.rem(cell, rb);
        let entry = |b: &mut Builder, v: Value| table_at(b, g, j, v, gi);
        let z = b.u32(0);
        let first_entry = entry(b, z);
        let fz = b.f32(0.0);
        b.write_local(lut, first_entry, fz);
        for (p, lane) in lanes_by_position(key).into_iter().enumerate() {
            let shift = key.bits.width() * p as u32;
            let lo = b.u32(1 << shift);
            let hi = b.u32(1 << (shift + key.bits.width()));
            let q = qs[lane];
            b.for_range(lo, hi, 1, |b, v| {
                let sv = b.u32(shift);
                let code = b.binary(BinaryOp::Shr, v, sv);
                let mask = b.u32((1 << shift) - 1);
                let rest = b.binary(BinaryOp::And, v, mask);
                let cf = b.convert(ScalarType::F32, code);
                let term = b.mul(q, cf);
                let from = entry(b, rest);
                let prev = b.read_local(lut, from);
                let x = b.add(prev, term);
                let at = entry(b, v);
                b.write_local(lut, at, x);
            });
        }
    });
}

/// [`key_row`]'s byte tables for [`flat_heads`] groups, the same entries: per code byte `j`,
/// position `p` and code `c`, the entries of bytes `c 2^(bits p) + rest` (all heads: a run of
/// adjacent entries) are those of `rest` plus `c q'`, lane `l` adding the query of head `l % g`
/// (from the `sum` local, [`LANES`] elements, free once the bias is summed).
fn tables_flat(b: &mut Builder, it: &Item, key: &Scheme, lut: u32) {
    let (d, g) = (it.d, it.g);
    let bits = key.bits.width();
    let levels = (1u32 << bits) - 1;
    let per_byte = key.bits.codes_per_byte() as u32;
    let zero = b.u32(0);
    let bytes = b.u32(d / per_byte);
    b.for_range(zero, bytes, 1, |b, j| {
        // Entry of byte value v, head 0: (j * 256 + v) * g.
        let first = times(b, j, 256 * g);
        let fz = b.f32(0.0);
        for gi in 0..g {
            let gv = b.u32(gi);
            let at = b.add(first, gv);
            b.write_local(lut, at, fz);
        }
        let chan = times(b, j, per_byte);
        for (p, lane) in lanes_by_position(key).into_iter().enumerate() {
            let width = 1u32 << (bits * p as u32);
            let c0 = b.u32(lane as u32);
            let c0 = b.add(chan, c0);
            for c in 1..=levels {
                let cf = b.f32(c as f32);
                for l in 0..LANES {
                    let qi = b.u32((l % g) * d);
                    let qi = b.add(qi, c0);
                    let q = b.read_local(it.qs, qi);
                    let term = b.mul(q, cf);
                    let lv = b.u32(l);
                    b.write_local(it.sum, lv, term);
                }
                let dst = b.u32(c * width * g);
                let dst = b.add(first, dst);
                let run = b.u32(width * g);
                over_lanes(b, run, &|b, e, l| {
                    let from = b.add(first, e);
                    let prev = b.read_local(lut, from);
                    let term = b.read_local(it.sum, l);
                    let x = b.add(prev, term);
                    let at = b.add(dst, e);
                    b.write_local(lut, at, x);
                });
            }
        }
    });
}

/// The lane whose code sits at each bit position of a byte, lowest position first.
pub(super) fn lanes_by_position(s: &Scheme) -> Vec<usize> {
    let per_byte = s.bits.codes_per_byte();
    let mut lanes: Vec<usize> = (0..per_byte).collect();
    lanes.sort_by_key(|&l| bit_shift(l, s.bits, s.order));
    lanes
}

/// Computes the raw logit of span token `t` for every query head of the item into the
/// `logits` local at [`logit_at`]`(slot, gi)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn span_logits(
    b: &mut Builder,
    it: &Item,
    key: &Scheme,
    [codes_m, zero_m, scale_m]: [Memory; 3],
    t: Value,
    slot: Value,
) {
    let (d, g) = (it.d, it.g);
    let per_byte = key.bits.codes_per_byte() as u32;
    let row_bytes = d / per_byte;
    let hs = b.mul(it.h, it.span_len);
    let tok_row = b.add(hs, t);
    let at = affine(b, tok_row, row_bytes, it.k_codes);
    let zero = b.u32(0);
    let gn = b.u32(g);
    if let Some(lut) = it.lut {
        let bytes = super::values::load_bytes(b, codes_m, at, row_bytes);
        for_heads(b, g, |b, gi| {
            let mut terms = vec![b.read_local(it.bias, gi)];
            for (j, &byte) in bytes.iter().enumerate() {
                let jv = b.u32(j as u32);
                let idx = table_at(b, g, jv, byte, gi);
                terms.push(b.read_local(lut, idx));
            }
            let s = tree_sum(b, terms);
            store_logit(b, it, gi, slot, s);
        });
        return;
    }
    unpack_row(b, it, key, codes_m, at);
    match key.axis {
        Axis::Channel => b.for_range(zero, gn, 1, |b, gi| {
            let row = times(b, gi, d);
            let dot = sum_over(b, it.sum, d, |b, c| {
                let qi = b.add(row, c);
                let q = b.read_local(it.qs, qi);
                let k = b.read_local(it.codes, c);
                b.mul(q, k)
            });
            let bias = b.read_local(it.bias, gi);
            let s = b.add(dot, bias);
            store_logit(b, it, gi, slot, s);
        }),
        Axis::Token => {
            let width = match key.group {
                Group::All => d,
                Group::Size(n) => n.get() as u32,
            };
            let groups = d / width;
            let pbase = affine(b, tok_row, groups, it.k_params);
            b.for_range(zero, gn, 1, |b, gi| {
                let row = times(b, gi, d);
                let mut s = b.f32(0.0);
                for j in 0..groups {
                    let jv = b.u32(j);
                    let pat = b.add(pbase, jv);
                    let z = param_f32(b, zero_m, pat, key);
                    let sc = param_f32(b, scale_m, pat, key);
                    let first = b.u32(j * width);
                    let first = b.add(row, first);
                    let (dot, qsum) = dot_and_sum(b, it, first, j * width, width);
                    let a = b.mul(sc, dot);
                    let zq = b.mul(z, qsum);
                    let part = b.add(a, zq);
                    s = b.add(s, part);
                }
                store_logit(b, it, gi, slot, s);
            });
        }
    }
}

/// `(sum_i q[first + i] * codes[c0 + i], sum_i q[first + i])` over `n` channels.
fn dot_and_sum(b: &mut Builder, it: &Item, first: Value, c0: u32, n: u32) -> (Value, Value) {
    let c0 = b.u32(c0);
    let dot = sum_over(b, it.sum, n, |b, i| {
        let qi = b.add(first, i);
        let q = b.read_local(it.q, qi);
        let ci = b.add(c0, i);
        let k = b.read_local(it.codes, ci);
        b.mul(q, k)
    });
    let qsum = sum_over(b, it.sum, n, |b, i| {
        let qi = b.add(first, i);
        b.read_local(it.q, qi)
    });
    (dot, qsum)
}

/// Logits of full-precision token `t` (index within the sequence's fp block).
pub(super) fn fp_logits(
    b: &mut Builder,
    it: &Item,
    (fp_k, fp): (Memory, InputType),
    t: Value,
    slot: Value,
) {
    let d = it.d;
    let hf = b.mul(it.h, it.fp_len);
    let tok = b.add(hf, t);
    let at = affine(b, tok, d, it.fp_base);
    if d % LANES == 0 && it.g <= MAX_ROW_HEADS {
        let dots = row_dots(b, it, (fp_k, fp), at, it.g, &|b, gi| b.u32(gi * d));
        for (gi, s) in dots.into_iter().enumerate() {
            let gv = b.u32(gi as u32);
            store_logit(b, it, gv, slot, s);
        }
        return;
    }
    let zero = b.u32(0);
    let gn = b.u32(it.g);
    b.for_range(zero, gn, 1, |b, gi| {
        let row = times(b, gi, d);
        let s = match d % LANES {
            0 => row_dots(b, it, (fp_k, fp), at, 1, &|_, _| row)[0],
            _ => sum_over(b, it.sum, d, |b, c| {
                let qi = b.add(row, c);
                let q = b.read_local(it.q, qi);
                let ki = b.add(at, c);
                let k = load_fp(b, fp, fp_k, ki, 1);
                b.mul(q, k)
            }),
        };
        store_logit(b, it, gi, slot, s);
    });
}

/// Query heads whose full-precision logits [`row_dots`] computes from one read of the key row.
pub(super) const MAX_ROW_HEADS: u32 = 8;

/// `sum_c q[row(i) + c] * k[at + c]` for each `i` in `0..n` (`row(i)`: the offset of a query
/// head in `q`), over the `d` channels (a multiple of [`LANES`]) of a full-precision key row read
/// once by vector loads of [`LANES`] elements: as [`sum_over`] adds them (channel `c` in lane
/// `c % LANES` of the head's [`LANES`] partial sums, the lanes by a tree), the partial sums of
/// head `i` at `i * LANES` of the local `sum`, so that the heads' sums are independent chains.
fn row_dots(
    b: &mut Builder,
    it: &Item,
    (fp_k, fp): (Memory, InputType),
    at: Value,
    n: u32,
    row: &dyn Fn(&mut Builder, u32) -> Value,
) -> Vec<Value> {
    let fz = b.f32(0.0);
    zero_lanes(b, it.sum, fz, n);
    let zero = b.u32(0);
    let steps = b.u32(it.d / LANES);
    b.for_range(zero, steps, 1, |b, step| {
        let base = times(b, step, LANES);
        let ki = b.add(at, base);
        let k = load_fp(b, fp, fp_k, ki, LANES as u8);
        for i in 0..n {
            let row = row(b, i);
            let qi = b.add(row, base);
            for j in 0..LANES {
                let jv = b.u32(j);
                let kj = b.extract(k, j as u8);
                let qj = b.add(qi, jv);
                let q = b.read_local(it.q, qj);
                let x = b.mul(q, kj);
                let lane = b.u32(i * LANES + j);
                let acc = b.read_local(it.sum, lane);
                let acc = b.add(acc, x);
                b.write_local(it.sum, lane, acc);
            }
        }
    });
    (0..n).map(|i| lanes_total(b, it.sum, i * LANES)).collect()
}

fn store_logit(b: &mut Builder, it: &Item, gi: Value, slot: Value, s: Value) {
    let at = logit_at(b, it, slot, gi);
    b.write_local(it.logits, at, s);
}

/// Index of query head `gi`'s logit (or weight) of tile slot `slot` in the `logits` local,
/// laid out `[tile, g]` so that the heads of a token are adjacent (they vectorize together).
pub(super) fn logit_at(b: &mut Builder, it: &Item, slot: Value, gi: Value) -> Value {
    affine(b, slot, it.g, gi)
}

/// Index of entry `v` of code byte `j` for query head `gi` in a byte table or histogram, laid
/// out `[row bytes, 256, g]`: one token's reads or updates for all heads are adjacent.
pub(super) fn table_at(b: &mut Builder, g: u32, j: Value, v: Value, gi: Value) -> Value {
    let jv = affine(b, j, 256, v);
    affine(b, jv, g, gi)
}

/// Runs `body` for each query head `gi` of the group: unrolled (constant `gi`) for groups of up
/// to 8 heads, so that their independent work interleaves; a loop otherwise.
pub(super) fn for_heads(b: &mut Builder, g: u32, mut body: impl FnMut(&mut Builder, Value)) {
    if g <= 8 {
        for gi in 0..g {
            let gv = b.u32(gi);
            body(b, gv);
        }
    } else {
        let zero = b.u32(0);
        let gn = b.u32(g);
        b.for_range(zero, gn, 1, |b, gi| body(b, gi));
    }
}

/// The sum of `xs` as a balanced tree (short dependency chains).
pub(super) fn tree_sum(b: &mut Builder, mut xs: Vec<Value>) -> Value {
    while xs.len() > 1 {
        xs = xs
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    b.add(p[0], p[1])
                } else {
                    p[0]
                }
            })
            .collect();
    }
    xs.pop().unwrap_or_else(|| b.f32(0.0))
}

/// SPEC.md section 4's calibration of a span whose logits span `lo..=hi`: `(factor, wide)`,
/// `factor = (hi - lo - d) / (hi - lo)` where the spread exceeds `d` (`wide`), else 1; a logit
/// `s` becomes `lo + (s - lo) * factor`.
pub(super) fn calibration_factor(b: &mut Builder, lo: Value, hi: Value, d: f32) -> (Value, Value) {
    let spread = b.sub(hi, lo);
    let dv = b.f32(d);
    let wide = b.cmp(crate::ir::CmpOp::Gt, spread, dv);
    let num = b.sub(spread, dv);
    let factor = b.div(num, spread);
    let one = b.f32(1.0);
    (b.select(wide, factor, one), wide)
}
