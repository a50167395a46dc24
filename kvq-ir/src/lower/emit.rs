//! Emission helpers shared by the quantize and dequantize lowerings: the spec's formulas
//! (SPEC.md section 2) written as IR, one f32 operation at a time in the spec's order.

use crate::ir::{Access, BinaryOp, Builder, CmpOp, Memory, ScalarType, UnaryOp, Value};
use crate::scheme::{BitOrder, Bits, Center, ParamType, Rule, Scheme, MSE_RUN, MSE_STRANDS};

use super::{quantize_abi as abi, ShapeClass};

/// Status codes written to `status[0]`.
pub const STATUS_NON_FINITE: u32 = 1;
/// A group's parameters overflow their type.
pub const STATUS_OVERFLOW: u32 = 2;

/// The IR type parameters are stored in.
pub fn param_type(params: ParamType) -> ScalarType {
    match params {
        ParamType::F16 => ScalarType::F16,
        ParamType::F32 => ScalarType::F32,
    }
}

/// Declares the quantize ABI (see [`abi`]) and returns the memories (x, codes, zero, scale, status).
pub fn quantize_params(b: &mut Builder, scheme: &Scheme, shape: ShapeClass) -> [Memory; 5] {
    let p = param_type(scheme.params);
    let x = b.buffer("x", shape.input.scalar(), Access::Read);
    let codes = b.buffer("codes", ScalarType::U8, Access::Write);
    let zero = b.buffer("zero", p, Access::Write);
    let scale = b.buffer("scale", p, Access::Write);
    let status = b.buffer("status", ScalarType::U32, Access::Write);
    let heads = b.scalar_param("heads", ScalarType::U32);
    let tokens = b.scalar_param("tokens", ScalarType::U32);
    debug_assert_eq!((heads, tokens), (abi::HEADS, abi::TOKENS));
    [x, codes, zero, scale, status]
}

/// `lanes` elements at `index` of `mem`, each converted to f32 (exactly, for f16/bf16/f32).
pub fn load_f32(
    b: &mut Builder,
    mem: Memory,
    index: Value,
    lanes: u8,
    input: ScalarType,
) -> Vec<Value> {
    let v = b.load(mem, index, lanes);
    to_f32_scalars(b, v, lanes, input)
}

/// [`load_f32`] with an aligned load: `index` must be a proven multiple of `lanes` (the
/// verifier checks it), so that a GPU reads the elements with one vector instruction.
pub fn load_f32_aligned(
    b: &mut Builder,
    mem: Memory,
    index: Value,
    lanes: u8,
    input: ScalarType,
) -> Vec<Value> {
    let v = b.load_aligned(mem, index, lanes);
    to_f32_scalars(b, v, lanes, input)
}

/// The `lanes` elements of `v` (a scalar when `lanes` is 1).
pub fn lanes_of(b: &mut Builder, v: Value, lanes: u8) -> Vec<Value> {
    if lanes == 1 {
        vec![v]
    } else {
        (0..lanes).map(|l| b.extract(v, l)).collect()
    }
}

/// The `lanes` elements of `v` (a scalar when `lanes` is 1), each converted to f32.
pub fn to_f32_scalars(b: &mut Builder, v: Value, lanes: u8, input: ScalarType) -> Vec<Value> {
    let scalars = lanes_of(b, v, lanes);
    if input == ScalarType::F32 {
        scalars
    } else {
        scalars
            .into_iter()
            .map(|s| b.convert(ScalarType::F32, s))
            .collect()
    }
}

/// P(x): round to the parameter type and back to f32.
pub fn round_param(b: &mut Builder, x: Value, params: ParamType) -> Value {
    match params {
        ParamType::F16 => {
            let h = b.convert(ScalarType::F16, x);
            b.convert(ScalarType::F32, h)
        }
        ParamType::F32 => x,
    }
}

/// `x + 0.0`: turns -0.0 into +0.0 and leaves every other value unchanged.
pub fn positive_zero(b: &mut Builder, x: Value) -> Value {
    let z = b.f32(0.0);
    b.add(x, z)
}

/// [lo, hi] of a min/max-based rule from the group's minimum and maximum.
pub fn range_from_extremes(b: &mut Builder, rule: Rule, min: Value, max: Value) -> (Value, Value) {
    let (lo, hi) = match rule {
        // The quantile and mse rules read the whole group (`quantile_range`, `mse_range`);
        // their extremes are the minmax range.
        Rule::MinMax | Rule::Quantile(_) | Rule::Mse => (min, max),
        Rule::Shrink {
            alpha,
            center: Center::Zero,
        } => {
            let a = b.f32(alpha.get());
            (b.mul(a, min), b.mul(a, max))
        }
        Rule::Shrink {
            alpha,
            center: Center::Mid,
        } => {
            let a = b.f32(alpha.get());
            let sum = b.add(min, max);
            let two = b.f32(2.0);
            let c = b.div(sum, two);
            let dmin = b.sub(min, c);
            let dmax = b.sub(max, c);
            let smin = b.mul(a, dmin);
            let smax = b.mul(a, dmax);
            (b.add(c, smin), b.add(c, smax))
        }
    };
    (positive_zero(b, lo), positive_zero(b, hi))
}

/// Where numpy's linear quantile at level `p` of `count` sorted elements falls: h = (n - 1) p,
/// k = floor(h); the ranks k and k + 1 (k again when k = n - 1) and the fraction h - k.
#[derive(Debug, Clone, Copy)]
pub struct QuantileRank {
    /// Rank k (0-based).
    pub k: Value,
    /// Rank k + 1, or k when k is the last rank.
    pub k1: Value,
    /// Whether k = n - 1.
    pub is_last: Value,
    /// h - k, in f64.
    pub frac: Value,
}

/// The [`QuantileRank`] of level `p` over `count` elements.
pub fn quantile_rank(b: &mut Builder, count: Value, p: f64) -> QuantileRank {
    let one = b.u32(1);
    let last = b.sub(count, one);
    let n1 = b.convert(ScalarType::F64, last);
    let pv = b.f64(p);
    let h = b.mul(n1, pv);
    let k = b.unary(UnaryOp::Floor, h);
    let frac = b.sub(h, k);
    let ku = b.convert(ScalarType::U32, k);
    let is_last = b.cmp(CmpOp::Ge, ku, last);
    let next = b.add(ku, one);
    let k1 = b.select(is_last, ku, next);
    QuantileRank {
        k: ku,
        k1,
        is_last,
        frac,
    }
}

/// Q = v[k] + (v[k+1] - v[k]) (h - k) in f64, rounded to f32; Q = v[k] when k = n - 1.
pub fn quantile_interpolate(b: &mut Builder, rank: QuantileRank, vk: Value, vk1: Value) -> Value {
    let a = b.convert(ScalarType::F64, vk);
    let c = b.convert(ScalarType::F64, vk1);
    let diff = b.sub(c, a);
    let step = b.mul(diff, rank.frac);
    let q = b.add(a, step);
    let q32 = b.convert(ScalarType::F32, q);
    b.select(rank.is_last, vk, q32)
}

/// numpy's linear quantile at level `p` of the `count` elements `mem[base + i * stride]`
/// ([`quantile_rank`], [`quantile_interpolate`]).
pub fn quantile(
    b: &mut Builder,
    mem: Memory,
    base: Value,
    stride: Value,
    count: Value,
    p: f64,
) -> Value {
    let rank = quantile_rank(b, count, p);
    let vk = b.select_rank(mem, base, stride, count, rank.k);
    let vk1 = b.select_rank(mem, base, stride, count, rank.k1);
    quantile_interpolate(b, rank, vk, vk1)
}

/// [lo, hi] of the quantile rule over a strided run of elements.
pub fn quantile_range(
    b: &mut Builder,
    p: f64,
    mem: Memory,
    base: Value,
    stride: Value,
    count: Value,
) -> (Value, Value) {
    let lo = quantile(b, mem, base, stride, count, p);
    let hi = quantile(b, mem, base, stride, count, 1.0 - p);
    (positive_zero(b, lo), positive_zero(b, hi))
}

/// Whether `rule` reads the whole group itself (quantile, mse) rather than its extremes.
pub fn reads_group(rule: Rule) -> bool {
    matches!(rule, Rule::Quantile(_) | Rule::Mse)
}

/// The locals [`group_range`] needs for `rule` (mse's), declared when it needs them.
pub fn group_range_local(b: &mut Builder, rule: Rule) -> Option<MseLocals> {
    (rule == Rule::Mse).then(|| MseLocals::new(b, 1))
}

/// [lo, hi] of a rule that reads the whole group, over the `count` elements `mem[base + i *
/// stride]` (stored as `input`); `local` is [`group_range_local`]'s. Rules that need only the
/// extremes get the minmax range (quantile(0)); their kernels use [`range_from_extremes`].
pub fn group_range(
    b: &mut Builder,
    rule: Rule,
    mem: Memory,
    input: ScalarType,
    at: [Value; 3],
    local: Option<MseLocals>,
) -> (Value, Value) {
    let [base, stride, count] = at;
    match (rule, local) {
        (Rule::Mse, Some(locals)) => mse_range(b, mem, input, at, locals),
        (Rule::Quantile(p), _) => quantile_range(b, p.get(), mem, base, stride, count),
        _ => quantile_range(b, 0.0, mem, base, stride, count),
    }
}

/// Levels of the strand tree's partial sums: subtrees of 1, 2, .., [`MSE_STRANDS`] strands.
const TREE_LEVELS: u32 = (MSE_STRANDS as u32).trailing_zeros() + 1;
/// Sums per group and strand: s0, s1 and n1 of a round (the mean's pass uses s0).
const SUMS: u32 = 3;
/// Strands summed side by side (a power of two): for `w` groups together (a host's column),
/// 4, whose runs are neighbours and whose subtree adds up before it meets the counter of
/// [`tree_sums`]; one for a single group (a GPU thread's channel, a token-axis group).
fn strand_block(w: u32) -> u32 {
    match w {
        1 => 1,
        _ => 4,
    }
}

/// The F32 locals [`mse_ranges`] of `w` groups works in: per group, the sums of a block of
/// strands, then t, lo and hi (`sums`, indexed by constants only, so that a CPU keeps them in
/// registers), and the tree's partial sums per level (`stack`, indexed by level).
#[derive(Debug, Clone, Copy)]
pub struct MseLocals {
    sums: u32,
    stack: u32,
    w: u32,
}

impl MseLocals {
    /// Declares the locals for `w` groups.
    pub fn new(b: &mut Builder, w: u32) -> MseLocals {
        let sums = b.local("mse", ScalarType::F32, w * (SUMS * strand_block(w) + 3));
        let stack = b.local("mse_tree", ScalarType::F32, w * SUMS * TREE_LEVELS);
        MseLocals { sums, stack, w }
    }
}

/// The `mse` rule's [lo, hi] over the `count` elements `mem[base + i * stride]` (stored as
/// `input`), exactly as `reference::range::mse_range` computes it, in `locals` (for one group).
pub fn mse_range(
    b: &mut Builder,
    mem: Memory,
    input: ScalarType,
    [base, stride, count]: [Value; 3],
    locals: MseLocals,
) -> (Value, Value) {
    let element = |b: &mut Builder, i: Value| {
        let off = b.mul(i, stride);
        let idx = b.add(base, off);
        load_f32(b, mem, idx, 1, input)
    };
    mse_ranges(b, &element, count, locals)[0]
}

/// Where [`mse_ranges`] keeps its values: slot `k` of group `j` at `k * w + j` of the sums'
/// local (slot `g * SUMS + k` holds sum `k` of the `g`-th strand of the block at hand, then come
/// t, lo and hi), and of row `level` of the tree's local.
#[derive(Clone, Copy)]
struct MseSlots {
    locals: MseLocals,
    w: u32,
}

impl MseSlots {
    fn t(self) -> u32 {
        SUMS * strand_block(self.w)
    }
    fn lo(self) -> u32 {
        self.t() + 1
    }
    fn hi(self) -> u32 {
        self.t() + 2
    }
    fn at(self, b: &mut Builder, slot: u32, j: u32) -> Value {
        b.u32(slot * self.w + j)
    }
    fn get(self, b: &mut Builder, slot: u32, j: u32) -> Value {
        let k = self.at(b, slot, j);
        b.read_local(self.locals.sums, k)
    }
    fn set(self, b: &mut Builder, slot: u32, j: u32, v: Value) {
        let k = self.at(b, slot, j);
        b.write_local(self.locals.sums, k, v);
    }
    /// Index of sum `k` of group `j` in the tree's row `level` (a Value).
    fn tree_at(self, b: &mut Builder, level: Value, k: u32, j: u32) -> Value {
        let per_row = b.u32(SUMS * self.w);
        let base = b.mul(level, per_row);
        let at = self.at(b, k, j);
        b.add(base, at)
    }
    /// Strand 0's first `sums` slots become the tree's row `level` plus themselves (the row on
    /// the left).
    fn add_tree(self, b: &mut Builder, sums: u32, level: Value) {
        for j in 0..self.w {
            for k in 0..sums {
                let at = self.tree_at(b, level, k, j);
                let left = b.read_local(self.locals.stack, at);
                let right = self.get(b, k, j);
                let sum = b.add(left, right);
                self.set(b, k, j, sum);
            }
        }
    }
    /// The tree's row `level` becomes strand 0's first `sums` slots.
    fn store_tree(self, b: &mut Builder, sums: u32, level: Value) {
        for j in 0..self.w {
            for k in 0..sums {
                let v = self.get(b, k, j);
                let at = self.tree_at(b, level, k, j);
                b.write_local(self.locals.stack, at, v);
            }
        }
    }
}

/// Sums the `sums` terms `term(b, j, x)` gives for element `x` of group `j`, over the `count`
/// elements of `w` groups (`load(b, i)` gives element `i` of each), in the order of
/// `reference::range::tree_sum`. Strands go in blocks of `G` = [`strand_block`] neighbours (a
/// strand: its runs of [`MSE_RUN`] elements, every `MSE_STRANDS * MSE_RUN`-th): each block's
/// strands are summed side by side, add up to their subtree (level `log2 G` of the tree), and
/// that goes onto a binary counter of subtrees (block `m` with `z` trailing one bits completes
/// the subtrees of the `z` levels above, which add up left to right); at the end the counter's
/// subtrees fold from the lowest level up (the tree's empty strands add nothing, so a last
/// block's strands past the span are +0.0 like the tree's padding).
fn tree_sums(
    b: &mut Builder,
    load: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
    slots: MseSlots,
    count: Value,
    sums: u32,
    term: &dyn Fn(&mut Builder, u32, Value) -> Vec<Value>,
) -> Vec<Vec<Value>> {
    let w = slots.w;
    let run = MSE_RUN as u32;
    let block = strand_block(w);
    let base_level = block.trailing_zeros();
    // Blocks of strands holding a run: ceil(count / (RUN * G)), at most STRANDS / G.
    let per_block = b.u32(run * block);
    let last = b.u32(run * block - 1);
    let padded = b.add(count, last);
    let blocks = b.div(padded, per_block);
    let most = b.u32(MSE_STRANDS as u32 / block);
    let blocks = b.min(blocks, most);
    let first = b.u32(0);
    b.for_range(first, blocks, 1, |b, m| {
        for g in 0..block {
            for j in 0..w {
                for k in 0..sums {
                    let z = b.f32(0.0);
                    slots.set(b, g * SUMS + k, j, z);
                }
            }
        }
        let per_block = b.u32(run * block);
        let start = b.mul(m, per_block);
        b.for_range(start, count, MSE_STRANDS as u32 * run, |b, i0| {
            for g in 0..block {
                let from = b.u32(g * run);
                let from = b.add(i0, from);
                let to = b.u32((g + 1) * run);
                let to = b.add(i0, to);
                let to = b.min(to, count);
                b.for_range(from, to, 1, |b, i| {
                    let xs = load(b, i);
                    for (j, &x) in (0..w).zip(&xs) {
                        for (k, v) in (0..sums).zip(term(b, j, x)) {
                            let cur = slots.get(b, g * SUMS + k, j);
                            let next = b.add(cur, v);
                            slots.set(b, g * SUMS + k, j, next);
                        }
                    }
                });
            }
        });
        // The block's subtree, into strand 0's slots.
        let mut width = block;
        while width > 1 {
            width /= 2;
            for g in 0..width {
                for j in 0..w {
                    for k in 0..sums {
                        let left = slots.get(b, 2 * g * SUMS + k, j);
                        let right = slots.get(b, (2 * g + 1) * SUMS + k, j);
                        let sum = b.add(left, right);
                        slots.set(b, g * SUMS + k, j, sum);
                    }
                }
            }
        }
        match w {
            // One group (a GPU thread's): the counter's levels unrolled, so that the tree's
            // local is indexed by constants only (registers, not local memory).
            1 => push_unrolled(b, slots, sums, m, base_level),
            _ => push(b, slots, sums, m, base_level),
        }
    });
    // The fold (in strand 0's slots): the subtree of each level whose bit `blocks` has, lowest
    // first, each added on the left of what the lower ones made.
    for j in 0..w {
        for k in 0..sums {
            let z = b.f32(0.0);
            slots.set(b, k, j, z);
        }
    }
    let fold_level = |b: &mut Builder, above: Value| {
        let bit = b.binary(BinaryOp::Shr, blocks, above);
        let one = b.u32(1);
        let bit = b.binary(BinaryOp::And, bit, one);
        let zero = b.u32(0);
        let set = b.cmp(CmpOp::Ne, bit, zero);
        b.if_then(set, |b| {
            let offset = b.u32(base_level);
            let level = b.add(above, offset);
            slots.add_tree(b, sums, level);
        });
    };
    match w {
        1 => {
            for above in 0..TREE_LEVELS - base_level {
                let above = b.u32(above);
                fold_level(b, above);
            }
        }
        _ => {
            let levels = b.u32(TREE_LEVELS - base_level);
            let bottom = b.u32(0);
            b.for_range(bottom, levels, 1, fold_level);
        }
    }
    (0..w)
        .map(|j| (0..sums).map(|k| slots.get(b, k, j)).collect())
        .collect()
}

/// Pushes the block subtree in strand 0's slots onto the counter: block `m` with `z` trailing
/// one bits adds the subtrees of the `z` levels above `base` on its left, then is the subtree
/// of level `base + z`.
fn push(b: &mut Builder, slots: MseSlots, sums: u32, m: Value, base: u32) {
    // z = popcount(m ^ (m + 1)) - 1.
    let one = b.u32(1);
    let next = b.add(m, one);
    let flips = b.binary(BinaryOp::Xor, m, next);
    let flips = b.unary(UnaryOp::PopCount, flips);
    let z = b.sub(flips, one);
    let bottom = b.u32(0);
    b.for_range(bottom, z, 1, |b, above| {
        let offset = b.u32(base);
        let level = b.add(above, offset);
        slots.add_tree(b, sums, level);
    });
    let offset = b.u32(base);
    let level = b.add(z, offset);
    slots.store_tree(b, sums, level);
}

/// [`push`] with the levels unrolled: at each level, a set bit of `m` adds that level's subtree
/// and goes on up, a clear one stores the sum there.
fn push_unrolled(b: &mut Builder, slots: MseSlots, sums: u32, m: Value, base: u32) {
    fn from(b: &mut Builder, slots: MseSlots, sums: u32, m: Value, base: u32, level: u32) {
        let at = b.u32(level);
        if level == TREE_LEVELS - 1 {
            slots.store_tree(b, sums, at);
            return;
        }
        let shift = b.u32(level - base);
        let bit = b.binary(BinaryOp::Shr, m, shift);
        let one = b.u32(1);
        let bit = b.binary(BinaryOp::And, bit, one);
        let set = b.cmp(CmpOp::Eq, bit, one);
        b.if_else(
            set,
            |b| {
                slots.add_tree(b, sums, at);
                from(b, slots, sums, m, base, level + 1);
            },
            |b| slots.store_tree(b, sums, at),
        );
    }
    from(b, slots, sums, m, base, base);
}

/// The terms element `x` adds to a round's sums at threshold `t`: `[s0, s1, n1]`'s
/// (`x >= t ? 0 : x`, `x >= t ? x : 0`, `x >= t ? 1 : 0`).
pub fn mse_terms(b: &mut Builder, x: Value, t: Value) -> [Value; 3] {
    let upper = b.cmp(CmpOp::Ge, x, t);
    let (z, one) = (b.f32(0.0), b.f32(1.0));
    let below = b.select(upper, z, x);
    let above = b.select(upper, x, z);
    let counted = b.select(upper, one, z);
    [below, above, counted]
}

/// The sums `[s0, s1, n1]` after element `x` at threshold `t`: `x` added to `s0` or `s1`, and 1
/// to `n1` when `x >= t`, the other sums left as they are. The same bits as adding
/// [`mse_terms`] to sums that start at `+0`: such a sum is never `-0` (in round-to-nearest a
/// sum is `-0` only when both terms are), so adding `+0` leaves it as it is. A GPU makes each a
/// predicated add where the terms take a select and an add.
pub fn mse_add_terms(b: &mut Builder, x: Value, t: Value, [s0, s1, n1]: [Value; 3]) -> [Value; 3] {
    let upper = b.cmp(CmpOp::Ge, x, t);
    let one = b.f32(1.0);
    let (s0_x, s1_x, n1_1) = (b.add(s0, x), b.add(s1, x), b.add(n1, one));
    [
        b.select(upper, s0, s0_x),
        b.select(upper, s1_x, s1),
        b.select(upper, n1_1, n1),
    ]
}

/// A round of Lloyd's iteration from threshold `t` over a group of `n` elements (f32) with
/// sums `[s0, s1, n1]`: `(lo, hi, t')`. Counts are exact in f32 (at most `MAX_TOKENS` =
/// 2^24), so `n0 = n - n1` is too.
pub fn mse_round(b: &mut Builder, t: Value, n: Value, [s0, s1, n1]: [Value; 3]) -> [Value; 3] {
    let n0 = b.sub(n, n1);
    let z = b.f32(0.0);
    let level = |b: &mut Builder, s: Value, c: Value| {
        let some = b.cmp(CmpOp::Gt, c, z);
        let mean = b.div(s, c);
        b.select(some, mean, t)
    };
    let lo = level(b, s0, n0);
    let hi = level(b, s1, n1);
    let both = b.add(lo, hi);
    let two = b.f32(2.0);
    let t = b.div(both, two);
    [lo, hi, t]
}

/// The `mse` rule's [lo, hi] of `w` groups at once: `load(b, i)` gives element `i` of each of
/// the `w` groups (f32), `count` elements each. Each group's sums are its own, in the order of
/// `reference::range::mse_range`; one pass over the elements per round serves all `w` groups
/// (contiguous rows of a column of channels), `w` being that of `locals`.
pub fn mse_ranges(
    b: &mut Builder,
    load: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
    count: Value,
    locals: MseLocals,
) -> Vec<(Value, Value)> {
    let w = locals.w;
    let slots = MseSlots { locals, w };
    let n = b.convert(ScalarType::F32, count);
    let all = |_: &mut Builder, _: u32, x: Value| vec![x];
    let totals = tree_sums(b, load, slots, count, 1, &all);
    for (j, total) in (0..w).zip(totals) {
        let mean = b.div(total[0], n);
        slots.set(b, slots.t(), j, mean);
        slots.set(b, slots.lo(), j, mean);
        slots.set(b, slots.hi(), j, mean);
    }
    // The rounds as a loop of the kernel (not unrolled here): one copy of their code.
    let first = b.u32(0);
    let rounds = b.u32(crate::scheme::MSE_ITERATIONS as u32);
    b.for_range(first, rounds, 1, |b, _| {
        let split = |b: &mut Builder, j: u32, x: Value| {
            let t = slots.get(b, slots.t(), j);
            mse_terms(b, x, t).to_vec()
        };
        let found = tree_sums(b, load, slots, count, SUMS, &split);
        for (j, sums) in (0..w).zip(found) {
            let t = slots.get(b, slots.t(), j);
            let [lo, hi, t] = mse_round(b, t, n, [sums[0], sums[1], sums[2]]);
            slots.set(b, slots.lo(), j, lo);
            slots.set(b, slots.hi(), j, hi);
            slots.set(b, slots.t(), j, t);
        }
    });
    (0..w)
        .map(|j| {
            let lo = slots.get(b, slots.lo(), j);
            let hi = slots.get(b, slots.hi(), j);
            (positive_zero(b, lo), positive_zero(b, hi))
        })
        .collect()
}

/// The stored (zero, scale) of a group with range [lo, hi]; flags an overflow in `status`.
pub fn group_params(
    b: &mut Builder,
    scheme: &Scheme,
    lo: Value,
    hi: Value,
    status: Memory,
) -> (Value, Value) {
    let (zero, scale, overflow) = group_params_unflagged(b, scheme, lo, hi);
    flag(b, status, overflow, STATUS_OVERFLOW);
    (zero, scale)
}

/// [`group_params`] without the flag: (zero, scale, whether they overflow), for a kernel that
/// flags several groups at once (one branch instead of one per group, which keeps the groups'
/// arithmetic in one basic block for a CPU's vectorizer).
pub fn group_params_unflagged(
    b: &mut Builder,
    scheme: &Scheme,
    lo: Value,
    hi: Value,
) -> (Value, Value, Value) {
    let levels = b.f32(scheme.bits.max_code() as f32);
    let zero = round_param(b, lo, scheme.params);
    let hi_p = round_param(b, hi, scheme.params);
    let diff = b.sub(hi_p, zero);
    let raw = b.div(diff, levels);
    let rounded = round_param(b, raw, scheme.params);
    let empty = b.cmp(CmpOp::Le, hi, lo);
    let zero_f = b.f32(0.0);
    let scale = b.select(empty, zero_f, rounded);
    // Overflow: |zero| or |zero + L * scale| beyond the parameter type's finite range.
    let span = b.mul(levels, scale);
    let top = b.add(zero, span);
    let neg = b.unary(UnaryOp::Neg, top);
    let abs_top = b.max(top, neg);
    let limit = b.f32(match scheme.params {
        ParamType::F16 => half::f16::MAX.to_f32(),
        ParamType::F32 => f32::MAX,
    });
    let within = b.cmp(CmpOp::Le, abs_top, limit);
    let fz = b.unary(UnaryOp::IsFinite, zero);
    let fs = b.unary(UnaryOp::IsFinite, scale);
    let ok1 = b.binary(crate::ir::BinaryOp::And, fz, fs);
    let ok = b.binary(crate::ir::BinaryOp::And, ok1, within);
    let bad = b.unary(UnaryOp::Not, ok);
    (zero, scale, bad)
}

/// Stores `code` to `status[0]` when `cond` holds.
pub fn flag(b: &mut Builder, status: Memory, cond: Value, code: u32) {
    b.if_then(cond, |b| {
        let i = b.u32(0);
        let c = b.u32(code);
        b.store(status, i, c);
    });
}

/// The code of `x` under (zero, scale): `clamp(round_half_even((x - zero) / scale), 0, L)`, or 0
/// when the scale is 0. Codes of finite `x` (with finite parameters) follow SPEC.md exactly; a
/// non-finite `x` or parameter is already flagged (nothing is stored), and the operand order
/// only makes sure it cannot trap: `min(L, q)` is `if q < L { q } else { L }`, so a NaN
/// quotient (non-finite input) becomes `L` before the conversion.
pub fn code(b: &mut Builder, scheme: &Scheme, x: Value, zero: Value, scale: Value) -> Value {
    let coding = Coding::new(b, zero, scale);
    coding.code(b, scheme, x)
}

/// A group's parameters as [`code`] uses them, prepared once per group so that a kernel coding
/// many elements of a group pays for it once: a flat group (scale 0) divides by +inf instead,
/// which gives every finite `x` the quotient ±0 and so the code 0 that SPEC.md gives a flat
/// group, with no test per element. [`Coding::per_group`] may instead compare with the group's
/// thresholds (the same codes).
#[derive(Debug, Clone)]
pub struct Coding {
    zero: Value,
    divisor: Value,
    /// `t_1..t_L` over `d = x - zero`: the code is `#{k : d >= t_k}`.
    thresholds: Option<Vec<Value>>,
}

/// The most levels [`Coding::per_group`] codes by comparison (2-bit codes): each threshold
/// costs a division per group, each comparison an instruction per element.
const MAX_DIRECT_THRESHOLD_LEVELS: u8 = 3;

impl Coding {
    /// The coding of a group with these parameters: one division per element.
    pub fn new(b: &mut Builder, zero: Value, scale: Value) -> Coding {
        let zero_f = b.f32(0.0);
        let flat = b.cmp(CmpOp::Eq, scale, zero_f);
        let inf = b.f32(f32::INFINITY);
        let divisor = b.select(flat, inf, scale);
        Coding {
            zero,
            divisor,
            thresholds: None,
        }
    }

    /// The coding of a group whose elements are many per preparation (the token-axis lanes
    /// kernel, where a lane's channels share a group; the host channel-group kernel, whose
    /// parameters' loop keeps each channel's thresholds for its group of tokens; in the
    /// channel-group lanes kernel each of
    /// a lane's 16 channels is a group of its own, and 48 thresholds a lane took ptxas to 164
    /// registers and the predicted time from 38.0 to 51.4 us, so it divides): for
    /// f16 parameters and at most [`MAX_DIRECT_THRESHOLD_LEVELS`] levels, comparisons of
    /// `d = x - zero` with thresholds `t_k`, the smallest `d` whose code is at least `k`. The
    /// code of `d` is monotone in `d`, so `code = #{k : d >= t_k}` exactly. `t_k` is
    /// `g = (k - 0.5) * scale` (one f32 multiplication) when `g`'s own code reaches `k`, else the
    /// next float above `g`: over every positive finite f16 scale and every level of 1- and
    /// 2-bit codes the smallest such `d` is `g` or its successor (kvq-ir's `tests/thresholds.rs`
    /// checks this exhaustively against the reference's code formula). A flat group (scale 0)
    /// has no reachable level: every `t_k` is +inf. Else [`Coding::new`].
    pub fn per_group(b: &mut Builder, scheme: &Scheme, zero: Value, scale: Value) -> Coding {
        let mut coding = Coding::new(b, zero, scale);
        if !Coding::compares(scheme) {
            return coding;
        }
        let levels = scheme.bits.max_code();
        let zero_f = b.f32(0.0);
        let flat = b.cmp(CmpOp::Eq, scale, zero_f);
        let inf = b.f32(f32::INFINITY);
        let thresholds = (1..=levels)
            .map(|k| {
                let half = b.f32(f32::from(k) - 0.5);
                let g = b.mul(half, scale);
                let reached_code = coding.code_of_difference(b, scheme, g);
                let kv = b.u8(k);
                let reached = b.cmp(CmpOp::Ge, reached_code, kv);
                let bits = b.bitcast(ScalarType::U32, g);
                let one = b.u32(1);
                let next_bits = b.add(bits, one);
                let next = b.bitcast(ScalarType::F32, next_bits);
                let t = b.select(reached, g, next);
                b.select(flat, inf, t)
            })
            .collect();
        coding.thresholds = Some(thresholds);
        coding
    }

    /// Whether [`Coding::per_group`] codes `scheme`'s groups by comparisons (f16 parameters, at
    /// most [`MAX_DIRECT_THRESHOLD_LEVELS`] levels).
    pub fn compares(scheme: &Scheme) -> bool {
        scheme.params == ParamType::F16 && scheme.bits.max_code() <= MAX_DIRECT_THRESHOLD_LEVELS
    }

    /// The thresholds `t_1..t_L` over `x - zero` when the coding compares ([`Coding::per_group`]).
    pub fn thresholds(&self) -> Option<&[Value]> {
        self.thresholds.as_deref()
    }

    /// The code of `x`: see [`code`].
    pub fn code(&self, b: &mut Builder, scheme: &Scheme, x: Value) -> Value {
        match &self.thresholds {
            None => {
                let [levels, below] = clamp_bounds(b, scheme);
                let d = b.sub(x, self.zero);
                self.divide(b, [levels, below], d)
            }
            Some(thresholds) => {
                let d = b.sub(x, self.zero);
                // #{k : d >= t_k} as the highest level whose threshold `d` reaches (the
                // thresholds ascend, so the levels reached are 1..=code).
                let mut c = b.u8(0);
                for (k, &t) in thresholds.iter().enumerate() {
                    let reached = b.cmp(CmpOp::Ge, d, t);
                    let level = b.u8(k as u8 + 1);
                    c = b.select(reached, level, c);
                }
                c
            }
        }
    }

    /// The code of the difference `d = x - zero` by division.
    fn code_of_difference(&self, b: &mut Builder, scheme: &Scheme, d: Value) -> Value {
        let bounds = clamp_bounds(b, scheme);
        self.divide(b, bounds, d)
    }

    /// `clamp(round(d / divisor), 0, L)` with the clamp's bounds `[L, -0.5]` given.
    fn divide(&self, b: &mut Builder, [levels, below]: [Value; 2], d: Value) -> Value {
        let q = b.div(d, self.divisor);
        // clamp(round(q), 0, L) = round(clamp(q, -0.5, L)) (L is a whole number; q <= -0.5
        // rounds to -0, code 0), with the constants first so that a GPU clamps with two
        // min/max instructions.
        let upper = b.min(levels, q);
        let clamped = b.max(below, upper);
        let r = b.unary(UnaryOp::RoundEven, clamped);
        b.convert(ScalarType::U8, r)
    }
}

/// The constants of [`Coding`]'s clamp: `L` and -0.5.
fn clamp_bounds(b: &mut Builder, scheme: &Scheme) -> [Value; 2] {
    let levels = b.f32(scheme.bits.max_code() as f32);
    let below = b.f32(-0.5);
    [levels, below]
}

/// The byte of `codes` (U8 values, each at most `2^bits - 1`) packed as SPEC.md section 3 says
/// (what [`Builder::pack_bits`] gives), written as U8 shifts and ORs: plain scalar operations,
/// which a CPU's loop vectorizer widens across loop iterations (it leaves `PackBits`' vector
/// form alone, which keeps a loop that contains it scalar).
pub fn pack_scalar(b: &mut Builder, codes: &[Value], bits: Bits, order: BitOrder) -> Value {
    let mut byte: Option<Value> = None;
    for (j, &c) in codes.iter().enumerate() {
        let s = b.u8(crate::reference::pack::bit_shift(j, bits, order) as u8);
        let placed = b.binary(BinaryOp::Shl, c, s);
        byte = Some(match byte {
            Some(acc) => b.binary(BinaryOp::Or, acc, placed),
            None => placed,
        });
    }
    byte.unwrap_or_else(|| b.u8(0))
}

/// Stores a parameter (an f32 value exactly representable in the parameter type).
pub fn store_param(b: &mut Builder, mem: Memory, index: Value, v: Value, params: ParamType) {
    let v = match params {
        ParamType::F16 => b.convert(ScalarType::F16, v),
        ParamType::F32 => v,
    };
    b.store(mem, index, v);
}

/// [`store_param`] of consecutive parameters `values` from `index` (a proven multiple of
/// `values.len()`, a power of two), by aligned vector stores of up to 16 bytes.
pub fn store_params_aligned(
    b: &mut Builder,
    mem: Memory,
    index: Value,
    values: &[Value],
    params: ParamType,
) {
    let size = match params {
        ParamType::F16 => 2,
        ParamType::F32 => 4,
    };
    let chunk = values.len().min(16 / size);
    for (k, part) in values.chunks(chunk).enumerate() {
        let elems: Vec<Value> = part
            .iter()
            .map(|&v| match params {
                ParamType::F16 => b.convert(ScalarType::F16, v),
                ParamType::F32 => v,
            })
            .collect();
        let off = b.u32((k * chunk) as u32);
        let at = b.add(index, off);
        let value = match elems.len() {
            1 => elems[0],
            _ => b.vector(elems),
        };
        b.store_aligned(mem, at, value);
    }
}

/// Folds `x` into a running probe of non-finite input (start it at 0): `probe + x` for f16
/// input, whose finite values (at most 65504 in magnitude) cannot sum to infinity in f32 within
/// any span an index can address, and `probe + x * 0` otherwise (`0 * inf` and `0 * NaN` are
/// NaN, every other product is a zero). The probe ends non-finite exactly when some `x` was.
/// One instruction per element on a GPU (the channel-axis lanes kernel, whose extremes use the
/// IR's `Min`/`Max`, which drop a NaN); see [`note_non_finite`] for the host's kernels.
pub fn probe_finite(b: &mut Builder, probe: Value, x: Value, input: ScalarType) -> Value {
    let term = probe_term(b, x, input);
    b.add(probe, term)
}

/// What [`probe_finite`] adds for `x`: `x` itself for f16 input, else `x * 0`. Any sum of such
/// terms, in any order, is non-finite exactly when some `x` is.
pub fn probe_term(b: &mut Builder, x: Value, input: ScalarType) -> Value {
    match input {
        ScalarType::F16 => x,
        _ => {
            let zero = b.f32(0.0);
            b.mul(x, zero)
        }
    }
}

/// Flags `STATUS_NON_FINITE` when a probe ([`probe_finite`]) is not finite.
pub fn flag_probe(b: &mut Builder, probe: Value, status: Memory) {
    let finite = b.unary(UnaryOp::IsFinite, probe);
    let bad = b.unary(UnaryOp::Not, finite);
    flag(b, status, bad, STATUS_NON_FINITE);
}

/// Flags `STATUS_NON_FINITE` unless every (min, max) pair of `extremes` has `min > -inf` and
/// `max < +inf`: IEEE 754-2019 minima and maxima ([`crate::ir::BinaryOp::Minimum`]) of the
/// inputs, started at +inf / -inf, are NaN when an input is and -inf / +inf when an input is,
/// while a pair that saw no input keeps its neutral start, so that detecting non-finite input
/// costs nothing per element.
pub fn flag_non_finite_extremes(b: &mut Builder, extremes: &[(Value, Value)], status: Memory) {
    let inf = b.f32(f32::INFINITY);
    let ninf = b.f32(f32::NEG_INFINITY);
    let mut all_finite: Option<Value> = None;
    for &(mn, mx) in extremes {
        let low = b.cmp(CmpOp::Gt, mn, ninf);
        let high = b.cmp(CmpOp::Lt, mx, inf);
        let pair = b.binary(BinaryOp::And, low, high);
        all_finite = Some(match all_finite {
            Some(f) => b.binary(BinaryOp::And, f, pair),
            None => pair,
        });
    }
    if let Some(f) = all_finite {
        let bad = b.unary(UnaryOp::Not, f);
        flag(b, status, bad, STATUS_NON_FINITE);
    }
}

/// Folds `!is_finite(x)` into the U32 local `bad[0]`: an OR of flags, which a CPU vectorises
/// (the host's kernels; the GPU kernels flag from their extremes, [`flag_non_finite_extremes`]).
pub fn note_non_finite(b: &mut Builder, bad: u32, x: Value) {
    let finite = b.unary(UnaryOp::IsFinite, x);
    let not_finite = b.unary(UnaryOp::Not, finite);
    let as_u32 = b.convert(ScalarType::U32, not_finite);
    let i = b.u32(0);
    let old = b.read_local(bad, i);
    let new = b.binary(crate::ir::BinaryOp::Or, old, as_u32);
    b.write_local(bad, i, new);
}

/// Flags `STATUS_NON_FINITE` when the U32 local `bad[0]` is set.
pub fn flag_non_finite(b: &mut Builder, bad: u32, status: Memory) {
    flag_noted(b, status, bad, STATUS_NON_FINITE);
}

/// ORs the condition `cond` into the U32 local `seen[0]` (a loop's conditions, flagged once
/// after it by [`flag_noted`]: no branch in the loop's body, which a CPU then vectorizes).
pub fn note_condition(b: &mut Builder, seen: u32, cond: Value) {
    let (yes, no) = (b.u32(1), b.u32(0));
    let bit = b.select(cond, yes, no);
    let at = b.u32(0);
    let old = b.read_local(seen, at);
    let new = b.binary(BinaryOp::Or, old, bit);
    b.write_local(seen, at, new);
}

/// Stores `code` to `status[0]` when the U32 local `seen[0]` is set.
pub fn flag_noted(b: &mut Builder, status: Memory, seen: u32, code: u32) {
    let i = b.u32(0);
    let v = b.read_local(seen, i);
    let zero = b.u32(0);
    let set = b.cmp(CmpOp::Ne, v, zero);
    flag(b, status, set, code);
}

/// Codes with at most this many levels use thresholds ([`code_threshold`]) in the group = all
/// kernels, where a group is long enough that finding them (32 code evaluations per level; 9 on
/// host schedules where the guess holds) costs little.
pub const MAX_THRESHOLD_LEVELS: u8 = 15;

/// The order-preserving key of the f32 `x` (`bits ^ (sign ? 0xFFFF_FFFF : 0x8000_0000)`): the
/// keys compare as unsigned integers as the floats do in their total order (-0 just below +0),
/// [`from_order_key`]'s inverse.
pub fn order_key(b: &mut Builder, x: Value) -> Value {
    let bits = b.bitcast(ScalarType::U32, x);
    let shift = b.u32(31);
    let sign = b.binary(BinaryOp::Shr, bits, shift);
    let zero = b.u32(0);
    let negative = b.cmp(CmpOp::Ne, sign, zero);
    let all = b.u32(0xFFFF_FFFF);
    let top = b.u32(0x8000_0000);
    let mask = b.select(negative, all, top);
    b.binary(BinaryOp::Xor, bits, mask)
}

/// The f32 whose order-preserving key (`bits ^ (sign ? 0xFFFF_FFFF : 0x8000_0000)`, which
/// compares as the floats do, -0 just below +0) is `key`.
pub fn from_order_key(b: &mut Builder, key: Value) -> Value {
    let shift = b.u32(31);
    let high = b.binary(BinaryOp::Shr, key, shift);
    let zero = b.u32(0);
    let positive = b.cmp(CmpOp::Ne, high, zero);
    let mask = b.u32(0x7FFF_FFFF);
    let lowered = b.binary(BinaryOp::And, key, mask);
    let flipped = b.unary(UnaryOp::Not, key);
    let bits = b.select(positive, lowered, flipped);
    b.bitcast(ScalarType::F32, bits)
}

/// Keys on each side of `zero + (level - 0.5) scale` that [`code_threshold`] tries first: the
/// threshold lies a few floats from it (the subtraction and division that make a code each
/// round once, as the two operations that make the guess do), and `2 * 2^NEAR_BITS` keys take
/// `NEAR_BITS + 1` bisection steps instead of 32.
const NEAR_BITS: u32 = 6;

/// The smallest finite f32 whose [`code`] under (zero, scale) is at least `level`, or +inf when
/// none is. Since the code is a monotone step function of x (IEEE subtraction, division by a
/// positive scale, rounding and clamping are all monotone), `code(x) = #{k : x >= t_k}` for the
/// thresholds t_1..t_L, which turns the per-element division into comparisons with exactly the
/// same result. Found by bisection over the order keys of the finite floats, with the U32 local
/// `state` (2 elements) holding the bracket `(lo, hi]`: all finite floats, in 32 steps; or, with
/// `near`, first the [`NEAR_BITS`] keys each side of the guess `g = zero + (level - 0.5) scale`,
/// when the code at the bottom of that bracket is under `level` and the code at its top reaches
/// it (then, the code being monotone, the smallest key reaching `level` above `-f32::MAX`'s is
/// inside it), else all finite floats. Either way the same float. `near` suits host schedules,
/// where a block's threads find their channels' thresholds one after another; a GPU's threads
/// find theirs side by side, and the cost model predicts no gain there.
pub fn code_threshold(
    b: &mut Builder,
    scheme: &Scheme,
    [zero, scale]: [Value; 2],
    level: u8,
    state: u32,
    near: bool,
) -> Value {
    let (lo_i, hi_i) = (b.u32(0), b.u32(1));
    let lo_key = b.u32(0x0080_0000); // order key of -f32::MAX
    let hi_key = b.u32(0xFF7F_FFFF); // order key of f32::MAX
    let (lo, hi, steps) = match near {
        true => near_bracket(b, scheme, [zero, scale], level, [lo_key, hi_key]),
        false => (lo_key, hi_key, None),
    };
    b.write_local(state, lo_i, lo);
    b.write_local(state, hi_i, hi);
    let first = b.u32(0);
    let steps = steps.unwrap_or_else(|| b.u32(32));
    b.for_range(first, steps, 1, |b, _| {
        let (lo_i, hi_i) = (b.u32(0), b.u32(1));
        let lo = b.read_local(state, lo_i);
        let hi = b.read_local(state, hi_i);
        let gap = b.sub(hi, lo);
        let one = b.u32(1);
        let half = b.binary(BinaryOp::Shr, gap, one);
        let mid = b.add(lo, half);
        let x = from_order_key(b, mid);
        let c = code(b, scheme, x, zero, scale);
        let lv = b.u8(level);
        let reached = b.cmp(CmpOp::Ge, c, lv);
        let new_hi = b.select(reached, mid, hi);
        let new_lo = b.select(reached, lo, mid);
        b.write_local(state, hi_i, new_hi);
        b.write_local(state, lo_i, new_lo);
    });
    let hi_i = b.u32(1);
    let hi = b.read_local(state, hi_i);
    let t = from_order_key(b, hi);
    let max = b.f32(f32::MAX);
    let top = code(b, scheme, max, zero, scale);
    let lv = b.u8(level);
    let reachable = b.cmp(CmpOp::Ge, top, lv);
    let inf = b.f32(f32::INFINITY);
    b.select(reachable, t, inf)
}

/// [`code_threshold`]'s first bracket with `near`: `(lo, hi, Some(steps))`, the [`NEAR_BITS`] keys
/// each side of the guess (within `[lo_key, hi_key]`) in `NEAR_BITS + 1` steps where they hold
/// the threshold, else `(lo_key, hi_key, 32)`.
fn near_bracket(
    b: &mut Builder,
    scheme: &Scheme,
    [zero, scale]: [Value; 2],
    level: u8,
    [lo_key, hi_key]: [Value; 2],
) -> (Value, Value, Option<Value>) {
    // The bracket around the guess, within [lo_key, hi_key].
    let half = b.f32(f32::from(level) - 0.5);
    let step = b.mul(half, scale);
    let guess = b.add(zero, step);
    let guess = order_key(b, guess);
    let guess = b.max(guess, lo_key);
    let guess = b.min(guess, hi_key);
    let reach = b.u32(1 << NEAR_BITS);
    let below = b.sub(guess, lo_key);
    let room_below = b.cmp(CmpOp::Ge, below, reach);
    let near_lo = b.sub(guess, reach);
    let near_lo = b.select(room_below, near_lo, lo_key);
    let above = b.sub(hi_key, guess);
    let room_above = b.cmp(CmpOp::Ge, above, reach);
    let near_hi = b.add(guess, reach);
    let near_hi = b.select(room_above, near_hi, hi_key);
    let lv = b.u8(level);
    let x_lo = from_order_key(b, near_lo);
    let c_lo = code(b, scheme, x_lo, zero, scale);
    let short = b.cmp(CmpOp::Lt, c_lo, lv);
    let x_hi = from_order_key(b, near_hi);
    let c_hi = code(b, scheme, x_hi, zero, scale);
    let reached = b.cmp(CmpOp::Ge, c_hi, lv);
    let near = b.binary(BinaryOp::And, short, reached);
    let lo = b.select(near, near_lo, lo_key);
    let hi = b.select(near, near_hi, hi_key);
    let (few, all) = (b.u32(NEAR_BITS + 1), b.u32(32));
    let steps = b.select(near, few, all);
    (lo, hi, Some(steps))
}

/// The code of `x` from its group's thresholds (see [`code_threshold`]). A non-finite `x` gets
/// some code (NaN 0, +inf the top one): non-finite input is flagged, and nothing is stored
/// (SPEC.md section 2), so no per-element guard is spent on it.
pub fn code_from_thresholds(b: &mut Builder, x: Value, thresholds: &[Value]) -> Value {
    let mut total: Option<Value> = None;
    for &t in thresholds {
        let above = b.cmp(CmpOp::Ge, x, t);
        let one = b.convert(ScalarType::U8, above);
        total = Some(match total {
            Some(s) => b.add(s, one),
            None => one,
        });
    }
    total.unwrap_or_else(|| b.u8(0))
}

/// Token groups of `n` in the span: `ceil(tokens / n)` of the `tokens` parameter.
pub fn token_groups(b: &mut Builder, n: u32) -> Value {
    let tokens = b.param(super::quantize_abi::TOKENS);
    let nv = b.u32(n);
    let n_minus_1 = b.u32(n - 1);
    let padded = b.add(tokens, n_minus_1);
    b.div(padded, nv)
}

/// The flat thread index `block_id * block_size + thread_id`.
pub fn global_item(b: &mut Builder, block_size: u32) -> Value {
    let tid = b.special(crate::ir::Special::ThreadId);
    let blk = b.special(crate::ir::Special::BlockId);
    let bs = b.u32(block_size);
    let first = b.mul(blk, bs);
    b.add(first, tid)
}

/// One thread per (head, token) row: runs `body(b, row, tokens)` for the threads whose flat
/// index is below `heads * tokens` (scalar parameters `heads` and `tokens` of the kernel).
pub fn for_each_row(
    b: &mut Builder,
    block_size: u32,
    [heads, tokens]: [u32; 2],
    body: impl FnOnce(&mut Builder, Value, Value),
) {
    let item = global_item(b, block_size);
    let heads = b.param(heads);
    let tokens = b.param(tokens);
    let total = b.mul(heads, tokens);
    let in_range = b.cmp(CmpOp::Lt, item, total);
    b.if_then(in_range, |b| body(b, item, tokens));
}
