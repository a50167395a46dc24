//! The GPU layout of the `stats` and `partial` kernels ([`AttentionLayout::BlockPerItem`]): one
//! block of warps per (chunk, kv head) work item, for pairs whose keys and values are both
//! axis = channel, group = all (CalibQuant's layout) with keys of at most 4 bits.
//!
//! - Setup: the block stages `q / sqrt(d)` of the item's `g` query heads in shared memory; for a
//!   span item it builds one 16-entry table per (query head, key-code nibble) from the
//!   post-scaled query `q' = q scale` (`T[h][p][v] = sum of q'_c code_c(v)` over the channels
//!   of nibble `p`), and every warp sums `bias_h = q . zero` over its lanes.
//! - Logits, lanes over tokens: in each step of the block-uniform tile loop, lane `l` of warp
//!   `w` takes one token; a span token's key row is read with aligned vector loads (16 bytes per
//!   load: one row of 1-bit codes at head_dim 128) and its logit per head is `bias + sum_p
//!   T[h][p][nibble p]` (table reads whose 32 lanes fall in one 16-entry row: no bank
//!   conflicts); a full-precision token's logit is its dot product.
//! - Online softmax per warp and head with warp reductions (max, then the sum of the weights);
//!   the weights go through shared memory to every lane.
//! - `P V`, lanes over channels: lane `l` owns channels `l * d/32 ..`, reads its bits of each
//!   token's value row (or its floats of a full-precision row) and accumulates the raw
//!   `sum_t p_t code_tc`; the value scales and zeros are applied once, at the end (post-scaling:
//!   the weights' sum is the softmax's `l`).
//! - The warps' states are merged through shared memory into the item's `(m, l)` and
//!   accumulator, stored by threads over (head, channel): coalesced.
//!
//! The `stats` kernel runs the same logit code and stores each (item, head)'s raw span-logit
//! minimum and maximum; `partial` recomputes the logits (reading the key codes again) instead of
//! saving them. Outputs follow [`super::partial_abi`], so `combine` is unchanged.

use crate::ir::{
    Access, BinaryOp, Builder, CmpOp, Kernel, Memory, ReduceOp, ScalarType, Special, UnaryOp,
    Value, WarpOp, WARP_SIZE,
};
use crate::lower::emit::param_type;
use crate::reference::pack::bit_shift;
use crate::scheme::{Axis, CacheScheme, Group, Scheme};

use super::keys::{affine, param_f32, times};
use super::{partial_abi as abi, seq_field as f, AttentionSchedule, AttentionShape};

/// Full-precision tokens per fp work item: few, so that the block's copy of their rows (16
/// times the bytes of 1-bit codes at head_dim 128, 32 times at 64) is spread over many blocks.
pub const FP_CHUNK: u32 = 16;

/// Whether the block-per-item kernels handle `scheme` at `shape`, or why not.
pub fn supports(scheme: &CacheScheme, shape: AttentionShape) -> Result<(), String> {
    let channel_all = |s: &Scheme| s.axis == Axis::Channel && s.group == Group::All;
    if !channel_all(&scheme.key) || !channel_all(&scheme.value) || scheme.key.bits.width() > 4 {
        return Err(
            "the block-per-item attention kernels need axis = channel, group = all keys of at \
             most 4 bits and axis = channel, group = all values"
                .into(),
        );
    }
    if shape.head_dim % WARP_SIZE != 0 {
        return Err(format!(
            "the block-per-item attention kernels need a head_dim that is a multiple of 32, not {}",
            shape.head_dim
        ));
    }
    Ok(())
}

/// Which of the two kernels to build.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Stats,
    Partial,
}

/// Fixed sizes of one kernel.
#[derive(Clone, Copy)]
struct Dims {
    d: u32,
    g: u32,
    /// Warps per block.
    warps: u32,
    /// Channels per lane (`d / 32`).
    cpl: u32,
    /// Key code bytes per row, nibbles per row.
    k_row: u32,
    nibbles: u32,
    /// Value code bytes per row.
    v_row: u32,
    /// Tokens of a span chunk and of an fp chunk.
    chunk: u32,
    fp_chunk: u32,
    /// Heads per vector access of the tables and weights (`gv`), and heads padded to whole
    /// vectors (`gp`).
    gv: u32,
    gp: u32,
}

/// Index in the `fields` local of the item's sequence (after the `seqs` row's fields).
const SEQ: u32 = f::COUNT;

/// The `stats` or `partial` kernel in the block-per-item layout.
pub(super) fn lower(
    name: &str,
    scheme: &CacheScheme,
    shape: AttentionShape,
    s: &AttentionSchedule,
    mode: Mode,
) -> Kernel {
    let (key, value) = (&scheme.key, &scheme.value);
    let gv = shape.group.next_power_of_two().min(4);
    let dims = Dims {
        d: shape.head_dim,
        g: shape.group,
        warps: s.block_size / WARP_SIZE,
        cpl: shape.head_dim / WARP_SIZE,
        k_row: shape.head_dim * key.bits.width() / 8,
        nibbles: shape.head_dim * key.bits.width() / 4,
        v_row: shape.head_dim * value.bits.width() / 8,
        chunk: s.chunk,
        fp_chunk: s.fp_chunk(),
        gv,
        gp: shape.group.div_ceil(gv) * gv,
    };
    let Dims { d, g, warps, .. } = dims;
    let mut b = Builder::new(name, s.block_size);
    let stats_access = match mode {
        Mode::Stats => Access::Write,
        Mode::Partial => Access::Read,
    };
    let bufs = Bufs {
        q: b.buffer("q", ScalarType::F32, Access::Read),
        seqs: b.buffer("seqs", ScalarType::U32, Access::Read),
        work_seq: b.buffer("work_seq", ScalarType::U32, Access::Read),
        fp_k: b.buffer("fp_k", ScalarType::F32, Access::Read),
        fp_v: b.buffer("fp_v", ScalarType::F32, Access::Read),
        k: [
            b.buffer("k_codes", ScalarType::U8, Access::Read),
            b.buffer("k_zero", param_type(key.params), Access::Read),
            b.buffer("k_scale", param_type(key.params), Access::Read),
        ],
        v: [
            b.buffer("v_codes", ScalarType::U8, Access::Read),
            b.buffer("v_zero", param_type(value.params), Access::Read),
            b.buffer("v_scale", param_type(value.params), Access::Read),
        ],
        stats: b.buffer("stats", ScalarType::F32, stats_access),
    };
    // Unused here (the logits are recomputed), kept so that both layouts share one ABI.
    b.buffer("span_logits", ScalarType::F32, stats_access);
    let outs = match mode {
        Mode::Partial => Some((
            b.buffer("part_ml", ScalarType::F32, Access::Write),
            b.buffer("part_acc", ScalarType::F32, Access::Write),
        )),
        Mode::Stats => None,
    };
    let kv_heads = b.scalar_param("kv_heads", ScalarType::U32);
    let chunks = b.scalar_param("chunks", ScalarType::U32);
    debug_assert_eq!(bufs.stats, Memory::Param(abi::STATS));
    let sh = Shared {
        qs: b.shared("qs", ScalarType::F32, g * d),
        qk: b.shared("qk", ScalarType::F32, g * d),
        table: b.shared("table", ScalarType::F32, dims.nibbles * 16 * dims.gp),
        vstage: b.shared("vstage", ScalarType::U8, warps * WARP_SIZE * dims.v_row),
        fp_k: b.shared("fp_k_rows", ScalarType::F32, dims.fp_chunk * (d + 1)),
        fp_v: b.shared("fp_v_rows", ScalarType::F32, dims.fp_chunk * d),
        cal: b.shared("cal", ScalarType::F32, 2 * g),
        probs: b.shared("probs", ScalarType::F32, warps * WARP_SIZE * dims.gp),
        ml: b.shared("merge_ml", ScalarType::F32, warps * g * 2),
        acc: b.shared(
            "merge_acc",
            ScalarType::F32,
            match mode {
                Mode::Partial => warps * g * d,
                Mode::Stats => 1,
            },
        ),
    };
    let lc = Locals {
        fields: b.local("fields", ScalarType::U32, f::COUNT + 1),
        s: b.local("s", ScalarType::F32, g),
        red: b.local("red", ScalarType::F32, g),
        ext: b.local("ext", ScalarType::F32, 2 * g),
        bias: b.local("bias", ScalarType::F32, g),
        m: b.local("m", ScalarType::F32, g),
        l: b.local("l", ScalarType::F32, g),
        acc: b.local("acc", ScalarType::F32, g * dims.cpl),
    };
    let kv_heads = b.param(kv_heads);
    let chunks = b.param(chunks);
    let at = Item::new(&mut b, kv_heads, chunks);
    load_fields(&mut b, &at, &bufs, lc.fields);

    // Setup: the scaled query, the key tables and the bias.
    stage_query(&mut b, key, &dims, &at, &bufs, &sh, &lc, s.block_size);
    b.barrier();
    build_tables(&mut b, key, &dims, &at, &sh, &lc, s.block_size);
    key_bias(&mut b, key, &dims, &at, &bufs, &sh, &lc);
    if let (Mode::Partial, Some(dcal)) = (mode, scheme.calibrate) {
        calibration(
            &mut b,
            &dims,
            &at,
            &bufs,
            &sh,
            &lc,
            dcal.get(),
            s.block_size,
        );
    }
    init_state(&mut b, &dims, &lc, mode);
    b.barrier();

    // The tiles: a block-uniform loop, one token per lane per step.
    let z = b.u32(0);
    let cn = b.u32(dims.chunk);
    b.for_range(z, cn, warps * WARP_SIZE, |b, base| {
        stage_fp_rows(b, &dims, &at, &bufs, &sh, &lc, base, mode, s.block_size);
        b.barrier();
        let calibrated = mode == Mode::Partial && scheme.calibrate.is_some();
        logits(b, &dims, &at, &bufs, &sh, &lc, base, calibrated);
        match mode {
            Mode::Stats => fold_extremes(b, &dims, &at, &lc, base),
            Mode::Partial => {
                softmax_step(b, &dims, &at, &sh, &lc, base);
                b.barrier();
                values_step(b, value, &dims, &at, &sh, &lc, base);
                b.barrier();
            }
        }
    });
    match (mode, outs) {
        (Mode::Partial, Some((part_ml, part_acc))) => merge_and_store(
            &mut b,
            value,
            &dims,
            &at,
            &bufs,
            &sh,
            &lc,
            [part_ml, part_acc],
        ),
        _ => store_extremes(&mut b, &dims, &at, &bufs, &sh, &lc),
    }
    b.finish()
}

/// The buffers both kernels read (and `stats`, which `stats` writes).
struct Bufs {
    q: Memory,
    seqs: Memory,
    work_seq: Memory,
    fp_k: Memory,
    fp_v: Memory,
    k: [Memory; 3],
    v: [Memory; 3],
    stats: Memory,
}

/// Shared arrays.
struct Shared {
    /// `q / sqrt(d)`, `[g, d]`, and for a span item `q' = q scale / sqrt(d)`.
    qs: Memory,
    qk: Memory,
    /// Key tables `[nibbles, 16, gp]`: the heads of an entry side by side.
    table: Memory,
    /// Each warp's tokens' value code rows `[warps, 32, v_row]`.
    vstage: Memory,
    /// An fp chunk's key rows `[fp_chunk, d + 1]` (padded: lanes reading one channel of
    /// different rows fall in different banks) and value rows `[fp_chunk, d]`.
    fp_k: Memory,
    fp_v: Memory,
    /// Calibration `[g]` minima then `[g]` factors.
    cal: Memory,
    /// Weights of each warp's tokens `[warps, 32, gp]`.
    probs: Memory,
    /// Each warp's `(m, l)` per head, then its accumulators `[warps, g, d]`.
    ml: Memory,
    acc: Memory,
}

/// Per-thread locals.
struct Locals {
    /// The item's `seqs` row, then its sequence.
    fields: u32,
    /// The lane's token's logits `[g]`, a reduction's operand `[g]`, extremes `[2g]`.
    s: u32,
    red: u32,
    ext: u32,
    /// `q . zero` per head.
    bias: u32,
    /// The warp's softmax state per head, and the lane's accumulators `[g, d / 32]`.
    m: u32,
    l: u32,
    acc: u32,
}

/// The block's work item: uniform values (block id and scalar parameters).
struct Item {
    /// Flat item index (chunk * kv heads + kv head), clamped to the last item.
    item: Value,
    /// Chunk in the batch, kv head, kv heads.
    w: Value,
    h: Value,
    kv_heads: Value,
    /// Whether the block has an item (the grid may be rounded up).
    live: Value,
}

impl Item {
    fn new(b: &mut Builder, kv_heads: Value, chunks: Value) -> Item {
        let blk = b.special(Special::BlockId);
        let items = b.mul(chunks, kv_heads);
        let live = b.cmp(CmpOp::Lt, blk, items);
        let one = b.u32(1);
        let last = b.sub(items, one);
        let item = b.min(blk, last);
        let w = b.div(item, kv_heads);
        let h = b.rem(item, kv_heads);
        Item {
            item,
            w,
            h,
            kv_heads,
            live,
        }
    }
}

fn load_fields(b: &mut Builder, at: &Item, bufs: &Bufs, fields: u32) {
    let seq = b.load(bufs.work_seq, at.w, 1);
    let sv = b.u32(SEQ);
    b.write_local(fields, sv, seq);
    let row = times(b, seq, f::COUNT);
    for k in 0..f::COUNT {
        let kv = b.u32(k);
        let i = b.add(row, kv);
        let x = b.load(bufs.seqs, i, 1);
        b.write_local(fields, kv, x);
    }
}

fn field(b: &mut Builder, lc: &Locals, k: u32) -> Value {
    let kv = b.u32(k);
    b.read_local(lc.fields, kv)
}

/// Whether the item is a span chunk, its first token and its end (within the sequence's span
/// or its fp tokens: span chunks have `chunk` tokens, fp chunks [`FP_CHUNK`]).
fn chunk_tokens(b: &mut Builder, dims: &Dims, at: &Item, lc: &Locals) -> [Value; 3] {
    let base = field(b, lc, f::CHUNK_BASE);
    let span_chunks = field(b, lc, f::SPAN_CHUNKS);
    let ci = b.sub(at.w, base);
    let is_span = b.cmp(CmpOp::Lt, ci, span_chunks);
    let fci = b.sub(ci, span_chunks);
    let idx = b.select(is_span, ci, fci);
    let (span_chunk, fp_chunk) = (b.u32(dims.chunk), b.u32(dims.fp_chunk));
    let cn = b.select(is_span, span_chunk, fp_chunk);
    let start = b.mul(idx, cn);
    let span_len = field(b, lc, f::SPAN_LEN);
    let fp_len = field(b, lc, f::FP_LEN);
    let len = b.select(is_span, span_len, fp_len);
    let end = b.add(start, cn);
    let end = b.min(end, len);
    [is_span, start, end]
}

/// `qs[h][c] = q[seq, kv_head * g + h, c] / sqrt(d)` and, for a span item, `qk[h][c] =
/// qs[h][c] scale_c`, threads over (head, channel).
#[allow(clippy::too_many_arguments)]
fn stage_query(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &Bufs,
    sh: &Shared,
    lc: &Locals,
    block: u32,
) {
    let (d, g) = (dims.d, dims.g);
    let seq = field(b, lc, SEQ);
    let heads = b.mul(seq, at.kv_heads);
    let head0 = b.add(heads, at.h);
    let first = times(b, head0, g * d);
    let inv = b.f32(1.0 / (d as f32).sqrt());
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let params = field(b, lc, f::K_PARAMS);
    let prow = affine(b, at.h, d, params);
    let tid = b.special(Special::ThreadId);
    // Four channels per thread and step: one vector load of q (and of the scales).
    let n = b.u32(g * d / 4);
    b.for_range(tid, n, block, |b, e| {
        let e4 = times(b, e, 4);
        let i = b.add(first, e4);
        let q = b.load_aligned(bufs.q, i, 4);
        let qs: Vec<Value> = (0..4)
            .map(|k| {
                let x = b.extract(q, k);
                b.mul(x, inv)
            })
            .collect();
        let v = b.vector(qs.clone());
        b.store_aligned(sh.qs, e4, v);
        b.if_then(is_span, |b| {
            let dv = b.u32(d);
            let c = b.rem(e4, dv);
            let pi = b.add(prow, c);
            let scales = params_f32(b, bufs.k[2], pi, 4, key);
            let qk: Vec<Value> = qs.iter().zip(scales).map(|(&x, s)| b.mul(x, s)).collect();
            let v = b.vector(qk);
            b.store_aligned(sh.qk, e4, v);
        });
    });
}

/// `n` consecutive parameters from `index` (one vector load), as f32.
fn params_f32(b: &mut Builder, mem: Memory, index: Value, n: u32, s: &Scheme) -> Vec<Value> {
    let v = b.load(mem, index, n as u8);
    (0..n)
        .map(|k| {
            let x = if n == 1 { v } else { b.extract(v, k as u8) };
            match param_type(s.params) {
                ScalarType::F32 => x,
                _ => b.convert(ScalarType::F32, x),
            }
        })
        .collect()
}

/// The channels of key nibble `high` (the byte's high or low four bits) with the shift of
/// their code within the nibble.
fn nibble_codes(key: &Scheme, high: bool) -> Vec<(u32, u32)> {
    let per_byte = key.bits.codes_per_byte();
    (0..per_byte)
        .filter_map(|k| {
            let shift = bit_shift(k, key.bits, key.order);
            match (high, shift >= 4) {
                (true, true) => Some((k as u32, shift - 4)),
                (false, false) => Some((k as u32, shift)),
                _ => None,
            }
        })
        .collect()
}

/// For a span item, `table[h][p][v]` = sum over nibble `p`'s channels `c` of `q'_c code_c(v)`,
/// threads over (head, key byte, v): each fills the byte's two nibbles (high: `p = 2j`).
#[allow(clippy::too_many_arguments)]
fn build_tables(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    block: u32,
) {
    let (d, g) = (dims.d, dims.g);
    let per_byte = key.bits.codes_per_byte() as u32;
    let mask = b.u32(key.bits.max_code() as u32);
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        let tid = b.special(Special::ThreadId);
        let n = b.u32(g * dims.k_row * 16);
        b.for_range(tid, n, block, |b, e| {
            let sixteen = b.u32(16);
            let v = b.rem(e, sixteen);
            let hj = b.div(e, sixteen);
            let kr = b.u32(dims.k_row);
            let j = b.rem(hj, kr);
            let h = b.div(hj, kr);
            for high in [true, false] {
                let mut sum: Option<Value> = None;
                for (k, shift) in nibble_codes(key, high) {
                    let kc = b.u32(k);
                    let c = affine(b, j, per_byte, kc);
                    let sv = b.u32(shift);
                    let code = b.binary(BinaryOp::Shr, v, sv);
                    let code = b.binary(BinaryOp::And, code, mask);
                    let code = b.convert(ScalarType::F32, code);
                    let qi = affine(b, h, d, c);
                    let q = b.load(sh.qk, qi, 1);
                    let term = b.mul(q, code);
                    sum = Some(match sum {
                        None => term,
                        Some(acc) => b.add(acc, term),
                    });
                }
                let Some(sum) = sum else { continue };
                // Entry (h, p, v) with p = 2j (high) or 2j + 1.
                let p = times(b, j, 2);
                let p = match high {
                    true => p,
                    false => {
                        let one = b.u32(1);
                        b.add(p, one)
                    }
                };
                let row = affine(b, p, 16, v);
                let to = affine(b, row, dims.gp, h);
                b.store(sh.table, to, sum);
            }
        });
    });
}

/// `bias_h = sum_c qs[h][c] zero_c` for a span item (0 for fp items), summed over each warp's
/// lanes (lane `l` takes channels `l, l + 32, ..`); every thread keeps it in `lc.bias`.
#[allow(clippy::too_many_arguments)]
fn key_bias(
    b: &mut Builder,
    key: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &Bufs,
    sh: &Shared,
    lc: &Locals,
) {
    let (d, g) = (dims.d, dims.g);
    for h in 0..g {
        let hv = b.u32(h);
        let z = b.f32(0.0);
        b.write_local(lc.red, hv, z);
    }
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        let params = field(b, lc, f::K_PARAMS);
        let prow = affine(b, at.h, d, params);
        // Lane `l` takes channels `l * cpl ..`: one vector load of their zeros.
        let lane = b.special(Special::LaneId);
        let c0 = times(b, lane, dims.cpl);
        let pi = b.add(prow, c0);
        let zeros = params_f32(b, bufs.k[1], pi, dims.cpl, key);
        for h in 0..g {
            let hv = b.u32(h);
            let row = affine(b, hv, d, c0);
            let mut acc = b.read_local(lc.red, hv);
            for (k, &zero) in zeros.iter().enumerate() {
                let kv = b.u32(k as u32);
                let qi = b.add(row, kv);
                let q = b.load(sh.qs, qi, 1);
                let term = b.mul(q, zero);
                acc = b.add(acc, term);
            }
            b.write_local(lc.red, hv, acc);
        }
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: lc.red,
    });
    for h in 0..g {
        let hv = b.u32(h);
        let x = b.read_local(lc.red, hv);
        b.write_local(lc.bias, hv, x);
    }
}

/// For a span item, the span's logit extremes per query head from `stats` (every thread folds
/// chunks `tid, tid + block, ..` of the sequence's span, then a block reduction), and the
/// calibration of head `h` in `cal[h]` (the minimum) and `cal[g + h]` (the factor, 1 when the
/// spread is at most `dcal`), SPEC.md section 4.
#[allow(clippy::too_many_arguments)]
fn calibration(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &Bufs,
    sh: &Shared,
    lc: &Locals,
    dcal: f32,
    block: u32,
) {
    let g = dims.g;
    let (inf, ninf) = (b.f32(f32::INFINITY), b.f32(f32::NEG_INFINITY));
    for h in 0..g {
        let (lo, hi) = (b.u32(h), b.u32(g + h));
        b.write_local(lc.ext, lo, inf);
        b.write_local(lc.ext, hi, ninf);
    }
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    b.if_then(is_span, |b| {
        let first = field(b, lc, f::CHUNK_BASE);
        let n = field(b, lc, f::SPAN_CHUNKS);
        let end = b.add(first, n);
        let tid = b.special(Special::ThreadId);
        let start = b.add(first, tid);
        b.for_range(start, end, block, |b, w| {
            let wh = b.mul(w, at.kv_heads);
            let wh = b.add(wh, at.h);
            let row = times(b, wh, 2 * g);
            for h in 0..g {
                let (lo_i, hi_i) = (b.u32(h), b.u32(g + h));
                let off = b.u32(2 * h);
                let i = b.add(row, off);
                let lo = b.load(bufs.stats, i, 1);
                let one = b.u32(1);
                let j = b.add(i, one);
                let hi = b.load(bufs.stats, j, 1);
                let cur = b.read_local(lc.ext, lo_i);
                let cur = b.min(cur, lo);
                b.write_local(lc.ext, lo_i, cur);
                let cur = b.read_local(lc.ext, hi_i);
                let cur = b.max(cur, hi);
                b.write_local(lc.ext, hi_i, cur);
            }
        });
    });
    warp_extremes(b, dims, sh, lc);
    b.barrier();
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let tid = b.special(Special::ThreadId);
    let gn = b.u32(g);
    let head = b.cmp(CmpOp::Lt, tid, gn);
    let go = b.binary(BinaryOp::And, is_span, head);
    b.if_then(go, |b| {
        let (lo, hi) = fold_warp_extremes(b, dims, sh, tid);
        let spread = b.sub(hi, lo);
        let dv = b.f32(dcal);
        let wide = b.cmp(CmpOp::Gt, spread, dv);
        let num = b.sub(spread, dv);
        let factor = b.div(num, spread);
        let one = b.f32(1.0);
        let factor = b.select(wide, factor, one);
        b.store(sh.cal, tid, lo);
        let fi = b.add(tid, gn);
        b.store(sh.cal, fi, factor);
    });
}

/// Reduces the extremes in `lc.ext` (`[g]` minima, then `[g]` maxima) over each warp and has
/// lane 0 store them to `ml[(warp * g + h) * 2 + side]`. A barrier must follow before
/// [`fold_warp_extremes`].
fn warp_extremes(b: &mut Builder, dims: &Dims, sh: &Shared, lc: &Locals) {
    let g = dims.g;
    for (side, op) in [(0, ReduceOp::Min), (1, ReduceOp::Max)] {
        for h in 0..g {
            let (hv, src) = (b.u32(h), b.u32(side * g + h));
            let x = b.read_local(lc.ext, src);
            b.write_local(lc.red, hv, x);
        }
        b.warp(WarpOp::Reduce { op, local: lc.red });
        let warp = b.special(Special::WarpId);
        let wg = times(b, warp, g);
        let lane = b.special(Special::LaneId);
        let zero = b.u32(0);
        let lane0 = b.cmp(CmpOp::Eq, lane, zero);
        b.if_then(lane0, |b| {
            for h in 0..g {
                let hv = b.u32(h);
                let x = b.read_local(lc.red, hv);
                let slot = b.add(wg, hv);
                let i = times(b, slot, 2);
                let sv = b.u32(side);
                let i = b.add(i, sv);
                b.store(sh.ml, i, x);
            }
        });
    }
}

/// Head `h`'s (minimum, maximum) over the warps' entries of [`warp_extremes`].
fn fold_warp_extremes(b: &mut Builder, dims: &Dims, sh: &Shared, h: Value) -> (Value, Value) {
    let g = dims.g;
    let at_w = |b: &mut Builder, w: u32, side: u32| {
        let wg = b.u32(w * g);
        let slot = b.add(wg, h);
        let i = times(b, slot, 2);
        let sv = b.u32(side);
        let i = b.add(i, sv);
        b.load(sh.ml, i, 1)
    };
    let mut lo = at_w(b, 0, 0);
    let mut hi = at_w(b, 0, 1);
    for w in 1..dims.warps {
        let x = at_w(b, w, 0);
        lo = b.min(lo, x);
        let x = at_w(b, w, 1);
        hi = b.max(hi, x);
    }
    (lo, hi)
}

/// Empty softmax state (partial) or extremes (stats).
fn init_state(b: &mut Builder, dims: &Dims, lc: &Locals, mode: Mode) {
    let g = dims.g;
    let (z, inf, ninf) = (b.f32(0.0), b.f32(f32::INFINITY), b.f32(f32::NEG_INFINITY));
    for h in 0..g {
        let (hv, hg) = (b.u32(h), b.u32(g + h));
        match mode {
            Mode::Partial => {
                b.write_local(lc.m, hv, ninf);
                b.write_local(lc.l, hv, z);
            }
            Mode::Stats => {
                b.write_local(lc.ext, hv, inf);
                b.write_local(lc.ext, hg, ninf);
            }
        }
    }
    if mode == Mode::Partial {
        for i in 0..g * dims.cpl {
            let iv = b.u32(i);
            b.write_local(lc.acc, iv, z);
        }
    }
}

/// For an fp item, the block copies the tokens `start + base ..` of its chunk (at most
/// [`FP_CHUNK`]) into `fp_k_rows` and (partial only) `fp_v_rows`, threads over four floats of a
/// row: whole rows per warp request. A barrier must follow.
#[allow(clippy::too_many_arguments)]
fn stage_fp_rows(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &Bufs,
    sh: &Shared,
    lc: &Locals,
    base: Value,
    mode: Mode,
    block: u32,
) {
    let d = dims.d;
    let [is_span, start, end] = chunk_tokens(b, dims, at, lc);
    let no = b.bool(false);
    let is_fp = b.cmp(CmpOp::Eq, is_span, no);
    b.if_then(is_fp, |b| {
        let fp_base = field(b, lc, f::FP_BASE);
        let fp_len = field(b, lc, f::FP_LEN);
        let t0 = b.add(start, base);
        let tid = b.special(Special::ThreadId);
        let n = b.u32(dims.fp_chunk * d / 4);
        b.for_range(tid, n, block, |b, e| {
            let quads = b.u32(d / 4);
            let r = b.div(e, quads);
            let c = b.rem(e, quads);
            let c = times(b, c, 4);
            let t = b.add(t0, r);
            let ok = b.cmp(CmpOp::Lt, t, end);
            b.if_then(ok, |b| {
                let hr = b.mul(at.h, fp_len);
                let tr = b.add(hr, t);
                let row = affine(b, tr, d, fp_base);
                let src = b.add(row, c);
                let k = b.load(bufs.fp_k, src, 4);
                let kr = times(b, r, d + 1);
                let kr = b.add(kr, c);
                for i in 0..4u8 {
                    let x = b.extract(k, i);
                    let off = b.u32(u32::from(i));
                    let to = b.add(kr, off);
                    b.store(sh.fp_k, to, x);
                }
                if mode == Mode::Partial {
                    let v = b.load(bufs.fp_v, src, 4);
                    let vr = affine(b, r, d, c);
                    b.store_aligned(sh.fp_v, vr, v);
                }
            });
        });
    });
}

/// The lane's token at tile offset `base`: (is the item a span chunk, token index, whether the
/// token exists).
fn lane_token(b: &mut Builder, dims: &Dims, at: &Item, lc: &Locals, base: Value) -> [Value; 3] {
    let [is_span, start, end] = chunk_tokens(b, dims, at, lc);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let t = b.add(start, base);
    let t = affine(b, warp, WARP_SIZE, t);
    let t = b.add(t, lane);
    let valid = b.cmp(CmpOp::Lt, t, end);
    [is_span, t, valid]
}

/// The largest power of two up to 16 dividing `bytes`: the vector width of aligned loads of
/// rows of `bytes` bytes.
fn row_vector(bytes: u32) -> u32 {
    let mut a = 16;
    while bytes % a != 0 {
        a /= 2;
    }
    a
}

/// `offset` rounded down to a multiple of `a` (a no-op for the batch plan's offsets, which are
/// whole rows), so that the verifier can prove the alignment of the row loads.
fn aligned_offset(b: &mut Builder, offset: Value, a: u32) -> Value {
    let av = b.u32(a);
    let q = b.div(offset, av);
    b.mul(q, av)
}

/// The lane's token's logits into `lc.s` (-inf for a lane without a token): for a span token
/// from the key tables (calibrated when `calibrated`), for an fp token its dot products.
#[allow(clippy::too_many_arguments)]
fn logits(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &Bufs,
    sh: &Shared,
    lc: &Locals,
    base: Value,
    calibrated: bool,
) {
    let (d, g) = (dims.d, dims.g);
    let ninf = b.f32(f32::NEG_INFINITY);
    for h in 0..g {
        let hv = b.u32(h);
        b.write_local(lc.s, hv, ninf);
    }
    let [is_span, t, valid] = lane_token(b, dims, at, lc, base);
    b.if_then(valid, |b| {
        b.if_else(
            is_span,
            |b| {
                let a = row_vector(dims.k_row);
                let kc = field(b, lc, f::K_CODES);
                let kc = aligned_offset(b, kc, a);
                let span_len = field(b, lc, f::SPAN_LEN);
                let hr = b.mul(at.h, span_len);
                let tr = b.add(hr, t);
                let row = affine(b, tr, dims.k_row, kc);
                let mut s: Vec<Value> = (0..g)
                    .map(|h| {
                        let hv = b.u32(h);
                        b.read_local(lc.bias, hv)
                    })
                    .collect();
                for piece in 0..dims.k_row / a {
                    let off = b.u32(piece * a);
                    let idx = b.add(row, off);
                    let v = b.load_aligned(bufs.k[0], idx, a as u8);
                    for i in 0..a {
                        let byte = if a == 1 { v } else { b.extract(v, i as u8) };
                        let byte = b.convert(ScalarType::U32, byte);
                        let four = b.u32(4);
                        let hi = b.binary(BinaryOp::Shr, byte, four);
                        let fifteen = b.u32(15);
                        let lo = b.binary(BinaryOp::And, byte, fifteen);
                        let j = piece * a + i;
                        for (p, nib) in [(2 * j, hi), (2 * j + 1, lo)] {
                            let row = b.u32(p * 16);
                            let entry = b.add(row, nib);
                            add_heads(b, dims, sh.table, entry, &mut s);
                        }
                    }
                }
                stage_value_row(b, dims, at, bufs, sh, lc, t);
                for (h, x) in s.into_iter().enumerate() {
                    let x = match calibrated {
                        true => {
                            let hv = b.u32(h as u32);
                            let m = b.load(sh.cal, hv, 1);
                            let fi = b.u32(g + h as u32);
                            let fct = b.load(sh.cal, fi, 1);
                            let y = b.sub(x, m);
                            let y = b.mul(y, fct);
                            let y = b.add(m, y);
                            let one = b.f32(1.0);
                            let squeeze = b.cmp(CmpOp::Lt, fct, one);
                            b.select(squeeze, y, x)
                        }
                        false => x,
                    };
                    let hv = b.u32(h as u32);
                    b.write_local(lc.s, hv, x);
                }
            },
            |b| {
                // The token's row of the staged fp chunk: `t - start - base`.
                let warp = b.special(Special::WarpId);
                let lane = b.special(Special::LaneId);
                let r = affine(b, warp, WARP_SIZE, lane);
                let row = times(b, r, d + 1);
                let z = b.f32(0.0);
                for h in 0..g {
                    let hv = b.u32(h);
                    b.write_local(lc.s, hv, z);
                }
                let zero = b.u32(0);
                let dn = b.u32(d);
                b.for_range(zero, dn, 1, |b, c| {
                    let i = b.add(row, c);
                    let k = b.load(sh.fp_k, i, 1);
                    for h in 0..g {
                        let hv = b.u32(h);
                        let qi = affine(b, hv, d, c);
                        let q = b.load(sh.qs, qi, 1);
                        let x = b.mul(q, k);
                        let acc = b.read_local(lc.s, hv);
                        let acc = b.add(acc, x);
                        b.write_local(lc.s, hv, acc);
                    }
                });
            },
        );
    });
}

/// Stats: folds the lane's span logits into its extremes.
fn fold_extremes(b: &mut Builder, dims: &Dims, at: &Item, lc: &Locals, base: Value) {
    let g = dims.g;
    let [_, _, valid] = lane_token(b, dims, at, lc, base);
    let (inf, ninf) = (b.f32(f32::INFINITY), b.f32(f32::NEG_INFINITY));
    for h in 0..g {
        let (hv, hg) = (b.u32(h), b.u32(g + h));
        let s = b.read_local(lc.s, hv);
        let lo_in = b.select(valid, s, inf);
        let hi_in = b.select(valid, s, ninf);
        let lo = b.read_local(lc.ext, hv);
        let lo = b.min(lo, lo_in);
        b.write_local(lc.ext, hv, lo);
        let hi = b.read_local(lc.ext, hg);
        let hi = b.max(hi, hi_in);
        b.write_local(lc.ext, hg, hi);
    }
}

/// One tile of the warp's online softmax: the tile's max over the lanes, the rescaling of the
/// state, the lane's weights (to `probs`) and their sum over the lanes.
fn softmax_step(b: &mut Builder, dims: &Dims, at: &Item, sh: &Shared, lc: &Locals, base: Value) {
    let g = dims.g;
    for h in 0..g {
        let hv = b.u32(h);
        let s = b.read_local(lc.s, hv);
        b.write_local(lc.red, hv, s);
    }
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Max,
        local: lc.red,
    });
    let [_, _, valid] = lane_token(b, dims, at, lc, base);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let slot = affine(b, warp, WARP_SIZE, lane);
    for h in 0..g {
        let hv = b.u32(h);
        let tile_max = b.read_local(lc.red, hv);
        let old = b.read_local(lc.m, hv);
        let new = b.max(old, tile_max);
        let ninf = b.f32(f32::NEG_INFINITY);
        let dead = b.cmp(CmpOp::Eq, new, ninf);
        let diff = b.sub(old, new);
        let corr = b.unary(UnaryOp::Exp, diff);
        let one = b.f32(1.0);
        let corr = b.select(dead, one, corr);
        let l = b.read_local(lc.l, hv);
        let l = b.mul(l, corr);
        b.write_local(lc.l, hv, l);
        b.write_local(lc.m, hv, new);
        for k in 0..dims.cpl {
            let i = b.u32(h * dims.cpl + k);
            let a = b.read_local(lc.acc, i);
            let a = b.mul(a, corr);
            b.write_local(lc.acc, i, a);
        }
        let s = b.read_local(lc.s, hv);
        let x = b.sub(s, new);
        let p = b.unary(UnaryOp::Exp, x);
        let z = b.f32(0.0);
        let p = b.select(valid, p, z);
        b.write_local(lc.red, hv, p);
        let pi = affine(b, slot, dims.gp, hv);
        b.store(sh.probs, pi, p);
    }
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: lc.red,
    });
    for h in 0..g {
        let hv = b.u32(h);
        let sum = b.read_local(lc.red, hv);
        let l = b.read_local(lc.l, hv);
        let l = b.add(l, sum);
        b.write_local(lc.l, hv, l);
    }
}

/// `acc[h][k] += p_h(t) v_t[lane channel k]` over the warp's tile, lanes over channels: raw
/// codes for a span token, floats for an fp token.
#[allow(clippy::too_many_arguments)]
fn values_step(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    sh: &Shared,
    lc: &Locals,
    base: Value,
) {
    let (d, g, cpl) = (dims.d, dims.g, dims.cpl);
    let [is_span, start, end] = chunk_tokens(b, dims, at, lc);
    let warp = b.special(Special::WarpId);
    let t0 = b.add(start, base);
    let t0 = affine(b, warp, WARP_SIZE, t0);
    let z = b.u32(0);
    let n = b.u32(WARP_SIZE);
    b.for_range(z, n, 1, |b, j| {
        let t = b.add(t0, j);
        let ok = b.cmp(CmpOp::Lt, t, end);
        b.if_then(ok, |b| {
            let warp = b.special(Special::WarpId);
            let slot = affine(b, warp, WARP_SIZE, j);
            let mut ps: Vec<Value> = Vec::with_capacity(g as usize);
            for k in 0..dims.gp / dims.gv {
                let off = b.u32(k * dims.gv);
                let pi = affine(b, slot, dims.gp, off);
                let v = b.load_aligned(sh.probs, pi, dims.gv as u8);
                for i in 0..dims.gv {
                    if ps.len() < g as usize {
                        ps.push(if dims.gv == 1 {
                            v
                        } else {
                            b.extract(v, i as u8)
                        });
                    }
                }
            }
            let accumulate = |b: &mut Builder, vals: &[Value]| {
                for (h, &p) in ps.iter().enumerate() {
                    for (k, &v) in vals.iter().enumerate() {
                        let i = b.u32(h as u32 * cpl + k as u32);
                        let a = b.read_local(lc.acc, i);
                        let x = b.mul(p, v);
                        let a = b.add(a, x);
                        b.write_local(lc.acc, i, a);
                    }
                }
            };
            b.if_else(
                is_span,
                |b| {
                    let codes = lane_value_codes(b, value, dims, sh, j);
                    accumulate(b, &codes);
                },
                |b| {
                    let row = times(b, slot, d);
                    let lane = b.special(Special::LaneId);
                    let c0 = affine(b, lane, cpl, row);
                    let vals: Vec<Value> = (0..cpl)
                        .map(|k| {
                            let kv = b.u32(k);
                            let i = b.add(c0, kv);
                            b.load(sh.fp_v, i, 1)
                        })
                        .collect();
                    accumulate(b, &vals);
                },
            );
        });
    });
}

/// For a span token, the lane copies its value code row into the warp's rows of `vstage`
/// (aligned vector loads and stores: one request per warp for 32 rows).
fn stage_value_row(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &Bufs,
    sh: &Shared,
    lc: &Locals,
    t: Value,
) {
    let a = row_vector(dims.v_row);
    let vc = field(b, lc, f::V_CODES);
    let vc = aligned_offset(b, vc, a);
    let span_len = field(b, lc, f::SPAN_LEN);
    let hr = b.mul(at.h, span_len);
    let tr = b.add(hr, t);
    let row = affine(b, tr, dims.v_row, vc);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let slot = affine(b, warp, WARP_SIZE, lane);
    let to = times(b, slot, dims.v_row);
    for piece in 0..dims.v_row / a {
        let off = b.u32(piece * a);
        let from = b.add(row, off);
        let v = b.load_aligned(bufs.v[0], from, a as u8);
        let dst = b.add(to, off);
        b.store_aligned(sh.vstage, dst, v);
    }
}

/// The codes (as f32) of the lane's `d / 32` channels in row `j` of the warp's staged value
/// rows.
fn lane_value_codes(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    sh: &Shared,
    j: Value,
) -> Vec<Value> {
    let cpl = dims.cpl;
    let vb = value.bits.width();
    let per_byte = value.bits.codes_per_byte() as u32;
    let warp = b.special(Special::WarpId);
    let slot = affine(b, warp, WARP_SIZE, j);
    let row = times(b, slot, dims.v_row);
    let lane = b.special(Special::LaneId);
    let lane_bits = cpl * vb;
    if lane_bits >= 8 {
        // The lane owns whole bytes: `nb` of them from byte `lane * nb`.
        let nb = lane_bits / 8;
        let start = affine(b, lane, nb, row);
        let mut out = Vec::with_capacity(cpl as usize);
        for i in 0..nb {
            let off = b.u32(i);
            let idx = b.add(start, off);
            let byte = b.load(sh.vstage, idx, 1);
            for k in 0..per_byte {
                let code = b.unpack_bits(byte, k as u8, value.bits, value.order);
                out.push(b.convert(ScalarType::F32, code));
            }
        }
        return out;
    }
    // Several lanes share a byte: the lane's codes are at positions `(lane % lanes) * cpl + k`.
    let lanes = 8 / lane_bits;
    let lv = b.u32(lanes);
    let bi = b.div(lane, lv);
    let idx = b.add(row, bi);
    let byte = b.load(sh.vstage, idx, 1);
    let byte = b.convert(ScalarType::U32, byte);
    let sub = b.rem(lane, lv);
    let first = times(b, sub, cpl);
    let mask = b.u32(value.bits.max_code() as u32);
    (0..cpl)
        .map(|k| {
            let kv = b.u32(k);
            let pos = b.add(first, kv);
            // bit_shift of position `pos`: msb: 8 - (pos + 1) b; lsb: pos b.
            let shift = match value.order {
                crate::scheme::BitOrder::Msb => {
                    let one = b.u32(1);
                    let p1 = b.add(pos, one);
                    let used = times(b, p1, vb);
                    let eight = b.u32(8);
                    b.sub(eight, used)
                }
                crate::scheme::BitOrder::Lsb => times(b, pos, vb),
            };
            let code = b.binary(BinaryOp::Shr, byte, shift);
            let code = b.binary(BinaryOp::And, code, mask);
            b.convert(ScalarType::F32, code)
        })
        .collect()
}

/// Adds the `g` heads of table entry `entry` (`(nibble position) * 16 + nibble`) to `s`,
/// `gv` heads per aligned vector load.
fn add_heads(b: &mut Builder, dims: &Dims, table: Memory, entry: Value, s: &mut [Value]) {
    let base = times(b, entry, dims.gp);
    for k in 0..dims.gp / dims.gv {
        let off = b.u32(k * dims.gv);
        let idx = b.add(base, off);
        let v = b.load_aligned(table, idx, dims.gv as u8);
        for i in 0..dims.gv {
            let h = (k * dims.gv + i) as usize;
            if let Some(acc) = s.get_mut(h) {
                let x = if dims.gv == 1 {
                    v
                } else {
                    b.extract(v, i as u8)
                };
                *acc = b.add(*acc, x);
            }
        }
    }
}

/// Merges the warps' states through shared memory and stores the item's `(m, l)` and
/// accumulator (post-scaled by the value parameters for a span item), threads over (head,
/// channel).
#[allow(clippy::too_many_arguments)]
fn merge_and_store(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &Bufs,
    sh: &Shared,
    lc: &Locals,
    [part_ml, part_acc]: [Memory; 2],
) {
    let (d, g, cpl, warps) = (dims.d, dims.g, dims.cpl, dims.warps);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let zero = b.u32(0);
    let lane0 = b.cmp(CmpOp::Eq, lane, zero);
    let wg = times(b, warp, g);
    b.if_then(lane0, |b| {
        for h in 0..g {
            let hv = b.u32(h);
            let slot = b.add(wg, hv);
            let mi = times(b, slot, 2);
            let m = b.read_local(lc.m, hv);
            b.store(sh.ml, mi, m);
            let one = b.u32(1);
            let li = b.add(mi, one);
            let l = b.read_local(lc.l, hv);
            b.store(sh.ml, li, l);
        }
    });
    for h in 0..g {
        for k in 0..cpl {
            let hv = b.u32(h);
            let slot = b.add(wg, hv);
            let kv = b.u32(k);
            let c = affine(b, lane, cpl, kv);
            let to = affine(b, slot, d, c);
            let i = b.u32(h * cpl + k);
            let a = b.read_local(lc.acc, i);
            b.store(sh.acc, to, a);
        }
    }
    b.barrier();
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let tid = b.special(Special::ThreadId);
    let n = b.u32(g * d);
    let block = warps * WARP_SIZE;
    b.for_range(tid, n, block, |b, e| {
        let dv = b.u32(d);
        let h = b.div(e, dv);
        let c = b.rem(e, dv);
        let ml_at = |b: &mut Builder, w: u32, k: u32| {
            let wg = b.u32(w * g);
            let slot = b.add(wg, h);
            let i = times(b, slot, 2);
            let kv = b.u32(k);
            let i = b.add(i, kv);
            b.load(sh.ml, i, 1)
        };
        let ms: Vec<Value> = (0..warps).map(|w| ml_at(b, w, 0)).collect();
        let mut top = ms[0];
        for &m in &ms[1..] {
            top = b.max(top, m);
        }
        let ninf = b.f32(f32::NEG_INFINITY);
        let (mut acc, mut l) = (b.f32(0.0), b.f32(0.0));
        for (w, &m) in ms.iter().enumerate() {
            let empty = b.cmp(CmpOp::Eq, m, ninf);
            let diff = b.sub(m, top);
            let fct = b.unary(UnaryOp::Exp, diff);
            let z = b.f32(0.0);
            let fct = b.select(empty, z, fct);
            let lw = ml_at(b, w as u32, 1);
            let x = b.mul(fct, lw);
            l = b.add(l, x);
            let wg = b.u32(w as u32 * g);
            let slot = b.add(wg, h);
            let ai = affine(b, slot, d, c);
            let aw = b.load(sh.acc, ai, 1);
            let x = b.mul(fct, aw);
            acc = b.add(acc, x);
        }
        // Post-scaling, for span items only (an fp item's parameter row may not exist):
        // scale_c * sum p code + zero_c * sum p.
        let r0 = b.u32(0);
        b.write_local(lc.red, r0, acc);
        b.if_then(is_span, |b| {
            let params = field(b, lc, f::V_PARAMS);
            let prow = affine(b, at.h, d, params);
            let pi = b.add(prow, c);
            let zero = param_f32(b, bufs.v[1], pi, value);
            let scale = param_f32(b, bufs.v[2], pi, value);
            let x = b.mul(scale, acc);
            let y = b.mul(zero, l);
            let x = b.add(x, y);
            let r0 = b.u32(0);
            b.write_local(lc.red, r0, x);
        });
        b.if_then(at.live, |b| {
            let ig = times(b, at.item, g);
            let slot = b.add(ig, h);
            let to = affine(b, slot, d, c);
            let r0 = b.u32(0);
            let x = b.read_local(lc.red, r0);
            b.store(part_acc, to, x);
            let z = b.u32(0);
            let first = b.cmp(CmpOp::Eq, c, z);
            b.if_then(first, |b| {
                let mi = times(b, slot, 2);
                b.store(part_ml, mi, top);
                let one = b.u32(1);
                let li = b.add(mi, one);
                b.store(part_ml, li, l);
            });
        });
    });
}

/// Stats: the warps' extremes (warp reductions, then threads `h < g` over the warps) stored as
/// the item's `(min, max)` per head; fp items store nothing.
fn store_extremes(b: &mut Builder, dims: &Dims, at: &Item, bufs: &Bufs, sh: &Shared, lc: &Locals) {
    let g = dims.g;
    warp_extremes(b, dims, sh, lc);
    b.barrier();
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let tid = b.special(Special::ThreadId);
    let gn = b.u32(g);
    let head = b.cmp(CmpOp::Lt, tid, gn);
    let go = b.binary(BinaryOp::And, is_span, head);
    let go = b.binary(BinaryOp::And, go, at.live);
    b.if_then(go, |b| {
        let (lo, hi) = fold_warp_extremes(b, dims, sh, tid);
        let ig = times(b, at.item, g);
        let slot = b.add(ig, tid);
        let i = times(b, slot, 2);
        b.store(bufs.stats, i, lo);
        let one = b.u32(1);
        let j = b.add(i, one);
        b.store(bufs.stats, j, hi);
    });
}
