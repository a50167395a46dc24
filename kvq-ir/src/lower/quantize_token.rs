//! Quantize kernel for axis = token: a group is one (head, token) over a run of channels. One
//! thread handles one row: each group's extremes from the group loaded whole, then the row's
//! code bytes as a loop that a CPU's loop vectorizer widens (straight-line code where bytes
//! straddle groups). Host kernels of group = all min/max rules take runs of rows instead
//! ([`super::quantize_rows`]).

use crate::ir::{BinaryOp, Builder, Memory, ScalarType, Value};
use crate::scheme::{Group, Rule, Scheme};

use super::emit::{
    flag, flag_non_finite_extremes, flag_noted, flag_probe, for_each_row, from_order_key,
    group_params_unflagged, group_range, group_range_local, load_f32, note_condition, order_key,
    pack_scalar, probe_term, quantize_params, range_from_extremes, reads_group, store_param,
    Coding, MseLocals, STATUS_OVERFLOW,
};
use super::quantize_rows;
use super::{kernel_name, quantize_abi as abi, Launch, Lowered, Schedule, ShapeClass};

pub fn lower(scheme: &Scheme, shape: ShapeClass, s: &Schedule) -> Lowered {
    let d = shape.head_dim;
    let n = match scheme.group {
        Group::All => d,
        Group::Size(n) => n.get() as u32,
    };
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let groups_per_row = d / n;
    let row_bytes = d * scheme.bits.width() / 8;
    let bsz = s.block_size;
    if bsz == 1 && groups_per_row == 1 && !reads_group(scheme.rule) {
        return quantize_rows::lower(scheme, shape, s);
    }
    let mut b = Builder::new(&kernel_name("quantize", scheme, shape), bsz);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    let range_local = group_range_local(&mut b, scheme.rule);
    let input = shape.input.scalar();
    // Each channel's group parameters, for rows of several groups of whole bytes.
    let channel_params = (groups_per_row > 1 && n % per_byte == 0).then(|| {
        (
            b.local("zero", ScalarType::F32, d),
            b.local("scale", ScalarType::F32, d),
        )
    });

    // Host rows of several min/max groups of whole bytes: the groups' parameters in a loop over
    // the groups, which a CPU's loop vectorizer widens; unrolled, each group's scalar parameter
    // code was most of the row (2-bit, group = 32: 6.2-6.6 -> 5.0-5.4 ms). Codes by comparison
    // with thresholds found in that loop were slower here, both with each channel's three
    // thresholds filled from its group's (9.8 ms) and with a loop over each group's bytes
    // against its thresholds (10.0 ms; the division's loop runs the row in 16-lane vectors).
    let looped = (bsz == 1 && channel_params.is_some() && !reads_group(scheme.rule))
        .then(|| GroupLocals::new(&mut b, groups_per_row));

    for_each_row(&mut b, bsz, [abi::HEADS, abi::TOKENS], |b, item, _| {
        let dv = b.u32(d);
        let row = b.mul(item, dv);
        let gv = b.u32(groups_per_row);
        let param_row = b.mul(item, gv);
        let rbv = b.u32(row_bytes);
        let code_row = b.mul(item, rbv);
        let load = |b: &mut Builder, c_start: u32, count: u32| -> Vec<Value> {
            let mut out = Vec::new();
            for j in 0..count / s.vector as u32 {
                let off = b.u32(c_start + j * s.vector as u32);
                let idx = b.add(row, off);
                out.extend(load_f32(b, x, idx, s.vector, shape.input.scalar()));
            }
            out
        };
        // Rules that read the whole group find non-finite input by a probe (`probe_term`: a
        // sum of the values, or of `x * 0`, taken as a balanced tree) instead of a test and a
        // branch-free OR per element; min/max rules read it off their extremes.
        let mut probe: Option<Value> = None;
        let mut extremes: Vec<(Value, Value)> = Vec::new();
        let mut overflows: Vec<Value> = Vec::new();
        let mut note = |b: &mut Builder, values: &[Value]| {
            let terms: Vec<Value> = values.iter().map(|&v| probe_term(b, v, input)).collect();
            let sum = tree(b, &terms, BinaryOp::Add);
            probe = Some(match probe {
                Some(prev) => b.add(prev, sum),
                None => sum,
            });
        };
        // Each group loaded whole for its extremes (trees, which vectorize); the codes read
        // the values again, below.
        let mut params = Vec::new();
        for g in 0..groups_per_row {
            let g_start = g * n;
            let members = load(b, g_start, n);
            let (lo, hi) = match scheme.rule {
                rule if reads_group(rule) => {
                    note(b, &members);
                    whole(b, rule, (x, input), row, [g_start, n], range_local)
                }
                rule => {
                    // Extremes over order keys keep a NaN (its key lies beyond the
                    // infinities'), so they show non-finite input themselves.
                    let mn = extreme(b, &members, BinaryOp::Min);
                    let mx = extreme(b, &members, BinaryOp::Max);
                    extremes.push((mn, mx));
                    if let Some(gl) = &looped {
                        let (at, above) = (b.u32(g), b.u32(groups_per_row + g));
                        b.write_local(gl.extremes, at, mn);
                        b.write_local(gl.extremes, above, mx);
                        continue;
                    }
                    range_from_extremes(b, rule, mn, mx)
                }
            };
            let (z, sc, overflow) = group_params_unflagged(b, scheme, lo, hi);
            overflows.push(overflow);
            let gi = b.u32(g);
            let at = b.add(param_row, gi);
            store_param(b, zero_m, at, z, scheme.params);
            store_param(b, scale_m, at, sc, scheme.params);
            params.push((z, sc));
        }
        if let Some(gl) = &looped {
            let count = b.u32(groups_per_row);
            gl.params(b, scheme, [zero_m, scale_m], param_row, count);
            if let Some((zero_l, scale_l)) = channel_params {
                gl.fill(b, [zero_l, scale_l], groups_per_row, n);
            }
        }
        let rc = RowCodes {
            scheme,
            input,
            x,
            codes,
            row,
            code_row,
        };
        let code_byte =
            |b: &mut Builder, ch: Value, coding: &dyn Fn(&mut Builder, u32) -> Coding| {
                code_byte(b, &rc, ch, coding)
            };
        let byte_channel = |b: &mut Builder, k: Value| {
            let pb = b.u32(per_byte);
            b.mul(k, pb)
        };
        let first = b.u32(0);
        let bytes = b.u32(d / per_byte);
        match (params.as_slice(), channel_params) {
            // One group: a loop over the row's bytes, which a CPU's loop vectorizer runs many
            // bytes at a time (straight-line code with `PackBits` vectorized within a byte).
            (&[(z, sc)], _) if n % per_byte == 0 => {
                let coding = Coding::new(b, z, sc);
                b.for_range(first, bytes, 1, |b, k| {
                    let ch = byte_channel(b, k);
                    code_byte(b, ch, &|_, _| coding.clone());
                });
            }
            // Groups of whole bytes: the same loop, each channel's parameters from locals
            // (consecutive reads, which vectorize where a group's would not; looped groups
            // filled them already).
            (_, Some((zero_l, scale_l))) => {
                for (g, &(z, sc)) in params.iter().enumerate() {
                    for c in g as u32 * n..(g as u32 + 1) * n {
                        let cv = b.u32(c);
                        b.write_local(zero_l, cv, z);
                        b.write_local(scale_l, cv, sc);
                    }
                }
                b.for_range(first, bytes, 1, |b, k| {
                    let ch = byte_channel(b, k);
                    code_byte(b, ch, &|b, l| {
                        let lv = b.u32(l);
                        let c = b.add(ch, lv);
                        let z = b.read_local(zero_l, c);
                        let sc = b.read_local(scale_l, c);
                        Coding::new(b, z, sc)
                    });
                });
            }
            // Bytes that straddle groups (groups narrower than a byte's codes, or not a
            // multiple of them): each byte written out.
            _ => {
                let codings: Vec<Coding> = params
                    .iter()
                    .map(|&(z, sc)| Coding::new(b, z, sc))
                    .collect();
                for j in 0..d / per_byte {
                    let ch = b.u32(j * per_byte);
                    code_byte(b, ch, &|_, l| {
                        codings[((j * per_byte + l) / n) as usize].clone()
                    });
                }
            }
        }
        if let Some(probe) = probe {
            flag_probe(b, probe, status);
        }
        flag_non_finite_extremes(b, &extremes, status);
        if let Some(any) = overflows
            .into_iter()
            .reduce(|a, o| b.binary(BinaryOp::Or, a, o))
        {
            flag(b, status, any, STATUS_OVERFLOW);
        }
        if let Some(gl) = &looped {
            flag_noted(b, status, gl.overflow, STATUS_OVERFLOW);
        }
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::ThreadPerRow,
    }
}

/// `op` folded over `values` as a balanced tree: element i meets element i + len/2, so the first
/// levels are lane-wise operations on whole loaded vectors (which vectorizes). For Min and Max
/// the order only decides the sign of a zero extreme, which `range_from_extremes` normalises.
fn tree(b: &mut Builder, values: &[Value], op: BinaryOp) -> Value {
    let mut level = values.to_vec();
    while level.len() > 1 {
        let half = level.len().div_ceil(2);
        let (low, high) = level.split_at(half);
        let mut next: Vec<Value> = low
            .iter()
            .zip(high)
            .map(|(&a, &c)| b.binary(op, a, c))
            .collect();
        next.extend_from_slice(&low[high.len()..]);
        level = next;
    }
    level[0]
}

/// The minimum or maximum (`op`) of `values`, as a balanced tree over their order keys
/// ([`order_key`]): unsigned integer minima and maxima, which a CPU reduces across SIMD lanes in
/// a few instructions, where float `Min`/`Max` (compare and select) were reduced one lane at a
/// time. The order only decides the sign of a zero extreme, which `range_from_extremes`
/// normalises; a NaN comes out as a NaN, an infinity as itself.
pub(super) fn extreme(b: &mut Builder, values: &[Value], op: BinaryOp) -> Value {
    let keys: Vec<Value> = values.iter().map(|&v| order_key(b, v)).collect();
    let key = tree(b, &keys, op);
    from_order_key(b, key)
}

/// [lo, hi] of a rule that reads the whole group (channels `c_start..c_start + n` of `row`).
fn whole(
    b: &mut Builder,
    rule: Rule,
    (x, input): (Memory, ScalarType),
    row: Value,
    [c_start, n]: [u32; 2],
    local: Option<MseLocals>,
) -> (Value, Value) {
    let off = b.u32(c_start);
    let base = b.add(row, off);
    let stride = b.u32(1);
    let count = b.u32(n);
    group_range(b, rule, x, input, [base, stride, count], local)
}

/// One row's coding: the scheme, the input's type, the input and code buffers, the row's first
/// element and first code byte.
pub(super) struct RowCodes<'a> {
    pub scheme: &'a Scheme,
    pub input: ScalarType,
    pub x: Memory,
    pub codes: Memory,
    pub row: Value,
    pub code_row: Value,
}

/// Codes the byte at channel `ch` of the row from scalar loads, lane `l`'s code by `coding(l)`.
pub(super) fn code_byte(
    b: &mut Builder,
    rc: &RowCodes,
    ch: Value,
    coding: &dyn Fn(&mut Builder, u32) -> Coding,
) {
    let per_byte = rc.scheme.bits.codes_per_byte() as u32;
    let at = b.add(rc.row, ch);
    let lane_codes: Vec<Value> = (0..per_byte)
        .map(|l| {
            let lv = b.u32(l);
            let i = b.add(at, lv);
            let v = load_f32(b, rc.x, i, 1, rc.input)[0];
            coding(b, l).code(b, rc.scheme, v)
        })
        .collect();
    let byte = pack_scalar(b, &lane_codes, rc.scheme.bits, rc.scheme.order);
    let pb = b.u32(per_byte);
    let off = b.div(ch, pb);
    let idx = b.add(rc.code_row, off);
    b.store(rc.codes, idx, byte);
}

/// The locals of a host row's groups when their parameters come from a loop over the groups:
/// each group's extremes (minima, then maxima), zero and scale; `overflow` ORs the groups'
/// overflows. Also a run of rows' (`quantize_rows`, a row a group).
#[derive(Clone, Copy)]
pub(super) struct GroupLocals {
    pub extremes: u32,
    pub zero: u32,
    pub scale: u32,
    pub overflow: u32,
    /// Groups the locals hold (the maxima start there in `extremes`).
    pub len: u32,
}

impl GroupLocals {
    /// The locals of `len` groups.
    pub fn new(b: &mut Builder, len: u32) -> GroupLocals {
        GroupLocals {
            extremes: b.local("extremes", ScalarType::F32, 2 * len),
            zero: b.local("group_zero", ScalarType::F32, len),
            scale: b.local("group_scale", ScalarType::F32, len),
            overflow: b.local("overflow", ScalarType::U32, 1),
            len,
        }
    }

    /// The first `count` groups' parameters from their extremes: group `g`'s stored at
    /// `param_row + g`, kept in the locals, their overflows ORed into `overflow`.
    pub fn params(
        &self,
        b: &mut Builder,
        scheme: &Scheme,
        [zero_m, scale_m]: [Memory; 2],
        param_row: Value,
        count: Value,
    ) {
        let (at, no) = (b.u32(0), b.u32(0));
        b.write_local(self.overflow, at, no);
        let first = b.u32(0);
        b.for_range(first, count, 1, |b, g| {
            let mn = b.read_local(self.extremes, g);
            let above = b.u32(self.len);
            let at = b.add(above, g);
            let mx = b.read_local(self.extremes, at);
            let (lo, hi) = range_from_extremes(b, scheme.rule, mn, mx);
            let (z, sc, over) = group_params_unflagged(b, scheme, lo, hi);
            let at = b.add(param_row, g);
            store_param(b, zero_m, at, z, scheme.params);
            store_param(b, scale_m, at, sc, scheme.params);
            b.write_local(self.zero, g, z);
            b.write_local(self.scale, g, sc);
            note_condition(b, self.overflow, over);
        });
    }

    /// Each channel's zero and scale (the locals `zero_l`, `scale_l`) from its group's (groups
    /// of `n`).
    fn fill(&self, b: &mut Builder, [zero_l, scale_l]: [u32; 2], groups: u32, n: u32) {
        for g in 0..groups {
            let gv = b.u32(g);
            let z = b.read_local(self.zero, gv);
            let sc = b.read_local(self.scale, gv);
            for c in g * n..(g + 1) * n {
                let cv = b.u32(c);
                b.write_local(zero_l, cv, z);
                b.write_local(scale_l, cv, sc);
            }
        }
    }
}
