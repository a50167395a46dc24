//! Quantize for axis = channel, group = all (every rule) on GPUs with thread-block clusters
//! (sm_90): a cluster of [`MAX_CLUSTER_SIZE`] blocks per (head, column of
//! 16 channels), the span dealt out in runs of rows ([`ClusterPlan::run`]): thread `tid` of rank
//! `r`, the cluster's thread `j = r * block + tid`, takes the runs `j, j + S, j + 2S, ..` (`S`
//! the cluster's threads), its *strand*. For `mse` the runs are [`MSE_RUN`] rows, the strands of
//! `reference::range::tree_sum` (whose [`MSE_STRANDS`] are the cluster's threads); for min/max
//! and quantile rules single rows, so that a warp's 32 rows are neighbours and its code stores
//! share sectors.
//!
//! 1. Each thread loads its rows, one aligned 16-element load per row (32 contiguous bytes of
//!    f16, a whole sector), which it also keeps in shared memory
//!    (the first [`ClusterPlan::stage`] `/ block` of its rows; past them a row is read again from
//!    global memory when needed), and folds into its running minima and maxima (IEEE `minimum` /
//!    `maximum`, so that they also carry any non-finite input, which the thread flags from them
//!    at the end).
//! 2. Min/max rules: a reduce-scatter over each warp's lanes (lane `l` ends with one of the 32
//!    extremes), then 32 threads folding the warps' partials from shared memory, give the
//!    block's extremes; after a cluster barrier, 16 threads of every block read the cluster's
//!    partial extremes from each block's shared memory (distributed shared memory), in rank
//!    order. `mse`: Lloyd's rounds over the rows ([`cluster_mse`](super::cluster_mse)), the
//!    sums added up by the strands' tree through lanes, warps and ranks. Quantile: a radix
//!    select over the staged rows of the whole cluster
//!    ([`cluster_quantile`](super::cluster_quantile)), after a barrier (each thread counts
//!    rows that other threads staged).
//! 3. Those 16 threads derive the range, parameters (stored by rank 0) and code thresholds of
//!    their channel; a cluster barrier keeps every block's shared memory alive until all have
//!    read it.
//! 4. Every thread codes its rows from shared memory (or global memory past the staged rows).
//!
//! Codes and parameters are the per-thread kernel's: the extremes are IEEE 754-2019 minimum and
//! maximum (one instruction each on a GPU), which differ from the IR's `Min`/`Max` only for NaN
//! (non-finite input is flagged and nothing stored) and in the sign of a zero extreme, which
//! `range_from_extremes` removes; thresholds give the division's codes.

use crate::ir::{
    BinaryOp, Builder, CmpOp, Memory, ScalarType, Special, Value, WarpOp, MAX_CLUSTER_SIZE,
    WARP_SIZE,
};
use crate::scheme::{Axis, Group, Rule, Scheme, MSE_RUN, MSE_STRANDS};

use super::block_select::Keys;
use super::cluster_rows::{coords, Rows};
use super::emit::{
    code, code_from_thresholds, code_threshold, flag_non_finite_extremes, group_params,
    positive_zero, quantize_params, range_from_extremes, store_param, MAX_THRESHOLD_LEVELS,
};
use super::key16::threshold_key16;
use super::lanes::store_lane_bytes;
use super::{cluster_mse, cluster_quantile};
use super::{kernel_name, quantize_abi as abi, Launch, Lowered, Schedule, ShapeClass};

/// Channels of a column: one 16-element load per row.
const COLUMN: u32 = 16;
/// Threads per block.
const BLOCK: u32 = 256;
/// Bytes of input a block keeps in shared memory.
const STAGE_BYTES: u32 = 64 * 1024;

/// The most rows a thread of the quantile rule's selection counts into its histogram of U16
/// counters before the block adds it up: 16 threads' rows a pass, at most 65,520 keys, so that
/// no counter wraps.
pub const MAX_CHUNK_ROWS: u32 = u16::MAX as u32 / 16;

/// The cluster kernel's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterPlan {
    /// Threads per block.
    pub block_size: u32,
    /// Channels per column.
    pub w: u32,
    /// Blocks per cluster.
    pub cluster: u32,
    /// Rows a block keeps in shared memory (a multiple of `block_size`: the first `stage /
    /// block_size` rows of each thread).
    pub stage: u32,
    /// Neighbouring rows a thread takes at a time: [`MSE_RUN`] for `mse`, else 1 (which the
    /// quantile selection's reads of other threads' rows assume).
    pub run: u32,
    /// The quantile rule: rows a thread counts into its 16-bit histogram before the block adds
    /// it up (1 to [`MAX_CHUNK_ROWS`]; other values are taken as the nearest of those).
    pub chunk: u32,
}

impl ClusterPlan {
    /// Whether `s` asks for this plan's kernel.
    pub fn fits(&self, s: &Schedule) -> bool {
        s.block_size == self.block_size && s.channels == self.w && s.cluster == self.cluster
    }

    /// The cluster's threads: its strands.
    pub(super) fn strands(&self) -> u32 {
        self.cluster * self.block_size
    }
}

/// The plan for `scheme` at `shape`, or why there is none: axis = channel, group = all, and a
/// head_dim of whole 16-channel columns.
pub fn plan(scheme: &Scheme, shape: ShapeClass) -> Result<ClusterPlan, String> {
    if scheme.axis != Axis::Channel || scheme.group != Group::All {
        return Err("the cluster kernel needs axis = channel, group = all".into());
    }
    if shape.head_dim % COLUMN != 0 {
        return Err(format!(
            "head_dim {} is not whole columns of {COLUMN} channels",
            shape.head_dim
        ));
    }
    Ok(ClusterPlan {
        block_size: BLOCK,
        w: COLUMN,
        cluster: MAX_CLUSTER_SIZE,
        stage: STAGE_BYTES / (COLUMN * shape.input.scalar().size() as u32),
        run: match scheme.rule {
            Rule::Mse => MSE_RUN as u32,
            _ => 1,
        },
        chunk: MAX_CHUNK_ROWS,
    })
}

/// Quantize, axis = channel, group = all, in clusters: see the module documentation.
pub fn quantize(scheme: &Scheme, shape: ShapeClass, p: ClusterPlan) -> Lowered {
    let d = shape.head_dim;
    let columns = d / p.w;
    let input = shape.input.scalar();
    let levels = scheme.bits.max_code();
    let thresholds = levels <= MAX_THRESHOLD_LEVELS;
    let mut b = Builder::new(
        &kernel_name("quantize_cluster", scheme, shape),
        p.block_size,
    );
    b.cluster(p.cluster);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    // The quantile rule counts f16 and bf16 elements by their 16-bit keys: stage those.
    let keys = matches!(scheme.rule, Rule::Quantile(_)) && Keys::of(input).by_key16();
    let stage_type = match keys {
        true => ScalarType::U16,
        false => input,
    };
    let stage = b.shared("stage", stage_type, p.stage * p.w);
    let rows = Rows::new(p, [columns, d], input, [x, stage], keys);
    // Per channel: its thresholds, or its zero and scale.
    let per_channel = match thresholds {
        true => u32::from(levels),
        false => 2,
    };
    let coding_s = b.shared("coding", ScalarType::F32, p.w * per_channel);
    // With keys staged, rows are coded by comparing keys with the thresholds' keys.
    let key_coding = keys && thresholds;
    let coding_k = key_coding.then(|| b.shared("coding_k", ScalarType::U16, p.w * per_channel));
    let ext = b.local("ext", ScalarType::F32, 2 * p.w);
    let bisect = b.local("bisect", ScalarType::U32, 2);

    // 1. The thread's rows: staged, folded into its extremes.
    let (inf, ninf) = (b.f32(f32::INFINITY), b.f32(f32::NEG_INFINITY));
    for j in 0..p.w {
        let (lo, hi) = (b.u32(2 * j), b.u32(2 * j + 1));
        b.write_local(ext, lo, inf);
        b.write_local(ext, hi, ninf);
    }
    rows.each(&mut b, true, &|b, _, values| {
        for (j, &v) in values.iter().enumerate() {
            let (lo, hi) = (b.u32(2 * j as u32), b.u32(2 * j as u32 + 1));
            let m = b.read_local(ext, lo);
            let m = b.minimum(m, v);
            b.write_local(ext, lo, m);
            let m = b.read_local(ext, hi);
            let m = b.maximum(m, v);
            b.write_local(ext, hi, m);
        }
    });
    let extremes: Vec<(Value, Value)> = (0..p.w)
        .map(|j| {
            let (lo, hi) = (b.u32(2 * j), b.u32(2 * j + 1));
            (b.read_local(ext, lo), b.read_local(ext, hi))
        })
        .collect();
    flag_non_finite_extremes(&mut b, &extremes, status);

    // 2. What the channel threads derive their ranges from.
    let source = match scheme.rule {
        Rule::Mse => {
            debug_assert_eq!(
                (p.strands() as usize, p.run as usize),
                (MSE_STRANDS, MSE_RUN)
            );
            RangeSource::Mse(cluster_mse::rounds(&mut b, p, &rows))
        }
        Rule::Quantile(level) => RangeSource::Quantile(cluster_quantile::select(
            &mut b,
            p,
            &rows,
            input,
            level.get(),
        )),
        _ => RangeSource::Extremes(block_extremes(&mut b, p, ext)),
    };

    // 3. The cluster's ranges, parameters and thresholds of each channel.
    let at = coords(&mut b, p, columns);
    let tid = b.special(Special::ThreadId);
    let w = b.u32(p.w);
    let channel_thread = b.cmp(CmpOp::Lt, tid, w);
    b.if_then(channel_thread, |b| {
        let (lo, hi) = match source {
            RangeSource::Extremes(block_ext) => {
                let (mn, mx) = cluster_extremes(b, p, block_ext, tid);
                range_from_extremes(b, scheme.rule, mn, mx)
            }
            RangeSource::Mse(state) => {
                let (lo, hi) = cluster_mse::range(b, state);
                (positive_zero(b, lo), positive_zero(b, hi))
            }
            RangeSource::Quantile(range) => {
                let wv = b.u32(p.w);
                let hi_at = b.add(tid, wv);
                (b.load(range, tid, 1), b.load(range, hi_at, 1))
            }
        };
        let (zero, scale) = group_params(b, scheme, lo, hi, status);
        let z = b.u32(0);
        let leader = b.cmp(CmpOp::Eq, at.rank, z);
        b.if_then(leader, |b| {
            let dv = b.u32(d);
            let hd = b.mul(at.h, dv);
            let ch = b.add(at.c0, tid);
            let to = b.add(hd, ch);
            store_param(b, zero_m, to, zero, scheme.params);
            store_param(b, scale_m, to, scale, scheme.params);
        });
        let pc = b.u32(per_channel);
        let first = b.mul(tid, pc);
        let values: Vec<Value> = match thresholds {
            true => (1..=levels)
                .map(|level| code_threshold(b, scheme, [zero, scale], level, bisect, false))
                .collect(),
            false => vec![zero, scale],
        };
        for (k, v) in values.into_iter().enumerate() {
            let off = b.u32(k as u32);
            let to = b.add(first, off);
            b.store(coding_s, to, v);
            if let Some(coding_k) = coding_k {
                let key = threshold_key16(b, v, input);
                b.store(coding_k, to, key);
            }
        }
    });
    // Also the block's barrier before coding; no block leaves while another reads its arrays.
    b.cluster_barrier();

    // 4. Codes of the thread's rows.
    let at = coords(&mut b, p, columns);
    // Per channel: its thresholds (or their keys), or [zero, scale].
    let coders: Vec<Vec<Value>> = (0..p.w)
        .map(|j| {
            (0..per_channel)
                .map(|k| {
                    let i = b.u32(j * per_channel + k);
                    b.load(coding_k.unwrap_or(coding_s), i, 1)
                })
                .collect()
        })
        .collect();
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let store_codes =
        |b: &mut Builder, t: Value, codes_of: &dyn Fn(&mut Builder, usize) -> Value| {
            let bytes: Vec<Value> = (0..p.w as usize)
                .collect::<Vec<_>>()
                .chunks(per_byte as usize)
                .map(|js| {
                    let lane_codes = js.iter().map(|&j| codes_of(b, j)).collect();
                    b.pack_bits(lane_codes, scheme.bits, scheme.order)
                })
                .collect();
            let tokens = b.param(abi::TOKENS);
            let ht = b.mul(at.h, tokens);
            let row = b.add(ht, t);
            let row_bytes = b.u32(d * scheme.bits.width() / 8);
            let row_start = b.mul(row, row_bytes);
            let column_bytes = b.u32(p.w / per_byte);
            let col_byte = b.mul(at.col, column_bytes);
            let base = b.add(row_start, col_byte);
            store_lane_bytes(b, codes, base, bytes);
        };
    match key_coding {
        true => rows.each_key(&mut b, &|b, t, keys| {
            store_codes(b, t, &|b, j| code_from_thresholds(b, keys[j], &coders[j]))
        }),
        false => rows.each(&mut b, false, &|b, t, values| {
            store_codes(b, t, &|b, j| match thresholds {
                true => code_from_thresholds(b, values[j], &coders[j]),
                false => code(b, scheme, values[j], coders[j][0], coders[j][1]),
            })
        }),
    }
    Lowered {
        kernel: b.finish(),
        launch: Launch::ClusterPerColumn {
            columns,
            cluster: p.cluster,
        },
    }
}

/// Where the channel threads find their ranges' inputs.
enum RangeSource {
    /// The blocks' extremes, interleaved (shared array, read remotely).
    Extremes(Memory),
    /// `mse`'s final levels (a local of the channel threads).
    Mse(u32),
    /// The quantile rule's ranges (shared: the low ends, then the high ends).
    Quantile(Memory),
}

/// The block's extremes of the threads' `ext` into a shared array (element `2c` the minimum of
/// channel `c`, `2c + 1` its maximum), then a cluster barrier: a reduce-scatter over each warp
/// leaves lane `l` with element `l` of the warp's extremes; then thread `i < 32` folds element
/// `i` over the warps.
fn block_extremes(b: &mut Builder, p: ClusterPlan, ext: u32) -> Memory {
    let warps = p.block_size / WARP_SIZE;
    let parts = b.shared("parts", ScalarType::F32, warps * 2 * p.w);
    let block_ext = b.shared("block_ext", ScalarType::F32, 2 * p.w);
    reduce_scatter(b, ext, 2 * p.w);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let wv = b.u32(2 * p.w);
    let slot = b.mul(warp, wv);
    let to = b.add(slot, lane);
    let z = b.u32(0);
    let mine = b.read_local(ext, z);
    b.store(parts, to, mine);
    b.barrier();
    let tid = b.special(Special::ThreadId);
    let n = b.u32(2 * p.w);
    let element_thread = b.cmp(CmpOp::Lt, tid, n);
    b.if_then(element_thread, |b| {
        let one = b.u32(1);
        let parity = b.binary(BinaryOp::And, tid, one);
        let is_max = b.cmp(CmpOp::Eq, parity, one);
        let mut acc = b.load(parts, tid, 1);
        for warp in 1..warps {
            let off = b.u32(warp * 2 * p.w);
            let at = b.add(off, tid);
            let v = b.load(parts, at, 1);
            acc = extreme(b, is_max, acc, v);
        }
        b.store(block_ext, tid, acc);
    });
    b.cluster_barrier();
    block_ext
}

/// Channel `c`'s extremes over the cluster's blocks, read in rank order.
fn cluster_extremes(
    b: &mut Builder,
    p: ClusterPlan,
    block_ext: Memory,
    c: Value,
) -> (Value, Value) {
    let two = b.u32(2);
    let lo_at = b.mul(c, two);
    let one = b.u32(1);
    let hi_at = b.add(lo_at, one);
    let rank = b.u32(0);
    let mut mn = b.load_remote(block_ext, rank, lo_at);
    let mut mx = b.load_remote(block_ext, rank, hi_at);
    for r in 1..p.cluster {
        let rank = b.u32(r);
        let lo = b.load_remote(block_ext, rank, lo_at);
        let hi = b.load_remote(block_ext, rank, hi_at);
        mn = b.minimum(mn, lo);
        mx = b.maximum(mx, hi);
    }
    (mn, mx)
}

/// Whether bit `s` (a power of two) of the thread's lane id is set.
pub(super) fn lane_bit(b: &mut Builder, s: u32) -> Value {
    let lane = b.special(Special::LaneId);
    let sv = b.u32(s);
    let bit = b.binary(BinaryOp::And, lane, sv);
    let z = b.u32(0);
    b.cmp(CmpOp::Ne, bit, z)
}

/// `maximum(a, b)` when `is_max`, else `minimum(a, b)`.
fn extreme(b: &mut Builder, is_max: Value, a: Value, c: Value) -> Value {
    let lo = b.minimum(a, c);
    let hi = b.maximum(a, c);
    b.select(is_max, hi, lo)
}

/// Reduces the interleaved extremes `ext` (`len` = 32 elements: even ones minima, odd ones
/// maxima) over a warp's lanes and leaves lane `l` with element `l` in `ext[0]`: at the step of
/// distance `s` (16, 8, .., 1) a lane keeps the half of its live elements that lane bit `s`
/// selects (the upper half when set), sends the other half to lane `l ^ s` and folds what it
/// receives into what it keeps. 62 shuffled values instead of 160 for five whole reductions.
/// IEEE minimum and maximum are associative and commutative, -0 and NaN included, so the
/// result does not depend on the tree.
fn reduce_scatter(b: &mut Builder, ext: u32, len: u32) {
    debug_assert_eq!(len, WARP_SIZE);
    let mut live = len;
    let mut s = WARP_SIZE / 2;
    while s >= 1 {
        let half = live / 2;
        let send = b.local(&format!("send{s}"), ScalarType::F32, half);
        let recv = b.local(&format!("recv{s}"), ScalarType::F32, half);
        let upper = lane_bit(b, s);
        for j in 0..half {
            let (first, second) = (b.u32(j), b.u32(half + j));
            let a = b.read_local(ext, first);
            let c = b.read_local(ext, second);
            let out = b.select(upper, a, c);
            let idx = b.u32(j);
            b.write_local(send, idx, out);
        }
        b.warp(WarpOp::ShuffleXor {
            src: send,
            dst: recv,
            mask: s,
        });
        let upper = lane_bit(b, s);
        let lane_max = lane_bit(b, 1);
        for j in 0..half {
            let (first, second) = (b.u32(j), b.u32(half + j));
            let a = b.read_local(ext, first);
            let c = b.read_local(ext, second);
            let kept = b.select(upper, c, a);
            let idx = b.u32(j);
            let got = b.read_local(recv, idx);
            // Element j of the kept half is the original element (base + j) with an even base
            // while two or more remain: its parity is j's. At the last step the lane's own
            // parity says which it is.
            let folded = match half {
                1 => extreme(b, lane_max, kept, got),
                _ if j % 2 == 0 => b.minimum(kept, got),
                _ => b.maximum(kept, got),
            };
            b.write_local(ext, idx, folded);
        }
        live = half;
        s /= 2;
    }
}
