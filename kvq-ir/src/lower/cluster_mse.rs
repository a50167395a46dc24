//! The `mse` rule in the cluster kernel ([`super::cluster_channel`]): Lloyd's rounds over the
//! column the cluster holds. Thread `tid` of rank `r` is strand `r * block + tid` of
//! `reference::range::tree_sum` (the cluster's threads are its [`crate::scheme::MSE_STRANDS`]
//! strands), so a round's sums take the tree's order: each thread sums its rows in order, a
//! reduce-scatter over lane bits 1, 2, .., 16 adds neighbouring strands first, then the warps'
//! partial sums pair up in shared memory, then the ranks' through distributed shared memory.
//! Counts (exact in f32) ride along the same way. 16 channel threads per block compute every
//! round's levels (each block the same bits) and hand the thresholds to the block.

use crate::ir::{BinaryOp, Builder, CmpOp, ScalarType, Special, Value, WarpOp, WARP_SIZE};
use crate::scheme::MSE_ITERATIONS;

use super::cluster_channel::{lane_bit, ClusterPlan};
use super::cluster_rows::Rows;
use super::emit::{mse_add_terms, mse_round};
use super::quantize_abi as abi;

/// Values a thread sums per channel and round: s0 and s1 (one array), then n1.
const SUMS: u32 = 3;

/// Runs the rounds; returns the channel threads' local of `[t, lo, hi]` after the last one
/// (read with [`range`]).
pub(super) fn rounds(b: &mut Builder, p: ClusterPlan, rows: &Rows) -> u32 {
    let w = p.w;
    debug_assert_eq!(2 * w, WARP_SIZE);
    let warps = p.block_size / WARP_SIZE;
    let sums = b.local("mse_sums", ScalarType::F32, 2 * w);
    let counts = b.local("mse_counts", ScalarType::F32, w);
    let t_l = b.local("mse_t", ScalarType::F32, w);
    let state = b.local("mse_state", ScalarType::F32, 3);
    let parts = b.shared("mse_parts", ScalarType::F32, warps * SUMS * w);
    let block_sums = b.shared("mse_block", ScalarType::F32, 2 * SUMS * w);
    let t_s = b.shared("mse_t_shared", ScalarType::F32, w);
    let sums_scatter = Scatter::new(b, 2 * w);
    let counts_scatter = Scatter::new(b, w);
    // Round 0 sums every value below +inf: the mean's sum, for finite input.
    let inf = b.f32(f32::INFINITY);
    for c in 0..w {
        let at = b.u32(c);
        b.write_local(t_l, at, inf);
    }
    for round in 0..=MSE_ITERATIONS {
        for k in 0..3 * w {
            let z = b.f32(0.0);
            let (local, at) = match k < 2 * w {
                true => (sums, b.u32(k)),
                false => (counts, b.u32(k - 2 * w)),
            };
            b.write_local(local, at, z);
        }
        rows.each(b, false, &|b, _, values| {
            for (c, &x) in (0..w).zip(&values) {
                let at = b.u32(c);
                let t = b.read_local(t_l, at);
                let at_s1 = b.u32(w + c);
                let places = [(sums, at), (sums, at_s1), (counts, at)];
                let cur = places.map(|(local, at)| b.read_local(local, at));
                let next = mse_add_terms(b, x, t, cur);
                for ((local, at), v) in places.into_iter().zip(next) {
                    b.write_local(local, at, v);
                }
            }
        });
        sums_scatter.sum(b, sums);
        counts_scatter.sum(b, counts);
        // Lane l holds element `reversed(l)` of each (its kept halves, lowest lane bit first).
        let warp = b.special(Special::WarpId);
        let lane = b.special(Special::LaneId);
        let slot = b.u32(SUMS * w);
        let base = b.mul(warp, slot);
        let e = reversed_bits(b, lane, 5);
        let to = b.add(base, e);
        let z = b.u32(0);
        let mine = b.read_local(sums, z);
        b.store(parts, to, mine);
        let half = b.u32(WARP_SIZE / 2);
        let low = b.cmp(CmpOp::Lt, lane, half);
        b.if_then(low, |b| {
            let e = reversed_bits(b, lane, 4);
            let off = b.u32(2 * w);
            let base = b.add(base, off);
            let to = b.add(base, e);
            let z = b.u32(0);
            let mine = b.read_local(counts, z);
            b.store(parts, to, mine);
        });
        b.barrier();
        // The block's sums: the warps' pairwise (thread i < 3w: element i), into this round's
        // half of `block_sums` (two halves, so that one cluster barrier a round suffices).
        let buffer = (round as u32 % 2) * SUMS * w;
        let tid = b.special(Special::ThreadId);
        let n = b.u32(SUMS * w);
        let element_thread = b.cmp(CmpOp::Lt, tid, n);
        b.if_then(element_thread, |b| {
            let parts_of: Vec<Value> = (0..warps)
                .map(|wp| {
                    let off = b.u32(wp * SUMS * w);
                    let at = b.add(off, tid);
                    b.load(parts, at, 1)
                })
                .collect();
            let sum = pairwise(b, parts_of);
            let off = b.u32(buffer);
            let at = b.add(off, tid);
            b.store(block_sums, at, sum);
        });
        b.cluster_barrier();
        // The cluster's sums and the round's levels (channel thread c).
        let tid = b.special(Special::ThreadId);
        let wv = b.u32(w);
        let channel_thread = b.cmp(CmpOp::Lt, tid, wv);
        b.if_then(channel_thread, |b| {
            let cluster_sum = |b: &mut Builder, k: u32| {
                let off = b.u32(buffer + k * w);
                let at = b.add(off, tid);
                let ranks: Vec<Value> = (0..p.cluster)
                    .map(|r| {
                        let rank = b.u32(r);
                        b.load_remote(block_sums, rank, at)
                    })
                    .collect();
                pairwise(b, ranks)
            };
            let (s0, s1, n1) = (cluster_sum(b, 0), cluster_sum(b, 1), cluster_sum(b, 2));
            let tokens = b.param(abi::TOKENS);
            let n = b.convert(ScalarType::F32, tokens);
            let (t_at, lo_at, hi_at) = (b.u32(0), b.u32(1), b.u32(2));
            let (lo, hi, t) = match round {
                0 => {
                    let mean = b.div(s0, n);
                    (mean, mean, mean)
                }
                _ => {
                    let t = b.read_local(state, t_at);
                    let [lo, hi, t] = mse_round(b, t, n, [s0, s1, n1]);
                    (lo, hi, t)
                }
            };
            b.write_local(state, t_at, t);
            b.write_local(state, lo_at, lo);
            b.write_local(state, hi_at, hi);
            b.store(t_s, tid, t);
        });
        b.barrier();
        for c in 0..w {
            let at = b.u32(c);
            let t = b.load(t_s, at, 1);
            b.write_local(t_l, at, t);
        }
    }
    state
}

/// The levels `(lo, hi)` a channel thread holds after [`rounds`].
pub(super) fn range(b: &mut Builder, state: u32) -> (Value, Value) {
    let (lo_at, hi_at) = (b.u32(1), b.u32(2));
    (b.read_local(state, lo_at), b.read_local(state, hi_at))
}

/// `((v0 + v1) + (v2 + v3)) + ..`: the perfect binary tree over `values` (a power of two).
fn pairwise(b: &mut Builder, mut values: Vec<Value>) -> Value {
    debug_assert!(values.len().is_power_of_two());
    while values.len() > 1 {
        values = values
            .chunks(2)
            .map(|pair| b.add(pair[0], pair[1]))
            .collect();
    }
    values[0]
}

/// A warp sum of an F32 local of `len` elements (a power of two, at most 32) by the strands'
/// tree, with its locals for the values sent and received at each step.
struct Scatter {
    len: u32,
    /// Per step: (send, recv).
    steps: Vec<(u32, u32)>,
}

impl Scatter {
    fn new(b: &mut Builder, len: u32) -> Scatter {
        debug_assert!(len.is_power_of_two() && len <= WARP_SIZE);
        let mut steps = Vec::new();
        let (mut live, mut s) = (len, 1);
        while s < WARP_SIZE {
            let half = (live / 2).max(1);
            let send = b.local(&format!("mse_send{len}_{s}"), ScalarType::F32, half);
            let recv = b.local(&format!("mse_recv{len}_{s}"), ScalarType::F32, half);
            steps.push((send, recv));
            live = half;
            s *= 2;
        }
        Scatter { len, steps }
    }

    /// Sums the local `v` over the warp's lanes: at the step of distance `s` (1, 2, .., while
    /// more than one element is live) a lane keeps the half of its live elements that lane bit
    /// `s` selects (the upper half when set), sends the other half to lane `l ^ s` and adds what
    /// it receives (IEEE addition is commutative: both lanes of a pair compute the same sum);
    /// the remaining steps add the one element across lanes. Lane `l` ends with element
    /// `reversed_bits(l)` (of `log2 len` bits) in `v[0]`, summed over all 32 lanes as the
    /// perfect tree over lane order does.
    fn sum(&self, b: &mut Builder, v: u32) {
        let mut live = self.len;
        for (step, &(send, recv)) in self.steps.iter().enumerate() {
            let s = 1 << step;
            let half = (live / 2).max(1);
            // Element j of the half a lane keeps (upper: true) or sends (upper: false).
            let pick = |b: &mut Builder, j: u32, keep: bool| match live {
                1 => {
                    let at = b.u32(0);
                    b.read_local(v, at)
                }
                _ => {
                    let upper = lane_bit(b, s);
                    let (first, second) = (b.u32(j), b.u32(half + j));
                    let a = b.read_local(v, first);
                    let c = b.read_local(v, second);
                    match keep {
                        true => b.select(upper, c, a),
                        false => b.select(upper, a, c),
                    }
                }
            };
            for j in 0..half {
                let out = pick(b, j, false);
                let at = b.u32(j);
                b.write_local(send, at, out);
            }
            b.warp(WarpOp::ShuffleXor {
                src: send,
                dst: recv,
                mask: s,
            });
            for j in 0..half {
                let kept = pick(b, j, true);
                let at = b.u32(j);
                let got = b.read_local(recv, at);
                let sum = b.add(kept, got);
                b.write_local(v, at, sum);
            }
            live = half;
        }
    }
}

/// The low `bits` bits of `x` in reverse order.
fn reversed_bits(b: &mut Builder, x: Value, bits: u32) -> Value {
    let mut out = b.u32(0);
    for i in 0..bits {
        let one = b.u32(1);
        let at = b.u32(i);
        let bit = b.binary(BinaryOp::Shr, x, at);
        let bit = b.binary(BinaryOp::And, bit, one);
        let to = b.u32(bits - 1 - i);
        let moved = b.binary(BinaryOp::Shl, bit, to);
        out = b.binary(BinaryOp::Or, out, moved);
    }
    out
}
