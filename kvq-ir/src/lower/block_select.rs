//! The quantile rule's order statistics for a group = all column, selected by the whole block
//! (cooperative GPU schedules), with exactly the result of [`crate::ir::Op::SelectRank`].
//!
//! Each element's order key is `bits ^ (sign ? 0xFFFF_FFFF : 0x8000_0000)` of its f32 value
//! (f32's total order, -0 below +0), narrowed by [`Keys`] to the bits that vary: 16 for f16
//! (the value scaled by 2^-112 first) and bf16, 32 for f32. The search runs over those bits.
//! Elements of f16 and bf16 input are compared by their 16-bit keys computed from their bits
//! as U16 (the same keys; 32 lanes to a 512-bit register on a CPU), and where a thread counts
//! for many channels (one bit a pass) into U16 counters, a chunk of at most 65,535 of its
//! tokens at a time; f32 elements by their whole f32 keys with widened pivots
//! ([`Keys::widen`]), so that no element's key is narrowed.
//!
//! For each channel of the column and each side (level p and 1 - p), a search finds the
//! smallest key K with `#{key <= K} >= k + 1`, the rank-k element. It keeps a bracket
//! `[lo, lo + 2^r)` that holds K and narrows it by [`step_bits`] bits a pass (fewer on the last
//! pass when the key's bits do not divide evenly): every pass, every thread counts its tokens'
//! keys at or below each of the `2^s - 1` pivots that split the bracket into `2^s` equal parts
//! (`s` the pass's bits), warps sum their lanes' counts ([`crate::ir::WarpOp::Reduce`]), lane 0
//! of each warp writes its warp's sums to shared memory, and every warp sums those, so that
//! every thread takes the same step: K lies in the part after the pivots with fewer than k + 1
//! keys at or below them. Two bits a pass halve the passes over the column of a bisection (one
//! bit a pass) for three comparisons an element instead of one. One more pass, both sides at once, counts the keys at
//! or below K and finds the smallest key above it: the rank-(k + 1) element is K again when at
//! least k + 2 keys are at or below K, else that smallest key above. The interpolation is
//! [`quantile_interpolate`]'s. Integer sums and minima do not depend on the order they are taken
//! in, so the ranges are the reference's bit for bit.

use crate::ir::{
    BinaryOp, Builder, CmpOp, Memory, ReduceOp, ScalarType, Special, Value, WarpOp, WARP_SIZE,
};

use super::emit::{
    from_order_key, positive_zero, quantile_interpolate, quantile_rank, QuantileRank,
};
use super::key16::key16;
use super::quantize_abi as abi;
use super::thread_tokens::{thread_tokens, ThreadTokens};
use super::InputType;

/// The two levels of the quantile rule: the range's low and high ends.
const SIDES: u32 = 2;

/// The most channels a thread counts for with two bits a pass.
const TWO_BIT_CHANNELS: u32 = 8;

/// The most of its tokens a thread counts into 16-bit counters before adding them up.
const CHUNK_ROWS: u32 = u16::MAX as u32;

#[cfg(test)]
thread_local! {
    /// Tests: a smaller [`CHUNK_ROWS`], so that short spans take several chunks.
    static TEST_CHUNK_ROWS: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// [`CHUNK_ROWS`] (in tests, what `TEST_CHUNK_ROWS` sets).
fn chunk_rows() -> u32 {
    #[cfg(test)]
    if let Some(rows) = TEST_CHUNK_ROWS.with(|c| c.get()) {
        return rows;
    }
    CHUNK_ROWS
}

/// Key bits a counting pass decides for a column of `channels` channels (`2^bits - 1` pivots
/// per side and channel): two where a thread's `2 x 3 x channels` counters stay in registers
/// (GPU schedules: 8 channels; sm_90 then predicts 377 us instead of 480 us for one bit a pass
/// at 8 x 16,384 x 128, and ptxas spills nothing at 256 threads), else one (the host's columns
/// of 32-128 channels: with two bits their counters live on the stack and the kernel measured
/// 1.1-5 times slower).
fn step_bits(channels: u32) -> u32 {
    match channels <= TWO_BIT_CHANNELS {
        true => 2,
        false => 1,
    }
}

/// Pivots of a full pass over a column of `channels` channels.
fn pivots(channels: u32) -> u32 {
    (1 << step_bits(channels)) - 1
}

/// Elements of a warp's row of partials: one per (side, pivot, channel), and one of padding so
/// that the lanes reading a column of them (lane l, row l) fall in different banks.
fn partial_row(channels: u32) -> u32 {
    SIDES * pivots(channels) * channels + 1
}

/// Shared memory [`select_quantiles`] declares, in bytes.
pub fn shared_bytes(block_size: u32, channels: u32) -> u64 {
    2 * 4 * u64::from(block_size / WARP_SIZE) * u64::from(partial_row(channels))
}

/// What the selection works with.
struct Select {
    /// Channels of the column.
    w: u32,
    /// Threads of the block.
    bsz: u32,
    /// How values become keys.
    keys: Keys,
    /// The input's element type (what `load_row` gives).
    input: ScalarType,
    /// Whether the passes compare 16-bit keys ([`Select::narrow`]).
    narrow: bool,
    /// Each thread a contiguous run of the tokens ([`thread_tokens`]).
    contiguous: bool,
    /// Levels of the two sides.
    levels: [f64; 2],
    /// U32 local of `2w` elements (index `side * w + channel`): each bracket's start (the
    /// rank-k key once the search ends).
    lo: u32,
    /// Per side, U32 locals: the search's counts, `pivots(w) * w` elements (index
    /// `pivot * w + channel`); the final pass's counts and minima, `w` elements each.
    count: [u32; 2],
    /// Where a thread counts one bit a pass of 16-bit keys, U16 locals like `count` that a chunk of at most
    /// [`CHUNK_ROWS`] of a thread's tokens counts into before they are added to `count`.
    count16: Option<[u32; 2]>,
    tally: [u32; 2],
    least: [u32; 2],
    /// Per warp, a row of partial counts and minima ([`partial_row`]).
    part_count: Memory,
    part_least: Memory,
}

impl Select {
    /// The rank-k of side `side` for the group's `tokens` elements.
    fn rank(&self, b: &mut Builder, side: u32) -> QuantileRank {
        let tokens = b.param(abi::TOKENS);
        quantile_rank(b, tokens, self.levels[side as usize])
    }

    /// What the passes compare an element `x` (of the input type) by: for f16 and bf16 input
    /// ([`Select::narrow`]) its 16-bit order key, `bits ^ (sign ? 0xFFFF : 0x8000)` as U16,
    /// which is its [`Keys`] key exactly (see the tests); else its f32 order key, compared with
    /// [`Keys::widen`]ed keys, which saves narrowing each element.
    fn elem_key(&self, b: &mut Builder, x: Value) -> Value {
        match self.narrow {
            true => key16(b, x),
            false => self.keys.element_f32_key(b, self.input, x),
        }
    }

    /// The bound an element key from [`Select::elem_key`] is compared with for key `k` (U32, at
    /// most the key's bits): it is at or below the bound exactly when its key is at or below `k`.
    fn bound(&self, b: &mut Builder, k: Value) -> Value {
        match self.narrow {
            true => b.convert(ScalarType::U16, k),
            false => self.keys.widen(b, k),
        }
    }

    /// An element key from [`Select::elem_key`] as a U32 that orders like it, and
    /// [`Select::key_from_u32`] of which is its key.
    fn key_as_u32(&self, b: &mut Builder, key: Value) -> Value {
        match self.narrow {
            true => b.convert(ScalarType::U32, key),
            false => key,
        }
    }

    /// The key of a U32 from [`Select::key_as_u32`].
    fn key_from_u32(&self, b: &mut Builder, key: Value) -> Value {
        match self.narrow {
            true => key,
            false => self.keys.key_of(b, key),
        }
    }

    /// The f32 whose key is `k`.
    fn value(&self, b: &mut Builder, k: Value) -> Value {
        self.keys.value(b, k)
    }

    /// Element `j % w` of side `j / w`'s local of the pair `locals`.
    fn get_pair(&self, b: &mut Builder, locals: [u32; 2], j: u32) -> Value {
        self.get(b, locals[(j / self.w) as usize], j % self.w)
    }

    fn set_pair(&self, b: &mut Builder, locals: [u32; 2], j: u32, v: Value) {
        self.set(b, locals[(j / self.w) as usize], j % self.w, v);
    }

    /// Count `pivot` of pair `j` (side `j / w`, channel `j % w`).
    fn count_at(&self, j: u32, pivot: u32) -> (u32, u32) {
        (
            self.count[(j / self.w) as usize],
            pivot * self.w + j % self.w,
        )
    }

    fn get(&self, b: &mut Builder, local: u32, j: u32) -> Value {
        let idx = b.u32(j);
        b.read_local(local, idx)
    }

    fn set(&self, b: &mut Builder, local: u32, j: u32, v: Value) {
        let idx = b.u32(j);
        b.write_local(local, idx, v);
    }

    /// Runs `each(b, key, j)` for every element of this thread's tokens, `j` over the pairs
    /// (side, channel) of `sides`, each element's key ([`Select::elem_key`]) computed once.
    fn pass(
        &self,
        b: &mut Builder,
        load_row: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
        sides: std::ops::Range<u32>,
        each: &dyn Fn(&mut Builder, Value, u32),
    ) {
        let mine = self.tokens(b);
        self.rows(b, load_row, mine, sides, each);
    }

    /// This thread's tokens.
    fn tokens(&self, b: &mut Builder) -> ThreadTokens {
        let tid = b.special(Special::ThreadId);
        thread_tokens(b, tid, self.bsz, self.contiguous)
    }

    /// [`Select::pass`] over `tokens`, this thread's or a chunk of them.
    fn rows(
        &self,
        b: &mut Builder,
        load_row: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
        tokens: ThreadTokens,
        sides: std::ops::Range<u32>,
        each: &dyn Fn(&mut Builder, Value, u32),
    ) {
        b.for_range(tokens.start, tokens.end, tokens.step, |b, t| {
            let values = load_row(b, t);
            for (i, &x) in values.iter().enumerate() {
                let key = self.elem_key(b, x);
                for side in sides.clone() {
                    each(b, key, side * self.w + i as u32);
                }
            }
        });
    }

    /// Adds to `count` (pair `j`, pivot `i`) this thread's keys at or below `bound[j][i]`.
    /// With `count16`, each chunk of at most [`CHUNK_ROWS`] of the thread's tokens counts into
    /// U16 locals first (no chunk can count past 65,535), added to `count` after the chunk.
    fn count_keys(
        &self,
        b: &mut Builder,
        load_row: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
        bound: &[Vec<Value>],
    ) {
        let pivots = bound.first().map_or(0, |p| p.len() as u32);
        let add = |b: &mut Builder, key: Value, j: u32, counts: [u32; 2], ty: ScalarType| {
            for i in 0..pivots {
                let le = b.cmp(CmpOp::Le, key, bound[j as usize][i as usize]);
                let one = b.convert(ty, le);
                let (side, at) = (j / self.w, i * self.w + j % self.w);
                let local = counts[side as usize];
                let c = self.get(b, local, at);
                let c = b.add(c, one);
                self.set(b, local, at, c);
            }
        };
        let Some(count16) = self.count16 else {
            let each = |b: &mut Builder, key, j| add(b, key, j, self.count, ScalarType::U32);
            return self.pass(b, load_row, 0..SIDES, &each);
        };
        let mine = self.tokens(b);
        // A chunk spans `chunk_rows()` of this thread's tokens: at most 1024 x 65,535 < 2^32.
        let span = mine.step * chunk_rows();
        b.for_range(mine.start, mine.end, span, |b, first| {
            let slots = pivots * self.w;
            for local in count16 {
                for at in 0..slots {
                    let zero = b.u16(0);
                    self.set(b, local, at, zero);
                }
            }
            let left = b.sub(mine.end, first);
            let span = b.u32(span);
            let len = b.min(left, span);
            let end = b.add(first, len);
            let chunk = ThreadTokens {
                start: first,
                end,
                ..mine
            };
            let each = |b: &mut Builder, key, j| add(b, key, j, count16, ScalarType::U16);
            self.rows(b, load_row, chunk, 0..SIDES, &each);
            for (local, wide) in count16.into_iter().zip(self.count) {
                for at in 0..slots {
                    let c = self.get(b, local, at);
                    let c = b.convert(ScalarType::U32, c);
                    let total = self.get(b, wide, at);
                    let total = b.add(total, c);
                    self.set(b, wide, at, total);
                }
            }
        });
    }

    /// Block-wide sums of `count` (every pivot's, both sides) or, with `least_of`, sums of
    /// `tally` and minima of `least` for the pairs of those sides: a warp reduction, each warp's
    /// lane 0 to shared memory, a barrier, every warp reduces the warps' partials, a barrier (the
    /// partials may be written again after it).
    fn block_reduce(&self, b: &mut Builder, least_of: Option<std::ops::Range<u32>>) {
        let sides: Vec<u32> = least_of.clone().unwrap_or(0..SIDES).collect();
        let stride = partial_row(self.w);
        // Counts per pair: every pivot's while searching, one in the final pass.
        let (counts, counted) = match least_of {
            Some(_) => (self.tally, self.w),
            None => (self.count, pivots(self.w) * self.w),
        };
        // (local, side, partials, reduction, neutral element, elements)
        let mut all = Vec::new();
        for &side in &sides {
            all.push((counts, side, self.part_count, ReduceOp::Sum, 0, counted));
            if least_of.is_some() {
                let least = (
                    self.least,
                    side,
                    self.part_least,
                    ReduceOp::Min,
                    u32::MAX,
                    self.w,
                );
                all.push(least);
            }
        }
        for &(locals, side, _, op, _, _) in &all {
            let local = locals[side as usize];
            b.warp(WarpOp::Reduce { op, local });
        }
        let lane = b.special(Special::LaneId);
        let zero = b.u32(0);
        let first = b.cmp(CmpOp::Eq, lane, zero);
        b.if_then(first, |b| {
            let warp = b.special(Special::WarpId);
            let nv = b.u32(stride);
            let slot = b.mul(warp, nv);
            for &(locals, side, part, _, _, len) in &all {
                for i in 0..len {
                    let v = self.get(b, locals[side as usize], i);
                    let off = b.u32(side * pivots(self.w) * self.w + i);
                    let at = b.add(slot, off);
                    b.store(part, at, v);
                }
            }
        });
        b.barrier();
        let lane = b.special(Special::LaneId);
        let warps = b.u32(self.bsz / WARP_SIZE);
        let has = b.cmp(CmpOp::Lt, lane, warps);
        let nv = b.u32(stride);
        let slot = b.mul(lane, nv);
        for &(locals, side, part, _, neutral, len) in &all {
            let local = locals[side as usize];
            for i in 0..len {
                let neutral = b.u32(neutral);
                self.set(b, local, i, neutral);
                b.if_then(has, |b| {
                    let off = b.u32(side * pivots(self.w) * self.w + i);
                    let at = b.add(slot, off);
                    let v = b.load(part, at, 1);
                    self.set(b, local, i, v);
                });
            }
        }
        for &(locals, side, _, op, _, _) in &all {
            let local = locals[side as usize];
            b.warp(WarpOp::Reduce { op, local });
        }
        b.barrier();
    }
}

/// Selects the quantile rule's range of each of the `w` channels of a column (level `p`, input
/// type `input`, `load_row(b, t)` giving token `t`'s `w` values as f32) with the whole block of
/// `bsz` threads (a multiple of 32). Returns two F32 locals of `w` elements, the ranges' low and
/// high ends, the same in every thread. Contains barriers: call it where every thread of the
/// block runs it.
pub fn select_quantiles(
    b: &mut Builder,
    input: InputType,
    [w, bsz]: [u32; 2],
    contiguous: bool,
    p: f64,
    load_row: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
) -> [u32; 2] {
    let n = SIDES * w;
    let warps = bsz / WARP_SIZE;
    let keys = Keys::of(input.scalar());
    let narrow_keys = keys.by_key16();
    let counts16 = |b: &mut Builder| {
        [
            b.local("sel_count16_lo", ScalarType::U16, pivots(w) * w),
            b.local("sel_count16_hi", ScalarType::U16, pivots(w) * w),
        ]
    };
    let s = Select {
        w,
        bsz,
        keys,
        input: input.scalar(),
        narrow: narrow_keys,
        contiguous,
        count16: (narrow_keys && step_bits(w) == 1).then(|| counts16(b)),
        levels: [p, 1.0 - p],
        lo: b.local("sel_lo", ScalarType::U32, n),
        count: [
            b.local("sel_count_lo", ScalarType::U32, pivots(w) * w),
            b.local("sel_count_hi", ScalarType::U32, pivots(w) * w),
        ],
        tally: [
            b.local("sel_tally_lo", ScalarType::U32, w),
            b.local("sel_tally_hi", ScalarType::U32, w),
        ],
        least: [
            b.local("sel_least_lo", ScalarType::U32, w),
            b.local("sel_least_hi", ScalarType::U32, w),
        ],
        part_count: b.shared("sel_part_count", ScalarType::U32, warps * partial_row(w)),
        part_least: b.shared("sel_part_least", ScalarType::U32, warps * partial_row(w)),
    };
    let out = [
        b.local("q_lo", ScalarType::F32, w),
        b.local("q_hi", ScalarType::F32, w),
    ];
    for j in 0..n {
        let zero = b.u32(0);
        s.set(b, s.lo, j, zero);
    }
    // Each pass narrows every bracket [lo, lo + 2^(r + step)) to one of its 2^step parts: a
    // loop of passes of `step` bits (r counting down from the key's bits), then one shorter
    // pass when `step` does not divide them.
    let bits = s.keys.bits;
    let step_bits = step_bits(w);
    let (first, passes) = (b.u32(0), b.u32(bits / step_bits));
    b.for_range(first, passes, 1, |b, pass| {
        let one = b.u32(1);
        let done = b.add(pass, one);
        let step = b.u32(step_bits);
        let decided = b.mul(done, step);
        let all = b.u32(bits);
        let r = b.sub(all, decided);
        narrow(b, &s, load_row, step_bits, r);
    });
    if bits % step_bits != 0 {
        let r = b.u32(0);
        narrow(b, &s, load_row, bits % step_bits, r);
    }
    // Both sides: the keys at or below each rank-k key, and the smallest key above it.
    let found: Vec<Value> = (0..n)
        .map(|j| {
            let k = s.get(b, s.lo, j);
            s.bound(b, k)
        })
        .collect();
    for j in 0..n {
        let (zero, max) = (b.u32(0), b.u32(u32::MAX));
        s.set_pair(b, s.tally, j, zero);
        s.set_pair(b, s.least, j, max);
    }
    s.pass(b, load_row, 0..SIDES, &|b, key, j| {
        let le = b.cmp(CmpOp::Le, key, found[j as usize]);
        let one = b.convert(ScalarType::U32, le);
        let c = s.get_pair(b, s.tally, j);
        let c = b.add(c, one);
        s.set_pair(b, s.tally, j, c);
        let max = b.u32(u32::MAX);
        let key = s.key_as_u32(b, key);
        let above = b.select(le, max, key);
        let m = s.get_pair(b, s.least, j);
        let m = b.min(m, above);
        s.set_pair(b, s.least, j, m);
    });
    s.block_reduce(b, Some(0..SIDES));
    for side in 0..SIDES {
        let rank = s.rank(b, side);
        let two = b.u32(2);
        let wanted = b.add(rank.k, two);
        for i in 0..w {
            let j = side * w + i;
            let k_key = s.get(b, s.lo, j);
            let vk = s.value(b, k_key);
            let c = s.get_pair(b, s.tally, j);
            let repeated = b.cmp(CmpOp::Ge, c, wanted);
            // The smallest full key above K (read only when one exists).
            let next = s.get_pair(b, s.least, j);
            let next = s.key_from_u32(b, next);
            let k1_key = b.select(repeated, k_key, next);
            let k1_key = b.select(rank.is_last, k_key, k1_key);
            let vk1 = s.value(b, k1_key);
            let q = quantile_interpolate(b, rank, vk, vk1);
            let q = positive_zero(b, q);
            let idx = b.u32(i);
            b.write_local(out[side as usize], idx, q);
        }
    }
    out
}

/// One counting pass: every bracket `[lo, lo + 2^(r + step))` becomes the part
/// `[lo + q 2^r, lo + (q + 1) 2^r)` that holds its rank-k key, `q` the number of the
/// `2^step - 1` pivots `lo + (i + 1) 2^r - 1` with fewer than k + 1 keys at or below them
/// (`r` a U32 value; `r + step` is at most the key's bits, so no offset wraps).
fn narrow(
    b: &mut Builder,
    s: &Select,
    load_row: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
    step: u32,
    r: Value,
) {
    let pivots = (1u32 << step) - 1;
    let n = SIDES * s.w;
    let one = b.u32(1);
    let part = b.binary(BinaryOp::Shl, one, r);
    // Pivot i's offset from the bracket's start: (i + 1) 2^r - 1.
    let offsets: Vec<Value> = (0..pivots)
        .map(|i| {
            let parts = b.u32(i + 1);
            let end = b.binary(BinaryOp::Shl, parts, r);
            b.sub(end, one)
        })
        .collect();
    // pivot[j][i]: pair j's pivot i.
    let pivot: Vec<Vec<Value>> = (0..n)
        .map(|j| {
            let lo = s.get(b, s.lo, j);
            offsets
                .iter()
                .map(|&off| {
                    let k = b.add(lo, off);
                    s.bound(b, k)
                })
                .collect()
        })
        .collect();
    for j in 0..n {
        for i in 0..pivots {
            let zero = b.u32(0);
            let (local, at) = s.count_at(j, i);
            s.set(b, local, at, zero);
        }
    }
    s.count_keys(b, load_row, &pivot);
    s.block_reduce(b, None);
    for side in 0..SIDES {
        let rank = s.rank(b, side);
        let one = b.u32(1);
        let wanted = b.add(rank.k, one);
        for i in 0..s.w {
            let j = side * s.w + i;
            let mut lo = s.get(b, s.lo, j);
            for k in 0..pivots {
                let (local, at) = s.count_at(j, k);
                let c = s.get(b, local, at);
                let short = b.cmp(CmpOp::Lt, c, wanted);
                let moved = b.add(lo, part);
                lo = b.select(short, moved, lo);
            }
            s.set(b, s.lo, j, lo);
        }
    }
}

/// How a value becomes its radix key: [`order_key`] of the value (f16: scaled by
/// 2^-112 first, which is exact and maps each f16 value to the f32 whose order key's bits 13..
/// are the f16 value's own order key plus `0x38000`, so that f16 keys take 16 bits instead of
/// 19), its `z` constant low bits shifted out, less `offset`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keys {
    /// Key bits.
    pub(super) bits: u32,
    /// Constant low bits of the f32 order key.
    pub(super) z: u32,
    /// Subtracted from the shifted f32 key: a multiple of `2^(bits - first digit)`.
    pub(super) offset: u32,
    /// Whether values are scaled by 2^-112 first (f16).
    pub(super) scaled: bool,
}

/// 2^-112: an f16 value times this is an f32 whose exponent field is the f16 value's (f16
/// subnormals become f32 subnormals, exactly).
const F16_TO_F32_FIELDS: f32 = f32::from_bits(15 << 23);

impl Keys {
    pub(super) fn of(input: ScalarType) -> Keys {
        match input {
            ScalarType::F16 => Keys {
                bits: 16,
                z: 13,
                offset: 0x38000,
                scaled: true,
            },
            _ => {
                let z = input.constant_key_bits();
                Keys {
                    bits: 32 - z,
                    z,
                    offset: 0,
                    scaled: false,
                }
            }
        }
    }

    /// The f32 order key of value `x` (scaled first for f16), all 32 bits.
    pub(super) fn f32_key(&self, b: &mut Builder, x: Value) -> Value {
        let x = match self.scaled {
            true => {
                let scale = b.f32(F16_TO_F32_FIELDS);
                b.mul(x, scale)
            }
            false => x,
        };
        order_key(b, x, 0)
    }

    /// [`Keys::f32_key`] of an element `x` of type `input` (widened to f32 first).
    pub(super) fn element_f32_key(&self, b: &mut Builder, input: ScalarType, x: Value) -> Value {
        let x = match input {
            ScalarType::F32 => x,
            _ => b.convert(ScalarType::F32, x),
        };
        self.f32_key(b, x)
    }

    /// Whether elements are compared by [`key16`] of their bits (f16 and bf16, whose keys
    /// have 16 bits; f32 keys have more): the counting passes then use [`Keys::SIXTEEN`].
    pub(super) fn by_key16(&self) -> bool {
        self.bits == 16
    }

    /// The keys of [`key16`]: 16 bits, none constant, no offset (for f16 and bf16 elements the
    /// same keys as [`Keys::of`]'s).
    pub(super) const SIXTEEN: Keys = Keys {
        bits: 16,
        z: 0,
        offset: 0,
        scaled: false,
    };

    /// The key of an f32 order key from [`Keys::f32_key`] (wrapping for keys outside the range).
    pub(super) fn key_of(&self, b: &mut Builder, key: Value) -> Value {
        let key = match self.z {
            0 => key,
            z => {
                let zv = b.u32(z);
                b.binary(BinaryOp::Shr, key, zv)
            }
        };
        match self.offset {
            0 => key,
            offset => {
                let offset = b.u32(offset);
                b.sub(key, offset)
            }
        }
    }

    /// `k` with the offset that [`Keys::key_of`] subtracts added back.
    fn without_offset(&self, b: &mut Builder, k: Value) -> Value {
        match self.offset {
            0 => k,
            offset => {
                let offset = b.u32(offset);
                b.add(k, offset)
            }
        }
    }

    /// The largest f32 order key whose key is `k` (`k` a key of a finite value): a full key is
    /// at or below it exactly when its key is at or below `k`.
    pub(super) fn widen(&self, b: &mut Builder, k: Value) -> Value {
        let k = self.without_offset(b, k);
        match self.z {
            0 => k,
            z => {
                let zv = b.u32(z);
                let high = b.binary(BinaryOp::Shl, k, zv);
                let low = b.u32((1 << z) - 1);
                b.binary(BinaryOp::Or, high, low)
            }
        }
    }

    /// The value (f32) whose key is `k`.
    pub(super) fn value(&self, b: &mut Builder, k: Value) -> Value {
        let k = self.without_offset(b, k);
        let v = key_value(b, k, self.z);
        match self.scaled {
            true => {
                // 2^112, exact.
                let scale = b.f32(f32::from_bits(239 << 23));
                b.mul(v, scale)
            }
            false => v,
        }
    }
}

/// The order key of `x` (f32) with its `z` low bits shifted out.
fn order_key(b: &mut Builder, x: Value, z: u32) -> Value {
    let bits = b.bitcast(ScalarType::U32, x);
    let s31 = b.u32(31);
    let sign = b.binary(BinaryOp::Shr, bits, s31);
    let zero = b.u32(0);
    let negative = b.cmp(CmpOp::Ne, sign, zero);
    let all = b.u32(u32::MAX);
    let top = b.u32(0x8000_0000);
    let mask = b.select(negative, all, top);
    let key = b.binary(BinaryOp::Xor, bits, mask);
    match z {
        0 => key,
        z => {
            let zv = b.u32(z);
            b.binary(BinaryOp::Shr, key, zv)
        }
    }
}

/// The f32 whose order key with `z` low bits shifted out is `k` (those bits restored: zeros
/// for a positive value, ones for a negative one).
fn key_value(b: &mut Builder, k: Value, z: u32) -> Value {
    if z == 0 {
        return from_order_key(b, k);
    }
    let zv = b.u32(z);
    let full = b.binary(BinaryOp::Shl, k, zv);
    let top = b.u32(0x8000_0000);
    let high = b.binary(BinaryOp::And, full, top);
    let zero = b.u32(0);
    let positive = b.cmp(CmpOp::Ne, high, zero);
    let low = b.u32((1u32 << z) - 1);
    let ones = b.binary(BinaryOp::Or, full, low);
    let key = b.select(positive, full, ones);
    from_order_key(b, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::io::quantize_with;
    use crate::lower::{quantize, Schedule, ShapeClass};
    use crate::{reference, Scheme, Tensor3};

    /// The host selection's 16-bit counters, added up every few rows (3, 7 and 64 a chunk,
    /// so that spans of 1 to 1,000 tokens take one to hundreds of chunks, the last one short),
    /// give the reference's parameters and codes bit for bit, on f16 and bf16 input with ties,
    /// with each of the 32 threads walking a contiguous run of the tokens (the host's schedule;
    /// spans of 1 and 31 tokens leave threads without any, 33 and 97 end in a short run) or
    /// every 32nd token.
    #[test]
    fn chunked_16_bit_counts_select_like_the_reference() {
        let scheme = Scheme::parse("bits = 1, axis = channel, group = all, rule = quantile(0.2)")
            .expect("scheme");
        for (input, contiguous) in [InputType::F16, InputType::BF16]
            .into_iter()
            .flat_map(|input| [(input, true), (input, false)])
        {
            let shape = ShapeClass {
                head_dim: 16,
                input,
            };
            let host = Schedule::host_default(&scheme, shape);
            assert!(
                host.cooperative && host.contiguous && host.channels == 16,
                "{host:?}"
            );
            let schedule = Schedule { contiguous, ..host };
            let spans = [
                (3u32, 1usize),
                (3, 31),
                (5, 33),
                (3, 97),
                (7, 1000),
                (64, 700),
            ];
            for (chunk, tokens) in spans {
                TEST_CHUNK_ROWS.with(|c| c.set(Some(chunk)));
                let lowered = quantize(&scheme, shape, &schedule).expect("lower");
                TEST_CHUNK_ROWS.with(|c| c.set(None));
                let data = (0..2 * tokens * 16)
                    .map(|i| {
                        let x = ((i * 7919 % 1013) as f32 - 506.0) / 64.0;
                        let x = if i % 5 == 0 { x.round() } else { x };
                        match input {
                            InputType::F16 => half::f16::from_f32(x).to_f32(),
                            _ => half::bf16::from_f32(x).to_f32(),
                        }
                    })
                    .collect();
                let x = Tensor3::new([2, tokens, 16], data).expect("tensor");
                let run = |k: &crate::ir::Kernel, a: &mut [crate::ir::interp::Arg], g: u32| {
                    crate::ir::interp::run(k, a, g)
                };
                let got = quantize_with(&lowered, &scheme, &x, input, run).expect("run");
                let want = reference::quantize(&x, &scheme).expect("reference");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let at = format!("{input:?}, {tokens} tokens, chunks of {chunk}, {schedule:?}");
                assert_eq!(got.codes, want.codes, "{at}");
                assert_eq!(bits(&got.zero), bits(&want.zero), "{at}");
                assert_eq!(bits(&got.scale), bits(&want.scale), "{at}");
            }
        }
    }

    /// The f32 order key of `x`, all 32 bits.
    fn f32_order_key(x: f32) -> u32 {
        let bits = x.to_bits();
        bits ^ if bits >> 31 == 1 {
            u32::MAX
        } else {
            0x8000_0000
        }
    }

    /// For every finite f16 value, the scaled value's f32 key narrowed as `Keys` does is the f16
    /// value's own order key (its 16 bits under the same sign rule), and scaling back is exact.
    #[test]
    fn f16_keys_are_the_f16_order_keys() {
        assert_eq!(F16_TO_F32_FIELDS, 2f32.powi(-112));
        assert_eq!(f32::from_bits(239 << 23), 2f32.powi(112));
        let keys = Keys::of(ScalarType::F16);
        for h in 0..=u16::MAX {
            let x = half::f16::from_bits(h);
            if !x.is_finite() {
                continue;
            }
            let f16_key = u32::from(h ^ if h >> 15 == 1 { u16::MAX } else { 0x8000 });
            let scaled = x.to_f32() * F16_TO_F32_FIELDS;
            let key = (f32_order_key(scaled) >> keys.z).wrapping_sub(keys.offset);
            assert_eq!(key, f16_key, "f16 bits {h:#06x}");
            assert_eq!((scaled * 2f32.powi(112)).to_bits(), x.to_f32().to_bits());
        }
    }
}
