//! Quantize for axis = channel with groups of N tokens and a min/max rule, lanes over channels
//! (cooperative GPU schedule): one warp per (head, token group). A row of `head_dim` channels is
//! split across `lanes` consecutive lanes, `v` channels each (one aligned vector load), so a warp
//! reads `rows = 32 / lanes` whole contiguous rows per step and walks the group in
//! `ceil(N / rows)` steps; lane `r * lanes + c` takes tokens `r, r + rows, ...` of the group and
//! channels `c * v ..`. Each lane keeps the running extremes of its channels; a butterfly of xor
//! shuffles over the lanes holding the same channels (distances `lanes, 2 * lanes, ..`) gives
//! every lane its channels' group extremes. The lanes of the first token then store the
//! parameters, and every lane reads its rows again to code them, its code bytes stored as whole
//! words.
//!
//! Codes and parameters are the per-thread kernel's: min and max are order-free up to the sign
//! of a zero extreme, which `range_from_extremes` removes, and each element is coded by the same
//! operations. Lanes past the span (or of warps past the last group) keep neutral extremes, take
//! part in the shuffles and store nothing.

use crate::ir::{BinaryOp, Builder, CmpOp, ScalarType, Value, WarpOp, WARP_SIZE};
use crate::scheme::{Axis, Group, Scheme};

use super::emit::{
    flag_probe, global_item, group_params, load_f32_aligned, probe_finite, quantize_params,
    range_from_extremes, reads_group, store_params_aligned, token_groups, Coding,
};
use super::lanes::store_lane_bytes;
use super::{kernel_name, quantize_abi as abi, Launch, Lowered, ShapeClass};

/// Channels a lane covers at most: one or two 16-byte loads of the input.
const MAX_CHANNELS: u32 = 16;

/// How a warp covers a (head, token group): channels per lane, lanes per row, rows per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPlan {
    /// Channels per lane (a multiple of the codes per byte).
    pub v: u32,
    /// Lanes per row (`head_dim / v`, a power of two dividing 32).
    pub lanes: u32,
    /// Rows a warp reads per step (`32 / lanes`).
    pub rows: u32,
}

/// The plan for `scheme` at `head_dim`, or why there is none: axis = channel, groups of N
/// tokens, a min/max rule, and rows that split into whole lanes of whole code bytes.
pub fn plan(scheme: &Scheme, head_dim: u32) -> Result<ChannelPlan, String> {
    if scheme.axis != Axis::Channel || scheme.group == Group::All {
        return Err("lanes over channels with token groups need axis = channel, group = N".into());
    }
    if reads_group(scheme.rule) {
        return Err("lanes over channels with token groups need a min/max rule".into());
    }
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let v = MAX_CHANNELS.min(head_dim);
    let lanes = head_dim / v.max(1);
    let fits = v > 0
        && v % per_byte == 0
        && head_dim % v == 0
        && lanes.is_power_of_two()
        && lanes <= WARP_SIZE;
    match fits {
        true => Ok(ChannelPlan {
            v,
            lanes,
            rows: WARP_SIZE / lanes,
        }),
        false => Err(format!(
            "head_dim {head_dim} does not split into whole warps of {v}-channel lanes"
        )),
    }
}

/// A lane's place: its (head, group) warp, token offset `r` and channel chunk `c`.
struct Coords {
    h: Value,
    /// The warp's group and the span's token groups.
    g: Value,
    groups: Value,
    t0: Value,
    r: Value,
    c: Value,
    /// Whether the warp's (head, group) exists.
    warp_valid: Value,
}

fn coords(b: &mut Builder, block_size: u32, n: u32, p: ChannelPlan) -> Coords {
    let item = global_item(b, block_size);
    let ws = b.u32(WARP_SIZE);
    let warp = b.div(item, ws);
    let lane = b.rem(item, ws);
    let heads = b.param(abi::HEADS);
    let nv = b.u32(n);
    let groups = token_groups(b, n);
    let total = b.mul(heads, groups);
    let warp_valid = b.cmp(CmpOp::Lt, warp, total);
    let h = b.div(warp, groups);
    let g = b.rem(warp, groups);
    let t0 = b.mul(g, nv);
    let lanes = b.u32(p.lanes);
    let r = b.div(lane, lanes);
    let c = b.rem(lane, lanes);
    Coords {
        h,
        g,
        groups,
        t0,
        r,
        c,
        warp_valid,
    }
}

/// The lane's token at `step` (a multiple of the rows per step) into its group: its offset in
/// the group, the token, and whether it lies in the group and in the span.
fn step_token(b: &mut Builder, at: &Coords, n: u32, step: Value) -> (Value, Value, Value) {
    let in_group = b.add(step, at.r);
    let nv = b.u32(n);
    let below_n = b.cmp(CmpOp::Lt, in_group, nv);
    let t = b.add(at.t0, in_group);
    let tokens = b.param(abi::TOKENS);
    let in_span = b.cmp(CmpOp::Lt, t, tokens);
    let ok = b.binary(BinaryOp::And, below_n, in_span);
    (in_group, t, ok)
}

/// Runs `body(t)` for each token `t` of the lane's group in the span: step `i` takes group
/// token `i * rows + r`.
fn for_each_token(
    b: &mut Builder,
    at: &Coords,
    n: u32,
    p: ChannelPlan,
    body: impl Fn(&mut Builder, Value),
) {
    let (zero, steps) = (b.u32(0), b.u32(n.div_ceil(p.rows)));
    b.for_range(zero, steps, 1, |b, i| {
        let rows = b.u32(p.rows);
        let step = b.mul(i, rows);
        let (_, t, ok) = step_token(b, at, n, step);
        let ok = b.binary(BinaryOp::And, ok, at.warp_valid);
        b.if_then(ok, |b| body(b, t));
    });
}

/// Index of the first of the lane's channels of row `row` of a `[.., d]` array.
fn lane_first(b: &mut Builder, at: &Coords, row: Value, d: u32, v: u32) -> Value {
    let dv = b.u32(d);
    let start = b.mul(row, dv);
    let vv = b.u32(v);
    let c0 = b.mul(at.c, vv);
    b.add(start, c0)
}

/// Index of the first of the lane's channels of (head, token) `t` in `[heads, tokens, d]`.
fn element(b: &mut Builder, at: &Coords, t: Value, d: u32, v: u32) -> Value {
    let tokens = b.param(abi::TOKENS);
    let ht = b.mul(at.h, tokens);
    let row = b.add(ht, t);
    lane_first(b, at, row, d, v)
}

/// Quantize, axis = channel, group = N, min/max rules: see the module documentation.
pub fn quantize(scheme: &Scheme, shape: ShapeClass, block_size: u32, p: ChannelPlan) -> Lowered {
    let d = shape.head_dim;
    let n = match scheme.group {
        Group::Size(n) => n.get() as u32,
        Group::All => d, // `plan` refuses group = all.
    };
    let v = p.v;
    let input = shape.input.scalar();
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let mut b = Builder::new(&kernel_name("quantize_lanes", scheme, shape), block_size);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    // ext[j] / ext[v + j]: the running minimum / maximum of the lane's channel j.
    let ext = b.local("ext", ScalarType::F32, 2 * v);
    let other = b.local("other", ScalarType::F32, 2 * v);

    // Region 1: the extremes of the lane's channels over its tokens, the steps unrolled so that
    // the extremes stay values and the loads are independent. A step past the group or the span
    // reads the group's first row again, which leaves minima and maxima unchanged; warps past
    // the last group read row 0 (they store nothing).
    let at = coords(&mut b, block_size, n, p);
    let tokens = b.param(abi::TOKENS);
    let ht = b.mul(at.h, tokens);
    let first_row = b.add(ht, at.t0);
    let z = b.u32(0);
    let first_row = b.select(at.warp_valid, first_row, z);
    let mut mins: Vec<Value> = Vec::new();
    let mut maxs: Vec<Value> = Vec::new();
    let mut probe_v = b.f32(0.0);
    for i in 0..n.div_ceil(p.rows) {
        let step = b.u32(i * p.rows);
        let (in_group, _, ok) = step_token(&mut b, &at, n, step);
        let row = b.add(first_row, in_group);
        let row = b.select(ok, row, first_row);
        let first = lane_first(&mut b, &at, row, d, v);
        let values = load_f32_aligned(&mut b, x, first, v as u8, input);
        if mins.is_empty() {
            mins.clone_from(&values);
            maxs.clone_from(&values);
        } else {
            for (j, &value) in values.iter().enumerate() {
                mins[j] = b.min(mins[j], value);
                maxs[j] = b.max(maxs[j], value);
            }
        }
        for &value in &values {
            probe_v = probe_finite(&mut b, probe_v, value, input);
        }
    }
    for (j, (&mn, &mx)) in mins.iter().zip(&maxs).enumerate() {
        let (lo, hi) = (b.u32(j as u32), b.u32(v + j as u32));
        b.write_local(ext, lo, mn);
        b.write_local(ext, hi, mx);
    }
    flag_probe(&mut b, probe_v, status);

    // The group extremes: a butterfly over the lanes holding the same channels.
    let mut mask = p.lanes;
    while mask < WARP_SIZE {
        b.warp(WarpOp::ShuffleXor {
            src: ext,
            dst: other,
            mask,
        });
        for slot in 0..2 * v {
            let op = if slot < v {
                BinaryOp::Min
            } else {
                BinaryOp::Max
            };
            let idx = b.u32(slot);
            let (a, c) = (b.read_local(ext, idx), b.read_local(other, idx));
            let m = b.binary(op, a, c);
            b.write_local(ext, idx, m);
        }
        mask *= 2;
    }

    // Last region: parameters (stored by the lanes of the group's first token) and codes.
    let at = coords(&mut b, block_size, n, p);
    b.if_then(at.warp_valid, |b| {
        let params: Vec<(Value, Value, Coding)> = (0..v)
            .map(|j| {
                let (lo_i, hi_i) = (b.u32(j), b.u32(v + j));
                let mn = b.read_local(ext, lo_i);
                let mx = b.read_local(ext, hi_i);
                let (lo, hi) = range_from_extremes(b, scheme.rule, mn, mx);
                let (zero, scale) = group_params(b, scheme, lo, hi, status);
                (zero, scale, Coding::new(b, zero, scale))
            })
            .collect();
        let z = b.u32(0);
        let first_token = b.cmp(CmpOp::Eq, at.r, z);
        b.if_then(first_token, |b| {
            // Parameters [heads, groups, d]: the group's row is (head * groups + group).
            let hg = b.mul(at.h, at.groups);
            let param_row = b.add(hg, at.g);
            let base = lane_first(b, &at, param_row, d, v);
            let zeros: Vec<Value> = params.iter().map(|p| p.0).collect();
            let scales: Vec<Value> = params.iter().map(|p| p.1).collect();
            store_params_aligned(b, zero_m, base, &zeros, scheme.params);
            store_params_aligned(b, scale_m, base, &scales, scheme.params);
        });
        let bytes_per_lane = v / per_byte;
        for_each_token(b, &at, n, p, |b, t| {
            let first = element(b, &at, t, d, v);
            let values = load_f32_aligned(b, x, first, v as u8, input);
            let bytes: Vec<Value> = values
                .chunks(per_byte as usize)
                .zip(params.chunks(per_byte as usize))
                .map(|(xs, ps)| {
                    let lane_codes = xs
                        .iter()
                        .zip(ps)
                        .map(|(&x, (_, _, coding))| coding.code(b, scheme, x))
                        .collect();
                    b.pack_bits(lane_codes, scheme.bits, scheme.order)
                })
                .collect();
            let tokens = b.param(abi::TOKENS);
            let ht = b.mul(at.h, tokens);
            let row = b.add(ht, t);
            let row_bytes = b.u32(d * scheme.bits.width() / 8);
            let row_start = b.mul(row, row_bytes);
            let bpl = b.u32(bytes_per_lane);
            let lane_start = b.mul(at.c, bpl);
            let base = b.add(row_start, lane_start);
            store_lane_bytes(b, codes, base, bytes);
        });
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::ThreadPerGroup {
            columns: WARP_SIZE,
            group: n,
        },
    }
}
