//! Emission helpers shared by the quantize and dequantize lowerings: the spec's formulas
//! (SPEC.md section 2) written as IR, one f32 operation at a time in the spec's order.

use crate::ir::{Access, BinaryOp, Builder, CmpOp, Memory, ScalarType, UnaryOp, Value};
use crate::scheme::{BitOrder, Bits, Center, ParamType, Rule, Scheme};

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

/// The `lanes` elements of `v` (a scalar when `lanes` is 1), each converted to f32.
fn to_f32_scalars(b: &mut Builder, v: Value, lanes: u8, input: ScalarType) -> Vec<Value> {
    let scalars: Vec<Value> = if lanes == 1 {
        vec![v]
    } else {
        (0..lanes).map(|l| b.extract(v, l)).collect()
    };
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

/// The F32 local [`group_range`] needs for `rule` (mse's sums), declared when it needs one.
pub fn group_range_local(b: &mut Builder, rule: Rule) -> Option<u32> {
    (rule == Rule::Mse).then(|| b.local("mse", ScalarType::F32, MSE_LOCALS))
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
    local: Option<u32>,
) -> (Value, Value) {
    let [base, stride, count] = at;
    match (rule, local) {
        (Rule::Mse, Some(acc)) => mse_range(b, mem, input, at, acc),
        (Rule::Quantile(p), _) => quantile_range(b, p.get(), mem, base, stride, count),
        _ => quantile_range(b, 0.0, mem, base, stride, count),
    }
}

/// Slots of the F32 local that [`mse_range`] works in (per channel for [`mse_ranges`]).
pub const MSE_LOCALS: u32 = 7;

/// The `mse` rule's [lo, hi] over the `count` elements `mem[base + i * stride]` (stored as
/// `input`), in index order, exactly as `reference::range::mse_range` computes it; `acc` is an
/// F32 local of [`MSE_LOCALS`] slots (sums s0, n0, s1, n1, then t, lo, hi).
pub fn mse_range(
    b: &mut Builder,
    mem: Memory,
    input: ScalarType,
    [base, stride, count]: [Value; 3],
    acc: u32,
) -> (Value, Value) {
    let element = |b: &mut Builder, i: Value| {
        let off = b.mul(i, stride);
        let idx = b.add(base, off);
        load_f32(b, mem, idx, 1, input)
    };
    mse_ranges(b, &element, 1, count, acc)[0]
}

/// The `mse` rule's [lo, hi] of `w` groups at once: `load(b, i)` gives element `i` of each of
/// the `w` groups (f32), `count` elements each. Every group's sums run over its elements in
/// index order, exactly as [`mse_range`] (and `reference::range::mse_range`) take them, so each
/// range is that group's alone; one pass over the elements serves all `w` groups (contiguous
/// rows of a column of channels, independent sums). `acc` is an F32 local of `MSE_LOCALS * w`
/// slots (slot `k` of group `j` at `k * w + j`).
pub fn mse_ranges(
    b: &mut Builder,
    load: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
    w: u32,
    count: Value,
    acc: u32,
) -> Vec<(Value, Value)> {
    let at = |b: &mut Builder, slot: u32, j: u32| b.u32(slot * w + j);
    let bump = |b: &mut Builder, slot: u32, j: u32, v: Value| {
        let k = at(b, slot, j);
        let s = b.read_local(acc, k);
        let s = b.add(s, v);
        b.write_local(acc, k, s);
    };
    let set = |b: &mut Builder, slot: u32, j: u32, v: Value| {
        let k = at(b, slot, j);
        b.write_local(acc, k, v);
    };
    let get = |b: &mut Builder, slot: u32, j: u32| {
        let k = at(b, slot, j);
        b.read_local(acc, k)
    };
    const T: u32 = 4;
    const LO: u32 = 5;
    const HI: u32 = 6;
    for j in 0..w {
        let zero_f = b.f32(0.0);
        set(b, 0, j, zero_f);
    }
    let first = b.u32(0);
    b.for_range(first, count, 1, |b, i| {
        let xs = load(b, i);
        for (j, &x) in (0..w).zip(&xs) {
            bump(b, 0, j, x);
        }
    });
    let n = b.convert(ScalarType::F32, count);
    for j in 0..w {
        let sum = get(b, 0, j);
        let mean = b.div(sum, n);
        set(b, T, j, mean);
        set(b, LO, j, mean);
        set(b, HI, j, mean);
    }
    for _ in 0..crate::scheme::MSE_ITERATIONS {
        for slot in 0..4 {
            for j in 0..w {
                let z = b.f32(0.0);
                set(b, slot, j, z);
            }
        }
        let first = b.u32(0);
        b.for_range(first, count, 1, |b, i| {
            let xs = load(b, i);
            for (j, &x) in (0..w).zip(&xs) {
                let t = get(b, T, j);
                let upper = b.cmp(CmpOp::Ge, x, t);
                let (z, one) = (b.f32(0.0), b.f32(1.0));
                let below = b.select(upper, z, x);
                bump(b, 0, j, below);
                let counted = b.select(upper, z, one);
                bump(b, 1, j, counted);
                let above = b.select(upper, x, z);
                bump(b, 2, j, above);
                let counted = b.select(upper, one, z);
                bump(b, 3, j, counted);
            }
        });
        for j in 0..w {
            let t = get(b, T, j);
            let z = b.f32(0.0);
            let level = |b: &mut Builder, sum: u32, count: u32| {
                let (s, c) = (get(b, sum, j), get(b, count, j));
                let some = b.cmp(CmpOp::Gt, c, z);
                let mean = b.div(s, c);
                b.select(some, mean, t)
            };
            let lo = level(b, 0, 1);
            let hi = level(b, 2, 3);
            set(b, LO, j, lo);
            set(b, HI, j, hi);
            let two = b.f32(2.0);
            let both = b.add(lo, hi);
            let t = b.div(both, two);
            set(b, T, j, t);
        }
    }
    (0..w)
        .map(|j| {
            let lo = get(b, LO, j);
            let hi = get(b, HI, j);
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
    /// kernel, where a lane's channels share a group; in the channel-group lanes kernel each of
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
        let levels = scheme.bits.max_code();
        if scheme.params != ParamType::F16 || levels > MAX_DIRECT_THRESHOLD_LEVELS {
            return coding;
        }
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
    let i = b.u32(0);
    let v = b.read_local(bad, i);
    let zero = b.u32(0);
    let set = b.cmp(CmpOp::Ne, v, zero);
    flag(b, status, set, STATUS_NON_FINITE);
}

/// Codes with at most this many levels use thresholds ([`code_threshold`]) in the group = all
/// kernels, where a group is long enough that finding them (32 code evaluations per level) costs
/// little.
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

/// The smallest finite f32 whose [`code`] under (zero, scale) is at least `level`, or +inf when
/// none is. Since the code is a monotone step function of x (IEEE subtraction, division by a
/// positive scale, rounding and clamping are all monotone), `code(x) = #{k : x >= t_k}` for the
/// thresholds t_1..t_L, which turns the per-element division into comparisons with exactly the
/// same result. Found by a 32-step bisection over the order keys of the finite floats, with the
/// U32 local `state` (2 elements) holding the bracket.
pub fn code_threshold(
    b: &mut Builder,
    scheme: &Scheme,
    zero: Value,
    scale: Value,
    level: u8,
    state: u32,
) -> Value {
    let (lo_i, hi_i) = (b.u32(0), b.u32(1));
    let lo_key = b.u32(0x0080_0000); // order key of -f32::MAX
    let hi_key = b.u32(0xFF7F_FFFF); // order key of f32::MAX
    b.write_local(state, lo_i, lo_key);
    b.write_local(state, hi_i, hi_key);
    let (first, steps) = (b.u32(0), b.u32(32));
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
