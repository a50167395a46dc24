//! Quantize kernels for axis = channel: a group is one (head, channel) over a run of tokens.

use crate::ir::{Builder, CmpOp, Memory, ReduceOp, ScalarType, Special, Value, WarpOp, WARP_SIZE};
use crate::scheme::{Group, Rule, Scheme};

use super::block_select::{self, select_quantiles};
use super::emit::{
    code, code_from_thresholds, code_threshold, flag, flag_non_finite, flag_noted, global_item,
    group_params, group_params_unflagged, group_range, group_range_local, lanes_of, load_f32,
    mse_ranges, note_condition, note_non_finite, pack_scalar, quantize_params, range_from_extremes,
    reads_group, store_param, to_f32_scalars, token_groups, Coding, MseLocals,
    MAX_THRESHOLD_LEVELS, STATUS_OVERFLOW,
};
use super::thread_tokens::thread_tokens;
use super::{kernel_name, quantize_abi as abi, Launch, Lowered, Schedule, ShapeClass};

pub fn lower(scheme: &Scheme, shape: ShapeClass, s: &Schedule) -> Lowered {
    match scheme.group {
        Group::All => lower_all(scheme, shape, s),
        Group::Size(n) => lower_groups(scheme, shape, s, n.get() as u32),
    }
}

/// Names and sizes shared by both kernels.
struct Plan {
    scheme: Scheme,
    shape: ShapeClass,
    w: u32,
    v: u8,
    columns: u32,
    row_bytes: u32,
    per_byte: u32,
    /// Whether rows are read with aligned vector loads (cooperative schedules: every index is a
    /// multiple of the vector width, and the runtime aligns the input).
    aligned: bool,
}

impl Plan {
    fn new(scheme: &Scheme, shape: ShapeClass, s: &Schedule) -> Plan {
        Plan {
            scheme: *scheme,
            shape,
            w: s.channels,
            v: s.vector,
            columns: shape.head_dim / s.channels,
            row_bytes: shape.head_dim * scheme.bits.width() / 8,
            per_byte: scheme.bits.codes_per_byte() as u32,
            aligned: s.cooperative,
        }
    }

    /// Whether the rule reads the whole group (no extremes to track).
    fn reads_group(&self) -> bool {
        reads_group(self.scheme.rule)
    }

    /// Loads the `w` channels of (head, token) starting at channel `c0`, as f32.
    fn load_row(&self, b: &mut Builder, x: Memory, h: Value, t: Value, c0: Value) -> Vec<Value> {
        let input = self.shape.input.scalar();
        let lanes = self.v;
        self.load_vectors(b, x, [h, t, c0], &|b, v| to_f32_scalars(b, v, lanes, input))
    }

    /// [`Plan::load_row`] in the input's own type.
    fn load_row_raw(
        &self,
        b: &mut Builder,
        x: Memory,
        h: Value,
        t: Value,
        c0: Value,
    ) -> Vec<Value> {
        let lanes = self.v;
        self.load_vectors(b, x, [h, t, c0], &|b, v| lanes_of(b, v, lanes))
    }

    /// The row's `w / v` vector loads, each followed by `each(b, vector)`'s scalars.
    fn load_vectors(
        &self,
        b: &mut Builder,
        x: Memory,
        [h, t, c0]: [Value; 3],
        each: &dyn Fn(&mut Builder, Value) -> Vec<Value>,
    ) -> Vec<Value> {
        let tokens = b.param(abi::TOKENS);
        let d = b.u32(self.shape.head_dim);
        let ht = b.mul(h, tokens);
        let row = b.add(ht, t);
        let row_start = b.mul(row, d);
        let base = b.add(row_start, c0);
        let mut out = Vec::with_capacity(self.w as usize);
        for j in 0..self.w / self.v as u32 {
            let off = b.u32(j * self.v as u32);
            let idx = b.add(base, off);
            let v = match self.aligned {
                true => b.load_aligned(x, idx, self.v),
                false => b.load(x, idx, self.v),
            };
            out.extend(each(b, v));
        }
        out
    }

    /// Folds one row of values into the min/max locals and the non-finite flag.
    fn accumulate(&self, b: &mut Builder, values: &[Value], min: u32, max: u32, bad: u32) {
        let track_extremes = !self.reads_group();
        for (i, &x) in values.iter().enumerate() {
            note_non_finite(b, bad, x);
            if track_extremes {
                let idx = b.u32(i as u32);
                let m = b.read_local(min, idx);
                let m = b.min(m, x);
                b.write_local(min, idx, m);
                let mx = b.read_local(max, idx);
                let mx = b.max(mx, x);
                b.write_local(max, idx, mx);
            }
        }
    }

    fn init_locals(&self, b: &mut Builder, min: u32, max: u32, bad: u32) {
        if !self.reads_group() {
            let inf = b.f32(f32::INFINITY);
            let ninf = b.f32(f32::NEG_INFINITY);
            for i in 0..self.w {
                let idx = b.u32(i);
                b.write_local(min, idx, inf);
                b.write_local(max, idx, ninf);
            }
        }
        let zero = b.u32(0);
        b.write_local(bad, zero, zero);
    }

    /// Codes one row of `w` channels, one [`Coder`] per channel, and stores its bytes.
    fn code_row(
        &self,
        b: &mut Builder,
        [x, codes]: [Memory; 2],
        h: Value,
        t: Value,
        c0: Value,
        coders: &[Coder],
    ) {
        let values = self.load_row(b, x, h, t, c0);
        let [_, base] = self.code_base(b, [h, t, c0]);
        for k in 0..self.w / self.per_byte {
            let lane_codes: Vec<Value> = (0..self.per_byte)
                .map(|l| {
                    let ch = (k * self.per_byte + l) as usize;
                    match &coders[ch] {
                        Coder::Divide { zero, scale } => {
                            code(b, &self.scheme, values[ch], *zero, *scale)
                        }
                        Coder::Thresholds { thresholds } => {
                            code_from_thresholds(b, values[ch], thresholds)
                        }
                    }
                })
                .collect();
            let byte = b.pack_bits(lane_codes, self.scheme.bits, self.scheme.order);
            let off = b.u32(k);
            let idx = b.add(base, off);
            b.store(codes, idx, byte);
        }
    }

    /// The row index of (head `h`, token `t`) and the index of its first code byte of the
    /// column at channel `c0`.
    fn code_base(&self, b: &mut Builder, [h, t, c0]: [Value; 3]) -> [Value; 2] {
        let tokens = b.param(abi::TOKENS);
        let ht = b.mul(h, tokens);
        let row = b.add(ht, t);
        let rb = b.u32(self.row_bytes);
        let row_start = b.mul(row, rb);
        let per = b.u32(self.per_byte);
        let col_byte = b.div(c0, per);
        [row, b.add(row_start, col_byte)]
    }

    /// Channel `ch`'s thresholds `t_1..t_L` (over `x - zero`, [`Coding::per_group`]'s) in the
    /// local `local`: level `k`'s of the column's `w` channels at `(k - 1) * w`.
    fn channel_thresholds(&self, b: &mut Builder, local: u32, ch: Value) -> Vec<Value> {
        (0..u32::from(self.scheme.bits.max_code()))
            .map(|k| {
                let base = b.u32(k * self.w);
                let at = b.add(base, ch);
                b.read_local(local, at)
            })
            .collect()
    }

    /// Codes one row of `w` channels as a loop over its bytes, each channel's zero and scale
    /// read from the locals `zero_l` and `scale_l` (`w` elements each), or its zero and the
    /// thresholds over `x - zero` in `thresholds` ([`Plan::channel_thresholds`]), from scalar loads, the
    /// byte packed by [`pack_scalar`]: a CPU's loop vectorizer codes many bytes of the row at
    /// once (straight-line code with `PackBits` vectorized within a byte only).
    fn code_row_loop(
        &self,
        b: &mut Builder,
        [x, codes]: [Memory; 2],
        [h, t, c0]: [Value; 3],
        [zero_l, scale_l]: [u32; 2],
        thresholds: Option<u32>,
    ) {
        let [row, code_base] = self.code_base(b, [h, t, c0]);
        let d = b.u32(self.shape.head_dim);
        let row_start = b.mul(row, d);
        let first = b.add(row_start, c0);
        let zero = b.u32(0);
        let end = b.u32(self.w / self.per_byte);
        b.for_range(zero, end, 1, |b, k| {
            let per = b.u32(self.per_byte);
            let ch0 = b.mul(k, per);
            let lane_codes: Vec<Value> = (0..self.per_byte)
                .map(|l| {
                    let lv = b.u32(l);
                    let ch = b.add(ch0, lv);
                    let at = b.add(first, ch);
                    let v = load_f32(b, x, at, 1, self.shape.input.scalar())[0];
                    let z = b.read_local(zero_l, ch);
                    match thresholds {
                        Some(local) => {
                            let d = b.sub(v, z);
                            let ts = self.channel_thresholds(b, local, ch);
                            code_from_thresholds(b, d, &ts)
                        }
                        None => {
                            let sc = b.read_local(scale_l, ch);
                            Coding::new(b, z, sc).code(b, &self.scheme, v)
                        }
                    }
                })
                .collect();
            let byte = pack_scalar(b, &lane_codes, self.scheme.bits, self.scheme.order);
            let idx = b.add(code_base, k);
            b.store(codes, idx, byte);
        });
    }
}

/// [lo, hi] of a rule that reads the whole group: channel `ch` of `count` rows from row `row`.
fn column_range(
    b: &mut Builder,
    scheme: &Scheme,
    shape: ShapeClass,
    (x, range_local): (Memory, Option<MseLocals>),
    [row, ch, count]: [Value; 3],
) -> (Value, Value) {
    let d = b.u32(shape.head_dim);
    let start = b.mul(row, d);
    let base = b.add(start, ch);
    let input = shape.input.scalar();
    group_range(b, scheme.rule, x, input, [base, d, count], range_local)
}

/// How the code pass computes one channel's codes; both give the same codes.
#[derive(Debug, Clone)]
enum Coder {
    /// `clamp(round((x - zero) / scale), 0, L)`, one division per element.
    Divide { zero: Value, scale: Value },
    /// `#{k : x >= t_k}` against the channel's precomputed thresholds.
    Thresholds { thresholds: Vec<Value> },
}

/// Bytes of shared memory the quantize kernel of `scheme` under `s` declares: the group = all
/// kernel's arrays below (per-thread partial extremes unless the rule reads the whole group,
/// thresholds for narrow codes or each column's zero and scale); the other kernels declare none.
pub fn shared_bytes(scheme: &Scheme, s: &Schedule) -> u64 {
    if scheme.axis != crate::scheme::Axis::Channel || scheme.group != Group::All {
        return 0;
    }
    let (bsz, w) = (u64::from(s.block_size), u64::from(s.channels));
    let partials = if reads_group(scheme.rule) {
        0
    } else if warp_reduced(scheme, s) {
        2 * (bsz / u64::from(WARP_SIZE)) * w
    } else {
        2 * bsz * w
    };
    let levels = scheme.bits.max_code();
    // Thresholds, or each column's zero and scale.
    let coding = if levels <= MAX_THRESHOLD_LEVELS {
        w * u64::from(levels)
    } else {
        2 * w
    };
    let selection = match block_selected(scheme, s) {
        Some(_) => block_select::shared_bytes(s.block_size, s.channels),
        None => 0,
    };
    4 * (partials + coding) + selection
}

/// The quantile rule's level when the group = all kernel of a cooperative schedule selects its
/// order statistics with the whole block ([`block_select`]) instead of one thread per channel.
fn block_selected(scheme: &Scheme, s: &Schedule) -> Option<f64> {
    match scheme.rule {
        Rule::Quantile(p) if s.cooperative && s.block_size % WARP_SIZE == 0 => Some(p.get()),
        _ => None,
    }
}

/// Whether the group = all kernel of a cooperative schedule combines the threads' extremes by
/// warp reductions (min/max rules; a block of whole warps) instead of one partial per thread.
fn warp_reduced(scheme: &Scheme, s: &Schedule) -> bool {
    s.cooperative && !reads_group(scheme.rule) && s.block_size % WARP_SIZE == 0
}

/// group = all: one block per (head, column); threads split the tokens.
///
/// Cooperative schedules with a min/max rule combine the threads' extremes by two warp
/// reductions (each warp's, then the warps' partials from shared memory), so that every thread
/// ends with the column's extremes; min and max are order-free here (the sign of a zero extreme
/// is normalised, non-finite input is flagged), so the codes are the per-thread kernel's.
fn lower_all(scheme: &Scheme, shape: ShapeClass, s: &Schedule) -> Lowered {
    let p = Plan::new(scheme, shape, s);
    let bsz = s.block_size;
    let warp_reduce = warp_reduced(scheme, s);
    let selected = block_selected(scheme, s);
    let name = match (warp_reduce, selected) {
        (true, _) => kernel_name("quantize_warps", scheme, shape),
        (false, Some(_)) => kernel_name("quantize_select", scheme, shape),
        (false, None) => kernel_name("quantize", scheme, shape),
    };
    let mut b = Builder::new(&name, bsz);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    // Partial extremes per thread, or per warp (not needed by rules that read the whole group).
    let slots = match warp_reduce {
        true => bsz / WARP_SIZE,
        false => bsz,
    };
    let partials = (!p.reads_group()).then(|| {
        (
            b.shared("part_min", ScalarType::F32, slots * p.w),
            b.shared("part_max", ScalarType::F32, slots * p.w),
        )
    });
    let levels = scheme.bits.max_code();
    // Per channel of the column: its thresholds, or its zero and scale for codes by division.
    let (thresholds, divide_s) = match levels <= MAX_THRESHOLD_LEVELS {
        true => (
            Some(b.shared("thresholds", ScalarType::F32, p.w * levels as u32)),
            None,
        ),
        false => (
            None,
            Some((
                b.shared("zero", ScalarType::F32, p.w),
                b.shared("scale", ScalarType::F32, p.w),
            )),
        ),
    };
    let (min, max) = match partials {
        Some(_) => (
            b.local("min", ScalarType::F32, p.w),
            b.local("max", ScalarType::F32, p.w),
        ),
        None => (0, 0),
    };
    let bad = b.local("bad", ScalarType::U32, 1);
    let acc = b.local("acc", ScalarType::F32, 2);
    // mse with one thread per block (host schedules): all the column's channels in one pass
    // over its rows per round (`mse_ranges`); else one channel at a time (`group_range`).
    let mse_together = scheme.rule == Rule::Mse && bsz == 1;
    let range_local = match mse_together {
        true => None,
        false => group_range_local(&mut b, scheme.rule),
    };
    let mse_locals = mse_together.then(|| {
        let acc = MseLocals::new(&mut b, p.w);
        let lo = b.local("mse_lo", ScalarType::F32, p.w);
        let hi = b.local("mse_hi", ScalarType::F32, p.w);
        (acc, [lo, hi])
    });
    let bisect = b.local("bisect", ScalarType::U32, 2);
    // Host schedules: the block's threads find their channels' thresholds one after another.
    let one_by_one = bsz == 1 || s.contiguous;

    let coords = |b: &mut Builder| {
        let tid = b.special(Special::ThreadId);
        let blk = b.special(Special::BlockId);
        let cols = b.u32(p.columns);
        let h = b.div(blk, cols);
        let col = b.rem(blk, cols);
        let w = b.u32(p.w);
        let c0 = b.mul(col, w);
        (tid, h, c0)
    };

    // Region 1: partial statistics of this thread's tokens.
    let (tid, h, c0) = coords(&mut b);
    p.init_locals(&mut b, min, max, bad);
    let mine = thread_tokens(&mut b, tid, bsz, s.contiguous);
    b.for_range(mine.start, mine.end, mine.step, |b, t| {
        let values = p.load_row(b, x, h, t, c0);
        p.accumulate(b, &values, min, max, bad);
    });
    flag_non_finite(&mut b, bad, status);
    if let (Some((part_min, part_max)), true) = (partials, warp_reduce) {
        warp_extremes(&mut b, &p, [min, max], [part_min, part_max], bsz);
    } else if let Some((part_min, part_max)) = partials {
        let w = b.u32(p.w);
        let slot = b.mul(tid, w);
        for i in 0..p.w {
            let idx = b.u32(i);
            let at = b.add(slot, idx);
            let m = b.read_local(min, idx);
            b.store(part_min, at, m);
            let mx = b.read_local(max, idx);
            b.store(part_max, at, mx);
        }
    }
    b.barrier();

    // The quantile rule's ranges, selected by the whole block (every thread ends with them).
    let ranges = selected.map(|level| {
        let (_, h, c0) = coords(&mut b);
        let load_row = |b: &mut Builder, t: Value| p.load_row_raw(b, x, h, t, c0);
        select_quantiles(
            &mut b,
            shape.input,
            [p.w, bsz],
            s.contiguous,
            level,
            &load_row,
        )
    });
    let ranges = ranges.or_else(|| {
        let (acc, out) = mse_locals?;
        let (_, h, c0) = coords(&mut b);
        let tokens = b.param(abi::TOKENS);
        let load_row = |b: &mut Builder, t: Value| p.load_row(b, x, h, t, c0);
        let found = mse_ranges(&mut b, &load_row, tokens, acc);
        for (j, (lo, hi)) in (0..p.w).zip(found) {
            let at = b.u32(j);
            b.write_local(out[0], at, lo);
            b.write_local(out[1], at, hi);
        }
        Some(out)
    });

    // Region 2: the range and parameters of each channel of the column.
    let (tid, h, c0) = coords(&mut b);
    let w = b.u32(p.w);
    b.for_range(tid, w, bsz, |b, i| {
        let (lo, hi) = match (partials, ranges) {
            (None, Some([q_lo, q_hi])) => (read_at(b, q_lo, i, p.w), read_at(b, q_hi, i, p.w)),
            // `partials` is None exactly when the rule reads the whole group.
            (None, None) => {
                let tokens = b.param(abi::TOKENS);
                let ht = b.mul(h, tokens);
                let ch = b.add(c0, i);
                column_range(b, scheme, shape, (x, range_local), [ht, ch, tokens])
            }
            // Every thread holds the column's extremes after the warp reductions.
            (Some(_), _) if warp_reduce => {
                let mn = read_at(b, min, i, p.w);
                let mx = read_at(b, max, i, p.w);
                range_from_extremes(b, scheme.rule, mn, mx)
            }
            (Some((part_min, part_max)), _) => {
                let (lo0, hi0) = (b.load(part_min, i, 1), b.load(part_max, i, 1));
                let (z0, z1) = (b.u32(0), b.u32(1));
                b.write_local(acc, z0, lo0);
                b.write_local(acc, z1, hi0);
                let one = b.u32(1);
                let threads = b.u32(bsz);
                b.for_range(one, threads, 1, |b, s| {
                    let w = b.u32(p.w);
                    let sw = b.mul(s, w);
                    let at = b.add(sw, i);
                    let (z0, z1) = (b.u32(0), b.u32(1));
                    let m = b.load(part_min, at, 1);
                    let cur = b.read_local(acc, z0);
                    let m = b.min(cur, m);
                    b.write_local(acc, z0, m);
                    let mx = b.load(part_max, at, 1);
                    let cur = b.read_local(acc, z1);
                    let mx = b.max(cur, mx);
                    b.write_local(acc, z1, mx);
                });
                let mn = b.read_local(acc, z0);
                let mx = b.read_local(acc, z1);
                range_from_extremes(b, scheme.rule, mn, mx)
            }
        };
        let (z, sc) = group_params(b, scheme, lo, hi, status);
        let d = b.u32(shape.head_dim);
        let hd = b.mul(h, d);
        let ch = b.add(c0, i);
        let at = b.add(hd, ch);
        store_param(b, zero_m, at, z, scheme.params);
        store_param(b, scale_m, at, sc, scheme.params);
        if let Some((zero_s, scale_s)) = divide_s {
            b.store(zero_s, i, z);
            b.store(scale_s, i, sc);
        }
        if let Some(thr) = thresholds {
            let lv = b.u32(levels as u32);
            let first = b.mul(i, lv);
            for level in 1..=levels {
                let t = code_threshold(b, scheme, [z, sc], level, bisect, one_by_one);
                let off = b.u32(level as u32 - 1);
                let at = b.add(first, off);
                b.store(thr, at, t);
            }
        }
    });
    b.barrier();

    // Region 3: codes of this thread's tokens.
    let (tid, h, c0) = coords(&mut b);
    let coders: Vec<Coder> = (0..p.w)
        .map(|i| {
            let idx = b.u32(i);
            match divide_s {
                Some((zero_s, scale_s)) => Coder::Divide {
                    zero: b.load(zero_s, idx, 1),
                    scale: b.load(scale_s, idx, 1),
                },
                None => Coder::Thresholds {
                    thresholds: thresholds
                        .iter()
                        .flat_map(|&thr| {
                            (0..levels as u32).map(move |k| (thr, i * levels as u32 + k))
                        })
                        .map(|(thr, k)| {
                            let at = b.u32(k);
                            b.load(thr, at, 1)
                        })
                        .collect(),
                },
            }
        })
        .collect();
    let mine = thread_tokens(&mut b, tid, bsz, s.contiguous);
    b.for_range(mine.start, mine.end, mine.step, |b, t| {
        p.code_row(b, [x, codes], h, t, c0, &coders);
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::BlockPerColumn { columns: p.columns },
    }
}

/// group = N: one thread per (head, column, token group).
fn lower_groups(scheme: &Scheme, shape: ShapeClass, s: &Schedule, n: u32) -> Lowered {
    let p = Plan::new(scheme, shape, s);
    let bsz = s.block_size;
    let mut b = Builder::new(&kernel_name("quantize", scheme, shape), bsz);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    let (min, max) = if p.reads_group() {
        (0, 0)
    } else {
        (
            b.local("min", ScalarType::F32, p.w),
            b.local("max", ScalarType::F32, p.w),
        )
    };
    let bad = b.local("bad", ScalarType::U32, 1);
    let zero_l = b.local("zero", ScalarType::F32, p.w);
    let scale_l = b.local("scale", ScalarType::F32, p.w);
    let range_local = group_range_local(&mut b, scheme.rule);
    // Whether any channel's parameters overflow (host: the parameters' loop below).
    let overflow = (bsz == 1 && !p.reads_group()).then(|| b.local("overflow", ScalarType::U32, 1));
    // Each channel's thresholds where its codes come from comparisons (host: computed in the
    // parameters' loop, so a group's divisions are per channel instead of per element).
    let thresholds = (overflow.is_some() && Coding::compares(scheme)).then(|| {
        let levels = u32::from(scheme.bits.max_code());
        b.local("thresholds", ScalarType::F32, levels * p.w)
    });

    let item = global_item(&mut b, bsz);
    let heads = b.param(abi::HEADS);
    let tokens = b.param(abi::TOKENS);
    let nv = b.u32(n);
    let groups = token_groups(&mut b, n);
    let cols = b.u32(p.columns);
    let per_head = b.mul(cols, groups);
    let total = b.mul(heads, per_head);
    let in_range = b.cmp(CmpOp::Lt, item, total);
    b.if_then(in_range, |b| {
        let col = b.rem(item, cols);
        let rest = b.div(item, cols);
        let g = b.rem(rest, groups);
        let h = b.div(rest, groups);
        let w = b.u32(p.w);
        let c0 = b.mul(col, w);
        let t0 = b.mul(g, nv);
        let t_end = b.add(t0, nv);
        let t1 = b.min(t_end, tokens);
        let count = b.sub(t1, t0);

        p.init_locals(b, min, max, bad);
        b.for_range(t0, t1, 1, |b, t| {
            let values = p.load_row(b, x, h, t, c0);
            p.accumulate(b, &values, min, max, bad);
        });
        flag_non_finite(b, bad, status);

        let d = b.u32(shape.head_dim);
        let hg = b.mul(h, groups);
        let hgg = b.add(hg, g);
        let param_row = b.mul(hgg, d);
        let param_base = b.add(param_row, c0);
        // Channel `iv`'s (zero, scale) and whether they overflow.
        let params_of = |b: &mut Builder, iv: Value| {
            let (lo, hi) = match p.reads_group() {
                true => {
                    let ht = b.mul(h, tokens);
                    let row = b.add(ht, t0);
                    let ch = b.add(c0, iv);
                    column_range(b, scheme, shape, (x, range_local), [row, ch, count])
                }
                false => {
                    let mn = b.read_local(min, iv);
                    let mx = b.read_local(max, iv);
                    range_from_extremes(b, scheme.rule, mn, mx)
                }
            };
            group_params_unflagged(b, scheme, lo, hi)
        };
        // Stores channel `iv`'s parameters and keeps them for the code pass.
        let keep = |b: &mut Builder, iv: Value, z: Value, sc: Value| {
            let at = b.add(param_base, iv);
            store_param(b, zero_m, at, z, scheme.params);
            store_param(b, scale_m, at, sc, scheme.params);
            b.write_local(zero_l, iv, z);
            b.write_local(scale_l, iv, sc);
        };
        match overflow {
            // A thread per block (host): a loop over the column's channels, which a CPU's
            // loop vectorizer widens (the locals and the parameter row are consecutive, the
            // overflows one OR), then one flag; unrolled, each channel's scalar code and
            // its flag's branch took a third of the 2-bit, group = 32 kernel's time.
            Some(any) => {
                let (at, no) = (b.u32(0), b.u32(0));
                b.write_local(any, at, no);
                let (first, w) = (b.u32(0), b.u32(p.w));
                b.for_range(first, w, 1, |b, iv| {
                    let (z, sc, over) = params_of(b, iv);
                    keep(b, iv, z, sc);
                    if let Some(local) = thresholds {
                        let coding = Coding::per_group(b, scheme, z, sc);
                        for (k, &t) in (0u32..).zip(coding.thresholds().unwrap_or_default()) {
                            let base = b.u32(k * p.w);
                            let at = b.add(base, iv);
                            b.write_local(local, at, t);
                        }
                    }
                    note_condition(b, any, over);
                });
                flag_noted(b, status, any, STATUS_OVERFLOW);
            }
            // Else unrolled: a GPU thread keeps `min`, `max` in registers (constant indices).
            None => {
                for i in 0..p.w {
                    let iv = b.u32(i);
                    let (z, sc, over) = params_of(b, iv);
                    flag(b, status, over, STATUS_OVERFLOW);
                    keep(b, iv, z, sc);
                }
            }
        }
        b.for_range(t0, t1, 1, |b, t| {
            p.code_row_loop(b, [x, codes], [h, t, c0], [zero_l, scale_l], thresholds);
        });
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::ThreadPerGroup {
            columns: p.columns,
            group: n,
        },
    }
}

/// The column's extremes in every thread's `min`/`max` locals: each warp reduces its lanes'
/// extremes, its lane 0 writes them to `part_*[warp * w + i]`, and after a barrier every warp
/// reduces the warps' partials (lanes past the last warp contribute +inf / -inf).
fn warp_extremes(b: &mut Builder, p: &Plan, [min, max]: [u32; 2], parts: [Memory; 2], bsz: u32) {
    reduce_extremes(b, [min, max]);
    let lane = b.special(Special::LaneId);
    let zero = b.u32(0);
    let first = b.cmp(CmpOp::Eq, lane, zero);
    b.if_then(first, |b| {
        let warp = b.special(Special::WarpId);
        let w = b.u32(p.w);
        let slot = b.mul(warp, w);
        for i in 0..p.w {
            let idx = b.u32(i);
            let at = b.add(slot, idx);
            for (local, part) in [min, max].into_iter().zip(parts) {
                let v = b.read_local(local, idx);
                b.store(part, at, v);
            }
        }
    });
    b.barrier();
    let lane = b.special(Special::LaneId);
    let warps = b.u32(bsz / WARP_SIZE);
    let has = b.cmp(CmpOp::Lt, lane, warps);
    let inf = b.f32(f32::INFINITY);
    let ninf = b.f32(f32::NEG_INFINITY);
    let w = b.u32(p.w);
    let slot = b.mul(lane, w);
    for i in 0..p.w {
        let idx = b.u32(i);
        for (local, part, neutral) in [(min, parts[0], inf), (max, parts[1], ninf)] {
            b.write_local(local, idx, neutral);
            b.if_then(has, |b| {
                let idx = b.u32(i);
                let at = b.add(slot, idx);
                let v = b.load(part, at, 1);
                b.write_local(local, idx, v);
            });
        }
    }
    reduce_extremes(b, [min, max]);
}

/// Element `i` (< `len`) of a local, read at constant indices and picked by selects, so that a
/// GPU keeps the local in registers (a dynamic index would put it in local memory).
fn read_at(b: &mut Builder, local: u32, i: Value, len: u32) -> Value {
    let z = b.u32(0);
    let mut picked = b.read_local(local, z);
    for k in 1..len {
        let kv = b.u32(k);
        let x = b.read_local(local, kv);
        let hit = b.cmp(CmpOp::Eq, i, kv);
        picked = b.select(hit, x, picked);
    }
    picked
}

/// Every lane's `min` and `max` locals become their warp's minimum and maximum.
fn reduce_extremes(b: &mut Builder, [min, max]: [u32; 2]) {
    for (op, local) in [(ReduceOp::Min, min), (ReduceOp::Max, max)] {
        b.warp(WarpOp::Reduce { op, local });
    }
}
