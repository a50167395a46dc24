//! The GPU layout of the `stats` and `partial` kernels ([`AttentionLayout::BlockPerItem`]): one
//! block of warps per (chunk, kv head) work item, for pairs whose keys are axis = channel,
//! group = all (CalibQuant's layout) of at most 4 bits or axis = channel, group = N with N a
//! multiple of 32 (KIVI's keys: [`group_keys`]) or axis = token ([`token_keys`]), and whose
//! values are axis = channel (group = all, or N a multiple of 32) or axis = token (KIVI's
//! values: a parameter per token and channel group).
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
//!   `sum_t p_t code_tc`; channel-axis value scales and zeros are applied once, at the end
//!   (post-scaling: the weights' sum is the softmax's `l`); token-axis values are dequantized
//!   per token (the lane's channels share one parameter of the row) before the multiply-add.
//!   1-bit channel-axis values at head_dim 128 go through tensor cores instead for groups of up
//!   to 4 query heads ([`mma_values`]: their accumulators are MMA fragments) and through quad
//!   tables past them ([`span_values_quads`]).
//! - The warps' states are merged through shared memory into the item's `(m, l)` and
//!   accumulator, stored by threads over (head, channel): coalesced.
//!
//! The `stats` kernel runs the same logit code and stores each (item, head)'s raw span-logit
//! minimum and maximum; `partial` recomputes the logits (reading the key codes again) instead of
//! saving them. Outputs follow [`super::partial_abi`], so `combine` is unchanged.

use crate::ir::{
    BinaryOp, Builder, CmpOp, Kernel, Memory, ReduceOp, ScalarType, Special, UnaryOp, Value,
    WarpOp, WARP_SIZE,
};
use crate::lower::emit::param_type;
use crate::reference::pack::bit_shift;
use crate::scheme::{Axis, CacheScheme, Group, Scheme};

use super::item_params::{declare_partial, declare_stats, ItemParams};
use super::keys::{affine, calibration_factor, param_f32, times};
use super::{seq_field as f, AttentionSchedule, AttentionShape};

mod group_keys;
mod logits;
mod merge;
mod mma_values;
mod setup;
mod token_keys;
mod values;

use group_keys::*;
use logits::*;
use merge::*;
use mma_values::*;
use setup::*;
use token_keys::*;
use values::*;

/// Full-precision tokens per fp work item: few, so that the block's copy of their rows (16
/// times the bytes of 1-bit codes at head_dim 128, 32 times at 64) is spread over many blocks.
pub const FP_CHUNK: u32 = 16;

/// Entries per nibble position in the key tables: the 16 nibble values and one unused entry, so
/// that consecutive positions start `gp` banks apart and the threads that fill them (over
/// position and head) store to distinct banks.
const TABLE_ROW: u32 = 17;

/// Threads of `partial` asked to be resident per SM (`min_blocks_per_sm` = this / block size,
/// or fewer: [`resident_blocks`]): ptxas then keeps a thread's registers within 65,536 / 640 =
/// 102 (96). The calibrated CalibQuant `partial` at group 4 fits 5 blocks of 4 warps in
/// registers and shared memory without spills (31% occupancy; asked for 4 blocks, 128
/// registers, 25%). `stats` is left alone: asked the same, ptxas gave it 86 registers instead
/// of 48.
const RESIDENT_THREADS: u32 = 640;

/// [`RESIDENT_THREADS`] for groups of more than 4 query heads (more per-thread softmax state:
/// at 96 registers ptxas spilled 4-12 bytes at head_dim 64, group 8; 128 as before), and for
/// token-axis keys (their per-token parameters; at 96 registers `tok4` keys spilled at group 1).
const RESIDENT_THREADS_WIDE: u32 = 512;

/// [`RESIDENT_THREADS`] for token-axis keys at groups of more than 4 query heads and for 8-bit
/// token-axis keys, whose logits hold the most values: ptxas spilled 4-44 bytes at 96 and at
/// 128 registers, none at 138-168 (3 blocks of 4 warps).
const RESIDENT_THREADS_WIDEST: u32 = 384;

/// Blocks of `partial` asked to be resident per SM: [`RESIDENT_THREADS`] / `block_size`, but no
/// more than sm_90's shared memory holds blocks of `shared_bytes` (asking for more would only
/// take registers: at group 8, or with token-axis values, a block's 47-79 KB hold 2-4 blocks,
/// and asked for 4 or 5, ptxas spilled). On sm_80 (164 KB) shared memory may hold fewer.
fn resident_blocks(key: &Scheme, dims: &Dims, shared_bytes: u64, block_size: u32) -> u32 {
    let g = dims.g;
    let arch = &crate::gpu_model::params::SM90;
    let unit = u64::from(arch.shared_alloc_unit.value);
    let per_block =
        (shared_bytes + u64::from(arch.reserved_shared_per_block.value)).div_ceil(unit) * unit;
    let by_shared = u64::from(arch.shared_per_sm.value) / per_block.max(1);
    let threads = match (key.axis, key.bits.width(), g > 4) {
        (Axis::Token, 8, _) | (Axis::Token, _, true) => RESIDENT_THREADS_WIDEST,
        (Axis::Token, _, false) | (Axis::Channel, _, true) => RESIDENT_THREADS_WIDE,
        (Axis::Channel, _, false) => RESIDENT_THREADS,
    };
    let by_threads = u64::from(threads / block_size);
    by_threads.min(by_shared).max(1) as u32
}

/// Whether the block-per-item kernels handle `scheme` at `shape`, or why not.
pub fn supports(scheme: &CacheScheme, shape: AttentionShape) -> Result<(), String> {
    let key = &scheme.key;
    let keys_ok = match (key.axis, key.group) {
        (Axis::Channel, Group::All) => key.bits.width() <= 4,
        (Axis::Channel, Group::Size(n)) => n.get() % WARP_SIZE as usize == 0,
        (Axis::Token, _) => true,
    };
    let values_ok = match (scheme.value.axis, scheme.value.group) {
        (Axis::Channel, Group::All) | (Axis::Token, _) => true,
        (Axis::Channel, Group::Size(n)) => n.get() % WARP_SIZE as usize == 0,
    };
    if !keys_ok || !values_ok {
        return Err(
            "the block-per-item attention kernels need keys and values of axis = token or axis \
             = channel with group = all (keys of at most 4 bits) or groups of a multiple of 32 \
             tokens"
                .into(),
        );
    }
    if shape.head_dim % WARP_SIZE != 0 {
        return Err(format!(
            "the block-per-item attention kernels need a head_dim that is a multiple of 32, not {}",
            shape.head_dim
        ));
    }
    // A lane's d / 32 channels must share one parameter of a token-axis value row.
    let cpl = shape.head_dim / WARP_SIZE;
    if let (Axis::Token, Group::Size(n)) = (scheme.value.axis, scheme.value.group) {
        if n.get() as u32 % cpl != 0 {
            return Err(format!(
                "the block-per-item attention kernels need token-axis value groups that are a \
                 multiple of head_dim / 32 = {cpl} channels, not {}",
                n.get()
            ));
        }
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
    /// Tokens of an fp chunk (a span chunk's are the launch's `span_chunk`: [`Item`]).
    fp_chunk: u32,
    /// Heads per vector access of the tables and weights (`gv`), and heads padded to whole
    /// vectors (`gp`).
    gv: u32,
    gp: u32,
    /// How a span token's logits are made from its key codes.
    keys: KeyLayout,
    /// Whether the span's values go through quad tables ([`quad_values`]; their rows are
    /// staged transposed).
    quad_values: bool,
    /// Whether the span's values go through tensor cores ([`uses_mma`]; their rows are staged
    /// in 16-bit pieces: [`stage_value_row_mma`]).
    mma_values: bool,
}

/// The three ways of the block layout to a span token's logits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyLayout {
    /// Axis = channel, group = all: nibble tables of the post-scaled query, built once.
    Tables,
    /// Axis = channel, group = N tokens: a post-scaled query per warp and step
    /// ([`group_keys`]).
    ChannelGroups(u32),
    /// Axis = token, `groups` parameters per row of `width` channels each ([`token_keys`]).
    TokenRows { groups: u32, width: u32 },
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
        fp_chunk: s.fp_chunk(),
        gv,
        gp: shape.group.div_ceil(gv) * gv,
        quad_values: false,
        mma_values: false,
        keys: match (key.axis, key.group) {
            (Axis::Channel, Group::All) => KeyLayout::Tables,
            (Axis::Channel, Group::Size(n)) => KeyLayout::ChannelGroups(n.get() as u32),
            (Axis::Token, Group::All) => KeyLayout::TokenRows {
                groups: 1,
                width: shape.head_dim,
            },
            (Axis::Token, Group::Size(n)) => KeyLayout::TokenRows {
                groups: shape.head_dim / n.get() as u32,
                width: n.get() as u32,
            },
        },
    };
    let mma_values = mode == Mode::Partial && uses_mma(value, dims.d, dims.g);
    let dims = Dims {
        quad_values: quad_values(value, &dims) && !mma_values,
        mma_values,
        ..dims
    };
    let Dims { d, g, warps, .. } = dims;
    let mut b = Builder::new(name, s.block_size);
    // The parameters (shared with the thread layout: one ABI); `span_logits` stays unread here
    // (the logits are recomputed).
    let (bufs, outs) = match mode {
        Mode::Partial => {
            let (params, outputs) = declare_partial(&mut b, scheme, shape.fp);
            (params, Some(outputs))
        }
        Mode::Stats => (declare_stats(&mut b, scheme, shape.fp), None),
    };
    let (kv_heads, chunks, span_chunk) = (bufs.kv_heads, bufs.chunks, bufs.span_chunk);
    let sh = Shared {
        qs: b.shared("qs", ScalarType::F32, g * d),
        qk: b.shared("qk", ScalarType::F32, g * d),
        table: b.shared(
            "table",
            ScalarType::F32,
            match dims.keys {
                KeyLayout::Tables => dims.nibbles * TABLE_ROW * dims.gp,
                _ => 1,
            },
        ),
        qg: b.shared(
            "qg",
            ScalarType::F32,
            match dims.keys {
                KeyLayout::Tables => 1,
                KeyLayout::ChannelGroups(_) => warps * d * dims.gp,
                KeyLayout::TokenRows { .. } => d * dims.gp,
            },
        ),
        qsum: b.shared(
            "qsum",
            ScalarType::F32,
            match dims.keys {
                KeyLayout::TokenRows { groups, .. } => groups * dims.gp,
                _ => 1,
            },
        ),
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
    if mode == Mode::Partial {
        let blocks = resident_blocks(key, &dims, b.shared_bytes(), s.block_size);
        b.min_blocks_per_sm(blocks);
    }
    let lc = Locals {
        fields: b.local("fields", ScalarType::U32, f::COUNT + 1),
        s: b.local("s", ScalarType::F32, g),
        red: b.local("red", ScalarType::F32, g),
        ext: b.local("ext", ScalarType::F32, 2 * g),
        bias: b.local("bias", ScalarType::F32, g),
        m: b.local("m", ScalarType::F32, g),
        l: b.local("l", ScalarType::F32, g),
        acc: b.local("acc", ScalarType::F32, g * dims.cpl),
        entry: b.local("entry", ScalarType::F32, g),
        got: b.local("got", ScalarType::F32, g),
        src_lane: b.local("src_lane", ScalarType::U32, 1),
        nibs: b.local("nibs", ScalarType::U32, 2 * dims.cpl),
        vpar: b.local("vpar", ScalarType::F32, 2 * dims.cpl),
        mma: dims.mma_values.then(|| mma_values::declare(&mut b, &dims)),
    };
    let kv_heads = b.param(kv_heads);
    let chunks = b.param(chunks);
    let span_chunk = b.param(span_chunk);
    let at = Item::new(&mut b, kv_heads, chunks, span_chunk);
    load_fields(&mut b, &at, &bufs, lc.fields);

    // Setup: the query (with the span's calibration folded in), the key tables and the bias.
    stage_query(&mut b, key, &dims, &at, &bufs, &sh, &lc, s.block_size);
    b.barrier();
    let calibrated = match (mode, scheme.calibrate) {
        (Mode::Partial, Some(dcal)) => {
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
            b.barrier();
            fold_calibration(&mut b, key, &dims, &at, &sh, &lc, s.block_size);
            b.barrier();
            true
        }
        _ => false,
    };
    match dims.keys {
        KeyLayout::Tables => {
            build_tables(&mut b, key, &dims, &at, &sh, &lc, s.block_size);
            key_bias(&mut b, key, &dims, &at, &bufs, &sh, &lc, calibrated);
        }
        KeyLayout::ChannelGroups(_) => {}
        KeyLayout::TokenRows { groups, width } => {
            stage_token_query(&mut b, &dims, &sh, groups, width, s.block_size);
            token_bias(&mut b, &dims, &at, &sh, &lc, calibrated);
        }
    }
    init_state(&mut b, &dims, &lc, mode);
    b.barrier();

    // The tiles: a block-uniform loop, one token per lane per step, over a span chunk's
    // `span_chunk` tokens or an fp chunk's `FP_CHUNK` (none in `stats`, which only looks at the
    // span). The bound is uniform: loads of the read-only plan at the block's item. (A chunk's
    // last tokens end early; its lanes past them take no token.)
    let z = b.u32(0);
    let is_span = uniform_is_span(&mut b, &at, &bufs);
    let fp_steps = match mode {
        Mode::Partial => b.u32(dims.fp_chunk),
        Mode::Stats => b.u32(0),
    };
    let cn = b.select(is_span, at.span_chunk, fp_steps);
    b.for_range(z, cn, warps * WARP_SIZE, |b, base| {
        stage_fp_rows(b, &dims, &at, &bufs, &sh, &lc, base, mode, s.block_size);
        if let KeyLayout::ChannelGroups(n) = dims.keys {
            // (The barrier keeps the previous step's logits from reading the new row.)
            b.barrier();
            stage_group_query(b, key, n, &dims, &at, &bufs, &sh, &lc, base, calibrated);
        }
        b.barrier();
        logits(b, key, &dims, &at, &bufs, &sh, &lc, base, mode);
        match mode {
            Mode::Stats => fold_extremes(b, &dims, &at, &lc, base),
            Mode::Partial => {
                softmax_step(b, &dims, &at, &sh, &lc, base);
                b.barrier();
                values_step(b, value, &dims, &at, &bufs, &sh, &lc, base);
                b.barrier();
            }
        }
    });
    match (mode, outs) {
        (Mode::Partial, Some([part_ml, part_acc])) => merge_and_store(
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

/// Shared arrays.
struct Shared {
    /// `q / sqrt(d)`, `[g, d]`, and for a span item `q' = q scale / sqrt(d)`.
    qs: Memory,
    qk: Memory,
    /// Key tables `[nibbles, 16, gp]`: the heads of an entry side by side (group = all keys).
    table: Memory,
    /// Each warp's `q'` of its key parameter row `[warps, d, gp]` (group = N keys), or `qs`
    /// with the heads side by side `[d, gp]` (token-axis keys).
    qg: Memory,
    /// Token-axis keys: `qs` summed over each parameter group's channels `[groups, gp]`.
    qsum: Memory,
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
    /// Quad tables of 1-bit values ([`span_values_quads`]): the lane's entry per head, an
    /// entry received per head, the lane it is received from.
    entry: u32,
    got: u32,
    src_lane: u32,
    /// Per lane channel, the table entry it needs.
    nibs: u32,
    /// Values of group = N: the zeros, then the scales of the lane's channels in the warp's
    /// parameter row of the step.
    vpar: u32,
    /// The tensor-core `P V`'s fragments ([`Dims::mma_values`]).
    mma: Option<MmaLocals>,
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
    /// Tokens per span chunk (the launch's scalar parameter).
    span_chunk: Value,
}

impl Item {
    fn new(b: &mut Builder, kv_heads: Value, chunks: Value, span_chunk: Value) -> Item {
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
            span_chunk,
        }
    }
}

/// Whether the block's item is a span chunk, as a uniform value (loads of the read-only
/// `work_seq` and `seqs` at the item's chunk; [`chunk_tokens`] reads the same from the locals).
fn uniform_is_span(b: &mut Builder, at: &Item, bufs: &ItemParams) -> Value {
    let seq = b.load(bufs.work_seq, at.w, 1);
    let row = times(b, seq, f::COUNT);
    let field = |b: &mut Builder, k: u32| {
        let kv = b.u32(k);
        let i = b.add(row, kv);
        b.load(bufs.seqs, i, 1)
    };
    let base = field(b, f::CHUNK_BASE);
    let span_chunks = field(b, f::SPAN_CHUNKS);
    let ci = b.sub(at.w, base);
    b.cmp(CmpOp::Lt, ci, span_chunks)
}

fn load_fields(b: &mut Builder, at: &Item, bufs: &ItemParams, fields: u32) {
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
/// or its fp tokens: span chunks have `span_chunk` tokens, fp chunks [`FP_CHUNK`]).
fn chunk_tokens(b: &mut Builder, dims: &Dims, at: &Item, lc: &Locals) -> [Value; 3] {
    let base = field(b, lc, f::CHUNK_BASE);
    let span_chunks = field(b, lc, f::SPAN_CHUNKS);
    let ci = b.sub(at.w, base);
    let is_span = b.cmp(CmpOp::Lt, ci, span_chunks);
    let fci = b.sub(ci, span_chunks);
    let idx = b.select(is_span, ci, fci);
    let fp_chunk = b.u32(dims.fp_chunk);
    let cn = b.select(is_span, at.span_chunk, fp_chunk);
    let start = b.mul(idx, cn);
    let span_len = field(b, lc, f::SPAN_LEN);
    let fp_len = field(b, lc, f::FP_LEN);
    let len = b.select(is_span, span_len, fp_len);
    let end = b.add(start, cn);
    let end = b.min(end, len);
    [is_span, start, end]
}
