//! The quantile rule in the cluster kernel ([`super::cluster_channel`]): the order statistics of
//! each of the column's 16 channels by a radix select over the cluster's staged rows, with the
//! exact result of [`crate::ir::Op::SelectRank`] (and of the one-block kernel, `block_select`).
//!
//! Keys follow f32's total order ([`Keys`]: 16 bits for f16 and bf16, 32 for f32); f16 and
//! bf16 rows are staged as their 16-bit keys ([`key16`](super::key16::key16)), so that a pass
//! reads a key instead of computing it. Thread `tid` counts channel `tid % 16` of the rows of
//! the block's threads `16 (tid / 16) ..+ 16` (its *slots*) into its own histogram, a column of
//! [`BINS`] U16 counters in shared memory (counter `bin` at `bin * block + hist_slot(tid)`: a
//! warp's lanes hit 32 different banks, whatever their bins), without atomics, a chunk of at
//! most [`MAX_CHUNK_ROWS`] rows at a time so that no counter wraps. A pass decides the next
//! digit of every (channel, side) search, side 0 the rank-k key of level `p`, side 1 that of
//! level `1 - p`:
//! - the first pass counts the keys' top `log2(BINS)` bits, one histogram for both sides;
//! - later passes count the next `log2(BINS / 2)` bits (fewer on the last pass), side 0's keys
//!   (those whose decided bits equal side 0's prefix) in the lower half of the bins, side 1's in
//!   the upper half, or both in the lower half when the two prefixes are equal (the keys of two
//!   different prefixes are disjoint, so each key is counted at most once); other keys go to a
//!   counter never read.
//!
//! 16-bit keys take three passes (6, 5 and 5 bits), f32 keys seven.
//!
//! After each chunk the block adds its threads' histograms per channel; after a pass, a
//! cluster barrier, and every block adds the cluster's ranks' sums in rank order (distributed
//! shared memory; integer sums, so the order does not change them). 32 threads, one per
//! (channel, side), scan their channel's bins: the digit is the first bin where the keys below
//! the bracket plus the bins so far reach k + 1. The last pass also finds, per thread and side,
//! the smallest key above the bracket (minimum over the cluster like the sums), so that the
//! rank-(k + 1) key is known without another pass: K itself when at least k + 2 keys are at or
//! below K, else the next non-empty bin of the bracket, else that smallest key above it. The
//! interpolation is [`quantile_interpolate`]'s, the same bits as the reference.

use crate::ir::{BinaryOp, Builder, CmpOp, Memory, ScalarType, Special, Value};

use super::block_select::Keys;
use super::cluster_channel::{ClusterPlan, MAX_CHUNK_ROWS};
use super::cluster_rows::Rows;
use super::emit::{positive_zero, quantile_interpolate, quantile_rank};
use super::quantize_abi as abi;

/// Counters per thread's histogram (a power of two); one more counter takes the keys that no
/// search counts.
const BINS: u32 = 64;

/// Threads whose rows one thread counts (for one channel).
const SLOTS: u32 = 16;

/// The levels' sides: the range's low and high ends.
const SIDES: u32 = 2;

/// Digit widths of the passes over keys of `key_bits` bits.
fn digit_widths(key_bits: u32) -> Vec<u32> {
    let first = BINS.ilog2();
    let later = first - 1;
    let mut widths = vec![first.min(key_bits)];
    let mut done = widths[0];
    while done < key_bits {
        let w = later.min(key_bits - done);
        widths.push(w);
        done += w;
    }
    widths
}

/// Entries of a block's sums: `BINS` counters per channel, then the minima above the bracket
/// per (side, channel).
fn entries(w: u32) -> u32 {
    BINS * w + SIDES * w
}

/// The selection's shared arrays and locals.
struct Select {
    p: ClusterPlan,
    /// Each thread's histogram column (U16 counters; thread `t`'s counter of bin `bin` at
    /// `bin * block + `[`hist_slot`]`(t)`).
    hist: Memory,
    /// A block's sums, two buffers of [`entries`] (entry `bin * w + c`, then the minima at
    /// `BINS * w + side * w + c`).
    block: Memory,
    /// The cluster's sums, one buffer of [`entries`].
    cluster: Memory,
    /// Per (side, thread): the smallest key above the bracket.
    least_part: Memory,
    /// Per (side, channel): the decided prefix of the key, two buffers (pass `j` writes buffer
    /// `j % 2`, which the next pass reads while its scan writes the other).
    prefix: Memory,
    /// Per (side, channel): the quantile, once found.
    quantiles: Memory,
    /// The thread's smallest keys above the brackets (2 elements).
    least: u32,
    /// The scanning thread's search: [`SCAN_BELOW`], [`SCAN_PREFIX`].
    scan: u32,
    /// The scanning thread's pass over the bins: [`FOUND_DIGIT`] .. [`FOUND_NEXT`].
    found: u32,
    /// An element read past the staged rows (of [`Rows::slot_type`]).
    value: u32,
    /// The input's type: f16 and bf16 elements are counted by their 16-bit keys
    /// ([`key16`](super::key16::key16), staged as such), f32 ones by their f32 keys.
    input: ScalarType,
}

/// Keys below the bracket.
const SCAN_BELOW: u32 = 0;
/// The decided bits.
const SCAN_PREFIX: u32 = 1;
/// The pass's digit (`BINS` until found).
const FOUND_DIGIT: u32 = 0;
/// Keys below the bin being scanned (frozen at the digit's bin).
const FOUND_CUM: u32 = 1;
/// Keys at or below the digit's bin.
const FOUND_LE: u32 = 2;
/// The first non-empty bin after the digit's (`BINS`: none).
const FOUND_NEXT: u32 = 3;

/// Selects the quantile rule's range (level `p_level`) of each of the column's `w` channels over
/// the cluster's rows, `z` the key bits shifted out. Returns a shared F32 array of `2 w`
/// elements, element `side * w + c` channel `c`'s low (side 0) or high (side 1) end, valid after
/// the barrier this function ends with. Contains barriers and cluster barriers: call it at the
/// top level.
pub(super) fn select(
    b: &mut Builder,
    p: ClusterPlan,
    rows: &Rows,
    input: ScalarType,
    p_level: f64,
) -> Memory {
    let keys = Keys::of(input);
    let w = p.w;
    debug_assert_eq!(MAX_CHUNK_ROWS, u16::MAX as u32 / SLOTS);
    let p = ClusterPlan {
        chunk: p.chunk.clamp(1, MAX_CHUNK_ROWS),
        ..p
    };
    let s = Select {
        p,
        hist: b.shared("q_hist", ScalarType::U16, (BINS + 1) * p.block_size),
        block: b.shared("q_block", ScalarType::U32, 2 * entries(w)),
        cluster: b.shared("q_cluster", ScalarType::U32, entries(w)),
        least_part: b.shared("q_least", ScalarType::U32, SIDES * p.block_size),
        prefix: b.shared("q_prefix", ScalarType::U32, 2 * SIDES * w),
        quantiles: b.shared("q_range", ScalarType::F32, SIDES * w),
        least: b.local("q_least_l", ScalarType::U32, SIDES),
        scan: b.local("q_scan", ScalarType::U32, 2),
        found: b.local("q_found", ScalarType::U32, 4),
        value: b.local("q_value", rows.slot_type(), 1),
        input,
    };
    // Threads count rows that other threads staged.
    b.barrier();
    let widths = digit_widths(keys.bits);
    let mut done = 0;
    for (pass, &width) in widths.iter().enumerate() {
        let last = pass + 1 == widths.len();
        let d = Digit {
            done,
            width,
            buf: pass as u32 % 2,
        };
        count(b, &s, rows, keys, d, last);
        add_up(b, &s, d.buf, last);
        scan(b, &s, d, [p_level, 1.0 - p_level], last, keys);
        done += width;
    }
    s.quantiles
}

/// The digit a pass decides: `width` bits below the `done` bits decided, of `done + width +
/// shift` key bits.
#[derive(Clone, Copy)]
struct Digit {
    done: u32,
    width: u32,
    /// The pass's buffer of `block` and `prefix` (the previous pass's prefixes are in the
    /// other).
    buf: u32,
}

/// One counting pass: the thread's slots' keys of its channel counted into its histogram, a
/// chunk of [`ClusterPlan::chunk`] rows at a time, each chunk's histograms added to the block's
/// sums (buffer `d.buf` of `block`, zeroed first); on the last pass also the smallest keys
/// above the brackets. A barrier after.
fn count(b: &mut Builder, s: &Select, rows: &Rows, keys: Keys, d: Digit, last: bool) {
    let bsz = s.p.block_size;
    let counters = BINS * s.p.w;
    each_sum_entry(b, s, d.buf, counters, &|b, at, _| {
        let zero = b.u32(0);
        b.store(s.block, at, zero);
    });
    if last {
        for side in 0..SIDES {
            let (at, max) = (b.u32(side), b.u32(u32::MAX));
            b.write_local(s.least, at, max);
        }
    }
    // f16 and bf16 elements: their 16-bit keys, which are `keys`' keys (no constant bits, no
    // offset); f32 ones: the whole f32 key.
    let narrow = keys.by_key16();
    // The stage holds 16-bit keys exactly when the elements are counted by them.
    debug_assert_eq!(narrow, rows.stages_keys());
    let keys = match narrow {
        true => Keys::SIXTEEN,
        false => keys,
    };
    let most = rows.most_rows(b);
    let chunk_rows = b.u32(s.p.chunk);
    let chunks = b.div(most, chunk_rows);
    let part = b.rem(most, chunk_rows);
    let one = b.u32(1);
    let partial = b.min(part, one);
    let chunks = b.add(chunks, partial);
    let zero = b.u32(0);
    b.for_range(zero, chunks, 1, |b, chunk| {
        let tid = b.special(Special::ThreadId);
        let slot = hist_slot(b, s, tid);
        for bin in 0..=BINS {
            let at = b.u32(bin * bsz);
            let at = b.add(at, slot);
            let zero = b.u16(0);
            b.store(s.hist, at, zero);
        }
        let chunk_rows = b.u32(s.p.chunk);
        let q_lo = b.mul(chunk, chunk_rows);
        let q_hi = b.add(q_lo, chunk_rows);
        count_rows(b, s, rows, (q_lo, q_hi), keys, d, last);
        // Every thread's histogram is complete; then every sum taken before a thread zeroes
        // its histogram again.
        b.barrier();
        each_sum_entry(b, s, d.buf, counters, &|b, at, e| {
            let sum = over_groups(b, s, s.hist, e, 0, Builder::add);
            let old = b.load(s.block, at, 1);
            let sum = b.add(old, sum);
            b.store(s.block, at, sum);
        });
        b.barrier();
    });
    if last {
        let tid = b.special(Special::ThreadId);
        for side in 0..SIDES {
            let at = b.u32(side);
            let m = b.read_local(s.least, at);
            let m = match narrow {
                // Back from `key - A` (see `count_rows`; the last pass shifts nothing out of
                // 16-bit keys, so `A` is `(prefix + 1) << width`); none above: u32::MAX.
                true => {
                    let wv = b.u32(s.p.w);
                    let c = b.rem(tid, wv);
                    let side = b.u32(side);
                    let prefix = load_prefix(b, s, 1 - d.buf, side, c);
                    let hs = b.u32(d.width);
                    let above = first_above(b, prefix, hs);
                    let found = b.u32(1 << 16);
                    let found = b.cmp(CmpOp::Lt, m, found);
                    let key = b.add(m, above);
                    let none = b.u32(u32::MAX);
                    b.select(found, key, none)
                }
                false => m,
            };
            let m = keys.key_of(b, m);
            let off = b.u32(side * bsz);
            let to = b.add(off, tid);
            b.store(s.least_part, to, m);
        }
        b.barrier();
    }
}

/// `(prefix + 1) << hs`: the first key above the bracket of `prefix` (U32 values).
fn first_above(b: &mut Builder, prefix: Value, hs: Value) -> Value {
    let one = b.u32(1);
    let next = b.add(prefix, one);
    b.binary(BinaryOp::Shl, next, hs)
}

/// Calls `body(b, at, e)` for each of the thread's entries `e < used` of the block's sums (`at`
/// its index in buffer `buf` of `block`; the counters' sums are the first `BINS * w`).
fn each_sum_entry(
    b: &mut Builder,
    s: &Select,
    buf: u32,
    used: u32,
    body: &dyn Fn(&mut Builder, Value, Value),
) {
    let tid = b.special(Special::ThreadId);
    let base = b.u32(buf * entries(s.p.w));
    for e0 in (0..used).step_by(s.p.block_size as usize) {
        let off = b.u32(e0);
        let e = b.add(off, tid);
        let limit = b.u32(used);
        let inside = b.cmp(CmpOp::Lt, e, limit);
        b.if_then(inside, |b| {
            let at = b.add(base, e);
            body(b, at, e);
        });
    }
}

/// Counts the keys of rows `q.0 .. q.1` of the thread's slots of its channel into its
/// histogram (see [`count`]; `keys` as the passes count them).
fn count_rows(
    b: &mut Builder,
    s: &Select,
    rows: &Rows,
    q: (Value, Value),
    keys: Keys,
    d: Digit,
    last: bool,
) {
    let bsz = s.p.block_size;
    let tid = b.special(Special::ThreadId);
    let wv = b.u32(s.p.w);
    let c = b.rem(tid, wv);
    let slots = b.u32(SLOTS);
    let g = b.div(tid, slots);
    let first_slot = b.mul(g, slots);
    let shift = keys.bits - d.done - d.width;
    let z = keys.z;
    // The key's offset lies above the digits of every pass after the first, so those are bits
    // of the whole f32 key; the first digit and the prefixes are offset (see `Keys`).
    debug_assert!(d.done == 0 || keys.offset % (1 << (shift + d.width)) == 0);
    // The sides' prefixes of this thread's channel (before any pass: none), plus the offset:
    // prefixes of the whole f32 key.
    let prefixes: Option<[Value; 2]> = (d.done > 0).then(|| {
        [0, 1].map(|side| {
            let side = b.u32(side);
            let prefix = load_prefix(b, s, 1 - d.buf, side, c);
            let offset = b.u32(keys.offset >> (shift + d.width));
            b.add(prefix, offset)
        })
    });
    let narrow = keys.by_key16();
    let slot = hist_slot(b, s, tid);
    rows.each_of_slots(b, (first_slot, SLOTS), q, c, s.value, &|b, x| {
        // The whole key (an f32 key's `z` constant bits too): one shift takes out the digit.
        let key = match narrow {
            true => b.convert(ScalarType::U32, x),
            false => keys.element_f32_key(b, s.input, x),
        };
        let sh = b.u32(z + shift);
        let moved = b.binary(BinaryOp::Shr, key, sh);
        let bin = match prefixes {
            None if keys.offset == 0 => moved,
            None => {
                // Keys outside the range (non-finite input, flagged) count in the last bin.
                let offset = b.u32(keys.offset >> shift);
                let digit = b.sub(moved, offset);
                let last_bin = b.u32(BINS - 1);
                b.min(digit, last_bin)
            }
            Some([p0, p1]) => {
                let mask = b.u32((1 << d.width) - 1);
                let digit = b.binary(BinaryOp::And, moved, mask);
                let hs = b.u32(z + shift + d.width);
                let high = b.binary(BinaryOp::Shr, key, hs);
                let is0 = b.cmp(CmpOp::Eq, high, p0);
                let is1 = b.cmp(CmpOp::Eq, high, p1);
                let half = b.u32(BINS / 2);
                let upper = b.add(digit, half);
                let trash = b.u32(BINS);
                let other = b.select(is1, upper, trash);
                if last {
                    for (side, &ps) in [p0, p1].iter().enumerate() {
                        let candidate = match narrow {
                            // `key - A` (wrapping), `A` the first key above the bracket: below
                            // 2^16 exactly for the keys at or above `A` (16-bit keys).
                            true => {
                                let above = first_above(b, ps, hs);
                                b.sub(key, above)
                            }
                            false => {
                                let above = b.cmp(CmpOp::Gt, high, ps);
                                let max = b.u32(u32::MAX);
                                b.select(above, key, max)
                            }
                        };
                        let at = b.u32(side as u32);
                        let m = b.read_local(s.least, at);
                        let m = b.min(m, candidate);
                        b.write_local(s.least, at, m);
                    }
                }
                b.select(is0, digit, other)
            }
        };
        let bs = b.u32(bsz);
        let row = b.mul(bin, bs);
        let at = b.add(row, slot);
        let n = b.load(s.hist, at, 1);
        let one = b.u16(1);
        let n = b.add(n, one);
        b.store(s.hist, at, n);
    });
}

/// The block's minima above the brackets into buffer `buf` of `block` (last pass; [`count`]
/// left the counters' sums there), a cluster barrier, then the cluster's sums and minima into
/// `cluster` (a barrier after).
fn add_up(b: &mut Builder, s: &Select, buf: u32, last: bool) {
    let w = s.p.w;
    let n = entries(w);
    let counters = BINS * w;
    let tid = b.special(Special::ThreadId);
    if last {
        // Entry counters + side * w + c: the minimum over the groups.
        let pairs = b.u32(SIDES * w);
        let inside = b.cmp(CmpOp::Lt, tid, pairs);
        b.if_then(inside, |b| {
            let m = over_groups(b, s, s.least_part, tid, u32::MAX, Builder::min);
            let off = b.u32(buf * n + counters);
            let to = b.add(off, tid);
            b.store(s.block, to, m);
        });
    }
    b.cluster_barrier();
    let used = match last {
        true => n,
        false => counters,
    };
    each_sum_entry(b, s, buf, used, &|b, at, e| {
        let limit = b.u32(counters);
        let is_least = b.cmp(CmpOp::Ge, e, limit);
        let rank = b.u32(0);
        let mut acc = b.load_remote(s.block, rank, at);
        let mut least = acc;
        for r in 1..s.p.cluster {
            let rank = b.u32(r);
            let v = b.load_remote(s.block, rank, at);
            acc = b.add(acc, v);
            least = b.min(least, v);
        }
        let v = b.select(is_least, least, acc);
        b.store(s.cluster, e, v);
    });
    b.barrier();
}

/// Where thread `t`'s counters sit in a row of the histogram: `2 (t % 32) + (t / 32) % 2 +
/// 64 (t / 64)`, so that a warp's 32 U16 counters of any bins lie in 32 different words, one
/// in each bank (at `t` itself, two neighbouring lanes would share a word's bank). Blocks of
/// other than a multiple of 64 threads keep `t`.
fn hist_slot(b: &mut Builder, s: &Select, t: Value) -> Value {
    if s.p.block_size % 64 != 0 {
        return t;
    }
    let (m31, one, five, m63) = (b.u32(31), b.u32(1), b.u32(5), b.u32(!63));
    let lane = b.binary(BinaryOp::And, t, m31);
    let lane2 = b.binary(BinaryOp::Shl, lane, one);
    let warp = b.binary(BinaryOp::Shr, t, five);
    let odd = b.binary(BinaryOp::And, warp, one);
    let high = b.binary(BinaryOp::And, t, m63);
    let low = b.add(lane2, odd);
    b.add(high, low)
}

/// Folds element `(e / w, e % w)` of `mem` (rows of a block's threads) over the threads'
/// [`SLOTS`]-thread groups: the elements of threads `g * SLOTS + e % w` in row `e / w` (at
/// `row * block + thread`, or [`hist_slot`]`(thread)` for the histogram), from `init`.
fn over_groups(
    b: &mut Builder,
    s: &Select,
    mem: Memory,
    e: Value,
    init: u32,
    fold: fn(&mut Builder, Value, Value) -> Value,
) -> Value {
    let (w, bsz) = (s.p.w, s.p.block_size);
    let wv = b.u32(w);
    let row = b.div(e, wv);
    let c = b.rem(e, wv);
    let bs = b.u32(bsz);
    let start = b.mul(row, bs);
    let hist = mem == s.hist;
    let mut acc = b.u32(init);
    for g in 0..bsz / SLOTS {
        let off = b.u32(g * SLOTS);
        let thread = b.add(off, c);
        let thread = match hist {
            true => hist_slot(b, s, thread),
            false => thread,
        };
        let at = b.add(start, thread);
        let v = b.load(mem, at, 1);
        let v = match hist {
            true => b.convert(ScalarType::U32, v),
            false => v,
        };
        acc = fold(b, acc, v);
    }
    acc
}

/// The scanning threads (one per (side, channel)) append the pass's digit to their prefixes;
/// after the last pass they interpolate the quantiles. A barrier after.
fn scan(b: &mut Builder, s: &Select, d: Digit, levels: [f64; 2], last: bool, keys: Keys) {
    let w = s.p.w;
    let tid = b.special(Special::ThreadId);
    let pairs = b.u32(SIDES * w);
    let scanning = b.cmp(CmpOp::Lt, tid, pairs);
    b.if_then(scanning, |b| {
        let wv = b.u32(w);
        let side = b.div(tid, wv);
        let c = b.rem(tid, wv);
        let tokens = b.param(abi::TOKENS);
        let ranks = levels.map(|level| quantile_rank(b, tokens, level));
        let zero = b.u32(0);
        let is_hi = b.cmp(CmpOp::Ne, side, zero);
        let rank = select_rank(b, is_hi, ranks[0], ranks[1]);
        let one = b.u32(1);
        let wanted = b.add(rank.k, one);
        // This side's keys lie in the upper half of the bins for side 1 when the prefixes
        // differ, else in the lower half (the first pass: the whole histogram).
        let half = match d.done {
            0 => zero,
            _ => {
                let p_own = load_prefix(b, s, 1 - d.buf, side, c);
                let other = b.sub(one, side);
                let p_other = load_prefix(b, s, 1 - d.buf, other, c);
                let differ = b.cmp(CmpOp::Ne, p_own, p_other);
                let upper = b.binary(BinaryOp::And, is_hi, differ);
                let h = b.u32(BINS / 2);
                b.select(upper, h, zero)
            }
        };
        let [below, prefix] = match d.done {
            0 => [zero, zero],
            _ => [SCAN_BELOW, SCAN_PREFIX].map(|i| {
                let i = b.u32(i);
                b.read_local(s.scan, i)
            }),
        };
        let none = b.u32(BINS);
        for (i, v) in [
            (FOUND_DIGIT, none),
            (FOUND_CUM, below),
            (FOUND_LE, zero),
            (FOUND_NEXT, none),
        ] {
            let i = b.u32(i);
            b.write_local(s.found, i, v);
        }
        let bins = b.u32(1 << d.width);
        b.for_range(zero, bins, 1, |b, bin| {
            let n = load_bin(b, s, half, bin, c);
            let [digit, cum, le, next] = [FOUND_DIGIT, FOUND_CUM, FOUND_LE, FOUND_NEXT].map(|i| {
                let i = b.u32(i);
                b.read_local(s.found, i)
            });
            let none = b.u32(BINS);
            let searching = b.cmp(CmpOp::Eq, digit, none);
            let reach = b.add(cum, n);
            let enough = b.cmp(CmpOp::Ge, reach, wanted);
            let hit = b.binary(BinaryOp::And, searching, enough);
            // The first non-empty bin after the digit's.
            let zero = b.u32(0);
            let filled = b.cmp(CmpOp::Ne, n, zero);
            let unset = b.cmp(CmpOp::Eq, next, none);
            let after = b.cmp(CmpOp::Ne, digit, none);
            let first_after = b.binary(BinaryOp::And, after, unset);
            let first_after = b.binary(BinaryOp::And, first_after, filled);
            let next = b.select(first_after, bin, next);
            let digit = b.select(hit, bin, digit);
            let cum = b.select(searching, reach, cum);
            let le = b.select(hit, reach, le);
            for (i, v) in [
                (FOUND_DIGIT, digit),
                (FOUND_CUM, cum),
                (FOUND_LE, le),
                (FOUND_NEXT, next),
            ] {
                let i = b.u32(i);
                b.write_local(s.found, i, v);
            }
        });
        let [digit, le, next_bin] = [FOUND_DIGIT, FOUND_LE, FOUND_NEXT].map(|i| {
            let i = b.u32(i);
            b.read_local(s.found, i)
        });
        // Below the new bracket: the keys at or below the digit's bin, less that bin's. (Only
        // with non-finite input, which is flagged, can the search miss: then read the last bin.)
        let last_bin = b.u32((1 << d.width) - 1);
        let read = b.min(digit, last_bin);
        let own = load_bin(b, s, half, read, c);
        let new_below = b.sub(le, own);
        let width = b.u32(d.width);
        let moved = b.binary(BinaryOp::Shl, prefix, width);
        let new_prefix = b.binary(BinaryOp::Or, moved, digit);
        for (i, v) in [(SCAN_BELOW, new_below), (SCAN_PREFIX, new_prefix)] {
            let i = b.u32(i);
            b.write_local(s.scan, i, v);
        }
        let row = b.mul(side, wv);
        let slot = b.add(row, c);
        let buffer = b.u32(d.buf * SIDES * w);
        let to = b.add(buffer, slot);
        b.store(s.prefix, to, new_prefix);
        if last {
            // The rank-(k + 1) key: K again, the bracket's next non-empty bin, or the smallest
            // key above the bracket.
            let two = b.u32(2);
            let wanted2 = b.add(rank.k, two);
            let repeated = b.cmp(CmpOp::Ge, le, wanted2);
            let in_bracket = b.cmp(CmpOp::Ne, next_bin, none);
            let next_key = b.binary(BinaryOp::Or, moved, next_bin);
            let counters = b.u32(BINS * w);
            let least_at = b.add(counters, slot);
            let least = b.load(s.cluster, least_at, 1);
            let k1_key = b.select(in_bracket, next_key, least);
            let k1_key = b.select(repeated, new_prefix, k1_key);
            let k1_key = b.select(rank.is_last, new_prefix, k1_key);
            let vk = keys.value(b, new_prefix);
            let vk1 = keys.value(b, k1_key);
            let q = quantile_interpolate(b, rank, vk, vk1);
            let q = positive_zero(b, q);
            b.store(s.quantiles, slot, q);
        }
    });
    b.barrier();
}

/// The cluster's count in bin `half + bin` of channel `c`.
fn load_bin(b: &mut Builder, s: &Select, half: Value, bin: Value, c: Value) -> Value {
    let off = b.add(half, bin);
    let wv = b.u32(s.p.w);
    let row = b.mul(off, wv);
    let e = b.add(row, c);
    b.load(s.cluster, e, 1)
}

/// Side `side`'s prefix of channel `c` in buffer `buf`.
fn load_prefix(b: &mut Builder, s: &Select, buf: u32, side: Value, c: Value) -> Value {
    let wv = b.u32(s.p.w);
    let row = b.mul(side, wv);
    let at = b.add(row, c);
    let buffer = b.u32(buf * SIDES * s.p.w);
    let at = b.add(buffer, at);
    b.load(s.prefix, at, 1)
}

/// The rank of side 1 when `is_hi`, else side 0's.
fn select_rank(
    b: &mut Builder,
    is_hi: Value,
    lo: super::emit::QuantileRank,
    hi: super::emit::QuantileRank,
) -> super::emit::QuantileRank {
    super::emit::QuantileRank {
        k: b.select(is_hi, hi.k, lo.k),
        k1: b.select(is_hi, hi.k1, lo.k1),
        is_last: b.select(is_hi, hi.is_last, lo.is_last),
        frac: b.select(is_hi, hi.frac, lo.frac),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_cover_the_key() {
        assert_eq!(digit_widths(19), vec![6, 5, 5, 3]);
        assert_eq!(digit_widths(16), vec![6, 5, 5]);
        assert_eq!(digit_widths(32).iter().sum::<u32>(), 32);
    }
}
