//! Quantize kernel for axis = token: a group is one (head, token) over a run of channels. One
//! thread handles one row, in chunks that hold whole groups and whole code bytes.

use crate::ir::{BinaryOp, Builder, Memory, ScalarType, UnaryOp, Value};
use crate::scheme::{Group, Rule, Scheme};

use super::emit::{
    code, flag, for_each_row, group_params, group_range, group_range_local, load_f32,
    quantize_params, range_from_extremes, reads_group, store_param, STATUS_NON_FINITE,
};
use super::{kernel_name, quantize_abi as abi, Launch, Lowered, Schedule, ShapeClass};

/// Rows whose chunk is at most this many channels keep the loaded values for the codes;
/// wider chunks load them again (from cache) to bound register pressure.
const KEEP_LOADED: u32 = 32;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub fn lower(scheme: &Scheme, shape: ShapeClass, s: &Schedule) -> Lowered {
    let d = shape.head_dim;
    let n = match scheme.group {
        Group::All => d,
        Group::Size(n) => n.get() as u32,
    };
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let chunk = n / gcd(n, per_byte) * per_byte;
    let groups_per_row = d / n;
    let row_bytes = d * scheme.bits.width() / 8;
    let bsz = s.block_size;
    let mut b = Builder::new(&kernel_name("quantize", scheme, shape), bsz);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    let range_local = group_range_local(&mut b, scheme.rule);
    let input = shape.input.scalar();

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
        let mut bad: Option<Value> = None;
        let mut note = |b: &mut Builder, values: &[Value]| {
            for &v in values {
                let fin = b.unary(UnaryOp::IsFinite, v);
                let not_fin = b.unary(UnaryOp::Not, fin);
                bad = Some(match bad {
                    Some(prev) => b.binary(BinaryOp::Or, prev, not_fin),
                    None => not_fin,
                });
            }
        };
        for c_start in (0..d).step_by(chunk as usize) {
            // Small chunks are loaded once and kept for the codes (one pass over the data);
            // wide ones stream vector by vector and are loaded again for the codes, which
            // bounds the live values (registers) by a few vectors.
            let kept = (chunk <= KEEP_LOADED).then(|| load(b, c_start, chunk));
            let mut params = Vec::new();
            for g in 0..chunk / n {
                let g_start = c_start + g * n;
                let (lo, hi) = match (&kept, scheme.rule) {
                    (Some(values), rule) => {
                        let members = &values[(g * n) as usize..((g + 1) * n) as usize];
                        note(b, members);
                        match rule {
                            rule if reads_group(rule) => {
                                whole(b, rule, (x, input), row, [g_start, n], range_local)
                            }
                            rule => {
                                let mn = tree(b, members, BinaryOp::Min);
                                let mx = tree(b, members, BinaryOp::Max);
                                range_from_extremes(b, rule, mn, mx)
                            }
                        }
                    }
                    (None, rule) => {
                        let mut acc: Option<(Vec<Value>, Vec<Value>)> = None;
                        for j in (0..n).step_by(s.vector as usize) {
                            let v = load(b, g_start + j, s.vector as u32);
                            note(b, &v);
                            acc = Some(match acc {
                                None => (v.clone(), v),
                                Some((mn, mx)) => (
                                    mn.iter().zip(&v).map(|(&a, &c)| b.min(a, c)).collect(),
                                    mx.iter().zip(&v).map(|(&a, &c)| b.max(a, c)).collect(),
                                ),
                            });
                        }
                        match (rule, acc) {
                            (rule, _) if reads_group(rule) => {
                                whole(b, rule, (x, input), row, [g_start, n], range_local)
                            }
                            (rule, Some((mn, mx))) => {
                                let mn = tree(b, &mn, BinaryOp::Min);
                                let mx = tree(b, &mx, BinaryOp::Max);
                                range_from_extremes(b, rule, mn, mx)
                            }
                            // A group has at least one vector, so `acc` is set; min and max
                            // are quantile(0) and quantile(1) should it ever not be.
                            (_, None) => {
                                whole(b, Rule::MinMax, (x, input), row, [g_start, n], None)
                            }
                        }
                    }
                };
                let (z, sc) = group_params(b, scheme, lo, hi, status);
                let gi = b.u32(g_start / n);
                let at = b.add(param_row, gi);
                store_param(b, zero_m, at, z, scheme.params);
                store_param(b, scale_m, at, sc, scheme.params);
                params.push((z, sc));
            }
            let unit = (s.vector as u32).max(per_byte);
            for u in (0..chunk).step_by(unit as usize) {
                let values = match &kept {
                    Some(values) => values[u as usize..(u + unit) as usize].to_vec(),
                    None => load(b, c_start + u, unit),
                };
                for k in 0..unit / per_byte {
                    let lane_codes: Vec<Value> = (0..per_byte)
                        .map(|l| {
                            let ch = u + k * per_byte + l;
                            let (z, sc) = params[(ch / n) as usize];
                            code(b, scheme, values[(k * per_byte + l) as usize], z, sc)
                        })
                        .collect();
                    let byte = b.pack_bits(lane_codes, scheme.bits, scheme.order);
                    let off = b.u32((c_start + u) / per_byte + k);
                    let idx = b.add(code_row, off);
                    b.store(codes, idx, byte);
                }
            }
        }
        if let Some(bad) = bad {
            flag(b, status, bad, STATUS_NON_FINITE);
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

/// [lo, hi] of a rule that reads the whole group (channels `c_start..c_start + n` of `row`).
fn whole(
    b: &mut Builder,
    rule: Rule,
    (x, input): (Memory, ScalarType),
    row: Value,
    [c_start, n]: [u32; 2],
    local: Option<u32>,
) -> (Value, Value) {
    let off = b.u32(c_start);
    let base = b.add(row, off);
    let stride = b.u32(1);
    let count = b.u32(n);
    group_range(b, rule, x, input, [base, stride, count], local)
}
