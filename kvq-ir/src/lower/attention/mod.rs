//! Fused decode attention (SPEC.md section 4) as generated kernels, for a batch of sequences
//! `[fp tokens | quantized span]` (the fp tokens are the prefix and suffix together: softmax does
//! not depend on order, and calibration touches only the span).
//!
//! The work is split over tokens so that long spans fill the machine: each sequence's span and
//! fp tokens are cut into **chunks** of [`AttentionSchedule::span_chunk`] tokens (the schedule's
//! `chunk`, lengthened for long spans by the block layout; the launch passes it to the kernels)
//! and [`AttentionSchedule::fp_chunk`] for fp tokens, and a (chunk, kv head) **work item** covers
//! all `group` query heads of that kv head, so codes are read once per kv head, never copied per
//! query head. Three kernels, launched in this order:
//!
//! | kernel | grid | does |
//! | --- | --- | --- |
//! | `stats` (only with calibration) | work items | the raw span logits of each (item, query head) and their minimum and maximum |
//! | `partial` | work items | the logits of its chunk (with calibration: calibrated with the span's extremes), an online softmax, and `P V`: a running max `m`, sum `l` and accumulator per query head |
//! | `combine` | (sequence, query head) | merges its chunks: `o = sum_i e^(m_i - M) acc_i / sum_i e^(m_i - M) l_i` |
//!
//! Two layouts ([`AttentionLayout`]): a thread per work item (host code; the thread's `stats`
//! saves the logits for `partial`, which works in tiles of [`AttentionSchedule::tile`] tokens), or
//! a block of warps per work item and per (sequence, query head) (GPUs; module `blocks`: lanes over
//! tokens for the logits from nibble tables in shared memory, warp reductions for the softmax,
//! lanes over channels for `P V`; `partial` recomputes the logits instead of reading them).
//!
//! Arithmetic (all f32):
//! - The query is multiplied by `1/sqrt(head_dim)` once.
//! - Keys with axis = channel are post-scaled: `q' = q scale` and `bias = q . zero` per parameter
//!   row, `s_t = q' . code_t + bias`. With `group = all` and at most 4 bits, `q'` is folded into
//!   one 256-entry table per (query head, code byte): `s_t = bias + sum_j T_j[byte_tj]`, head_dim
//!   `* bits / 8` table reads per token instead of head_dim multiply-adds.
//! - Keys with axis = token: `s_t = sum_j scale_tj (q_j . code_tj) + zero_tj sum(q_j)` over the
//!   channel groups `j`, with `sum(q_j)` computed once.
//! - Values with axis = channel are post-scaled: the raw `sum_t p_t code_tc` and `sum_t p_t` are
//!   accumulated per parameter row and folded in as `scale_c * that + zero_c * sum_t p_t`.
//! - Values with axis = token are dequantized by row (`zero + scale code`).
//! - `Exp` is approximate (a few ulp), so results match the reference to float tolerance, not
//!   bit for bit.

mod batch;
mod blocks;
mod combine;
mod item_params;
mod keys;
mod partial;
mod run;
mod sizes;
mod values;

pub use batch::{plan, BatchPlan, SeqExtent};
pub use run::{AttentionArgs, SeqData, WorkLens};

use crate::ir::Kernel;
use crate::reference::quantize::check_shape;
use crate::scheme::{Axis, CacheScheme, Group, Scheme};
use crate::tensor::Shape3;

use super::{scheme_tag, InputType, LowerError};

/// What attention kernels are specialised for: the head dimension, the number of query heads
/// per kv head, and the element type of the full-precision rows. The batch, kv heads and token
/// counts stay runtime values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionShape {
    /// Channels per head.
    pub head_dim: u32,
    /// Query heads per kv head (GQA group).
    pub group: u32,
    /// Element type of the full-precision keys and values (`fp_k`, `fp_v`): f32, or f16 /
    /// bf16 for a cache that stores its prefix and suffix at half the size (widened to f32
    /// exactly on load; everything after is f32 as before).
    pub fp: InputType,
}

/// The knobs of the attention kernels a tuner searches (a bundle's manifest records them: the
/// batch plan of a launch depends on `chunk` and `layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AttentionSchedule {
    /// Threads per block.
    pub block_size: u32,
    /// Tokens per work item: a multiple of `tile`.
    pub chunk: u32,
    /// Tokens per softmax tile: divides every `group = N` of an axis = channel scheme.
    pub tile: u32,
    /// Byte tables for keys and histograms for values where the scheme allows them (axis =
    /// channel, group = all, at most 4 bits): fast on a CPU, but `g * head_dim * bits / 8 * 256`
    /// floats of per-thread memory each, too much for a GPU thread.
    pub tables: bool,
    /// How `stats` and `partial` map work items onto threads.
    pub layout: AttentionLayout,
}

/// How the `stats` and `partial` kernels map work items onto threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum AttentionLayout {
    /// One thread per (chunk, kv head) item (host code; every scheme pair).
    ThreadPerItem,
    /// One block of warps per item: lanes over tokens for the logits, over channels for `P V`
    /// (GPU; axis = channel, group = all keys of at most 4 bits and values, head_dim a
    /// multiple of 32: see [`block_per_item_supports`]).
    BlockPerItem,
}

pub use blocks::supports as block_per_item_supports;

impl AttentionSchedule {
    /// Host code: one thread per block, long chunks (few, large work items per core).
    pub fn host_default(scheme: &CacheScheme) -> AttentionSchedule {
        AttentionSchedule {
            block_size: 1,
            chunk: 4096,
            tile: default_tile(scheme, 64),
            tables: true,
            layout: AttentionLayout::ThreadPerItem,
        }
    }

    /// GPU: many short chunks so that one sequence fills the device; a block of 4 warps per
    /// item where [`block_per_item_supports`] the pair at `shape`, else a thread per item.
    pub fn gpu_default(scheme: &CacheScheme, shape: AttentionShape) -> AttentionSchedule {
        match block_per_item_supports(scheme, shape) {
            Ok(()) => AttentionSchedule {
                block_size: 128,
                chunk: 256,
                tile: default_tile(scheme, 16),
                tables: false,
                layout: AttentionLayout::BlockPerItem,
            },
            Err(_) => AttentionSchedule {
                block_size: 64,
                chunk: 256,
                tile: default_tile(scheme, 16),
                tables: false,
                layout: AttentionLayout::ThreadPerItem,
            },
        }
    }

    /// Tokens per span chunk of a launch over spans of `span_tokens` tokens and `kv_heads` kv
    /// heads: `chunk` on the host; with the block layout, `chunk` doubled (up to
    /// [`MAX_CHUNK_GROWTH`] times it) while the span's blocks stay at least
    /// [`SPAN_BLOCKS_TARGET`], so that a long span gives fewer, longer items (each block's
    /// setup, the query and its key tables, and `combine`'s chunks are paid per item) and a
    /// short one still fills the device.
    pub fn span_chunk(
        &self,
        span_tokens: impl Iterator<Item = usize> + Clone,
        kv_heads: usize,
    ) -> u32 {
        if self.layout == AttentionLayout::ThreadPerItem {
            return self.chunk;
        }
        let blocks = |chunk: u32| {
            span_tokens
                .clone()
                .map(|t| t.div_ceil(chunk as usize).saturating_mul(kv_heads))
                .fold(0usize, usize::saturating_add)
        };
        let mut chunk = self.chunk;
        while chunk < self.chunk.saturating_mul(MAX_CHUNK_GROWTH).min(MAX_CHUNK)
            && blocks(chunk * 2) >= SPAN_BLOCKS_TARGET
        {
            chunk *= 2;
        }
        chunk
    }

    /// Blocks of the `stats` and `partial` kernels for `items` work items.
    pub fn item_blocks(&self, items: u64) -> u64 {
        match self.layout {
            AttentionLayout::ThreadPerItem => items.div_ceil(u64::from(self.block_size)),
            AttentionLayout::BlockPerItem => items,
        }
    }

    /// Tokens of an fp chunk (span chunks have `chunk`): at most 16 (`blocks::FP_CHUNK`) with the
    /// block-per-item layout.
    pub fn fp_chunk(&self) -> u32 {
        match self.layout {
            AttentionLayout::ThreadPerItem => self.chunk,
            AttentionLayout::BlockPerItem => self.chunk.min(blocks::FP_CHUNK),
        }
    }

    /// Elements of the `span_logits` buffer for `slots` (work item, query head) pairs: a chunk's
    /// logits each where `stats` saves them for `partial` (the thread layout, with
    /// calibration), else 1 (the buffer stays in the ABI, unread).
    pub fn saved_logits_len(&self, scheme: &CacheScheme, slots: usize) -> usize {
        match (self.layout, scheme.calibrate) {
            (AttentionLayout::ThreadPerItem, Some(_)) => slots * self.chunk as usize,
            _ => 1,
        }
    }

    /// Blocks of the `combine` kernel for `heads` (sequence, query head) pairs.
    pub fn combine_blocks(&self, heads: u64) -> u64 {
        self.item_blocks(heads)
    }

    /// Checks the schedule against the scheme.
    pub fn check(&self, scheme: &CacheScheme) -> Result<(), LowerError> {
        let bad = |why: String| Err(LowerError::Schedule(why));
        if !(1..=1024).contains(&self.block_size) {
            return bad(format!("block size {} outside 1..=1024", self.block_size));
        }
        if self.layout == AttentionLayout::BlockPerItem && self.block_size % 32 != 0 {
            return bad(format!(
                "block size {} is not whole warps (block-per-item layout)",
                self.block_size
            ));
        }
        if !(1..=256).contains(&self.tile) {
            return bad(format!("tile {} outside 1..=256", self.tile));
        }
        if self.chunk == 0 || self.chunk % self.tile != 0 || self.chunk > MAX_CHUNK {
            return bad(format!(
                "chunk {} must be a multiple of the tile {} up to 2^20",
                self.chunk, self.tile
            ));
        }
        let grouped = channel_group(&scheme.key).or(channel_group(&scheme.value));
        if self.layout == AttentionLayout::BlockPerItem && grouped.is_some() && self.chunk % 32 != 0
        {
            return bad(format!(
                "chunk {} is not a multiple of 32: the block-per-item layout gives a warp's 32 \
                 tokens one parameter row of group = N keys or values",
                self.chunk
            ));
        }
        for s in [&scheme.key, &scheme.value] {
            if let Some(n) = channel_group(s) {
                if n % self.tile != 0 {
                    return bad(format!(
                        "tile {} does not divide the token group {n} of {s}",
                        self.tile
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The most tokens per chunk.
pub const MAX_CHUNK: u32 = 1 << 20;

/// The block layout's span chunk grows to at most this many times the schedule's `chunk`.
pub const MAX_CHUNK_GROWTH: u32 = 4;

/// Span blocks a launch keeps when the block layout lengthens its chunks: about 1.5 waves of an
/// H100 at the `partial` kernel's 5 resident blocks per SM (132 x 5 = 660 a wave). Chosen by
/// `kvq profile` over spans of 4k-64k tokens and batches of 1-16 (predicted times, measured
/// with 4 resident blocks then; see the README).
pub const SPAN_BLOCKS_TARGET: usize = 1024;

/// Tokens per parameter row of an axis = channel scheme with `group = N`.
fn channel_group(s: &Scheme) -> Option<u32> {
    match (s.axis, s.group) {
        (Axis::Channel, Group::Size(n)) => Some(n.get() as u32),
        _ => None,
    }
}

/// The largest power of two up to `max` dividing every channel-axis group size.
fn default_tile(scheme: &CacheScheme, max: u32) -> u32 {
    let mut tile = max;
    for s in [&scheme.key, &scheme.value] {
        if let Some(n) = channel_group(s) {
            while n % tile != 0 {
                tile /= 2;
            }
        }
    }
    tile
}

/// The kernels of one cache scheme, shape and schedule: lowered (`K` = [`Kernel`]), or
/// whatever a backend made of them (its compiled kernels, which launch through the same
/// [`AttentionArgs::launch`] as long as they keep their [`Signature`](crate::ir::Signature)).
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionKernels<K = Kernel> {
    /// The span-logit extremes, present when the scheme calibrates.
    pub stats: Option<K>,
    /// Per (chunk, kv head) softmax partials.
    pub partial: K,
    /// The merge into outputs.
    pub combine: K,
}

impl<K> AttentionKernels<K> {
    /// The kernels in launch order: `stats` (when present), `partial`, `combine`.
    pub fn all(&self) -> impl Iterator<Item = &K> {
        self.stats.iter().chain([&self.partial, &self.combine])
    }

    /// The kernels from `all`'s order: two (`partial`, `combine`) or three (`stats` first);
    /// `None` for any other count.
    pub fn from_launch_order<I: IntoIterator<Item = K>>(all: I) -> Option<AttentionKernels<K>> {
        let mut all: Vec<K> = all.into_iter().collect();
        let combine = all.pop()?;
        let partial = all.pop()?;
        let stats = all.pop();
        all.is_empty().then_some(AttentionKernels {
            stats,
            partial,
            combine,
        })
    }
}

/// Fields of one sequence's row of the `seqs` table (u32 each).
pub mod seq_field {
    /// Full-precision tokens (prefix and suffix).
    pub const FP_LEN: u32 = 0;
    /// Element offset of the sequence's `[kv_heads, fp_len, head_dim]` block in `fp_k`/`fp_v`.
    pub const FP_BASE: u32 = 1;
    /// Quantized span tokens (0: none).
    pub const SPAN_LEN: u32 = 2;
    /// Byte offset of the key span's codes (SPEC.md section 3 layout).
    pub const K_CODES: u32 = 3;
    /// Element offset of the key span's parameters.
    pub const K_PARAMS: u32 = 4;
    /// Byte offset of the value span's codes.
    pub const V_CODES: u32 = 5;
    /// Element offset of the value span's parameters.
    pub const V_PARAMS: u32 = 6;
    /// Index of the sequence's first work chunk; its span chunks come first, then fp chunks.
    pub const CHUNK_BASE: u32 = 7;
    /// Span chunks.
    pub const SPAN_CHUNKS: u32 = 8;
    /// All chunks.
    pub const CHUNKS: u32 = 9;
    /// Fields per sequence.
    pub const COUNT: u32 = 10;
}

/// Parameter indices of the `partial` kernel, in ABI order.
pub mod partial_abi {
    /// Queries `[batch, q_heads, head_dim]` f32.
    pub const Q: u32 = 0;
    /// The `[batch, seq_field::COUNT]` table (u32).
    pub const SEQS: u32 = 1;
    /// The sequence of each chunk (u32).
    pub const WORK_SEQ: u32 = 2;
    /// Full-precision keys (f32).
    pub const FP_K: u32 = 3;
    /// Full-precision values (f32).
    pub const FP_V: u32 = 4;
    /// Key codes (u8).
    pub const K_CODES: u32 = 5;
    /// Key zero points (scheme's parameter type).
    pub const K_ZERO: u32 = 6;
    /// Key scales.
    pub const K_SCALE: u32 = 7;
    /// Value codes (u8).
    pub const V_CODES: u32 = 8;
    /// Value zero points.
    pub const V_ZERO: u32 = 9;
    /// Value scales.
    pub const V_SCALE: u32 = 10;
    /// `stats` output: `[chunks, kv_heads, group, 2]` (min, max) f32; read only with calibration.
    pub const STATS: u32 = 11;
    /// `stats` output: the raw span logits `[chunks, kv_heads, chunk, group]` f32, so that
    /// `partial` does not compute them again; read only with calibration.
    pub const SPAN_LOGITS: u32 = 12;
    /// Output `[chunks, kv_heads, group, 2]` (m, l) f32.
    pub const PART_ML: u32 = 13;
    /// Output `[chunks, kv_heads, group, head_dim]` f32.
    pub const PART_ACC: u32 = 14;
    /// Scalar: kv heads.
    pub const KV_HEADS: u32 = 15;
    /// Scalar: chunks in the batch.
    pub const CHUNKS: u32 = 16;
    /// Scalar: tokens per span chunk of this launch ([`BatchPlan::span_chunk`]).
    pub const SPAN_CHUNK: u32 = 17;
}

/// Parameter indices of the `stats` kernel: those of `partial` up to
/// [`partial_abi::SPAN_LOGITS`] (`STATS` and `SPAN_LOGITS` written here), then `KV_HEADS`,
/// `CHUNKS` and `SPAN_CHUNK`.
pub mod stats_abi {
    /// Scalar: kv heads.
    pub const KV_HEADS: u32 = 13;
    /// Scalar: chunks in the batch.
    pub const CHUNKS: u32 = 14;
    /// Scalar: tokens per span chunk of this launch.
    pub const SPAN_CHUNK: u32 = 15;
}

/// Parameter indices of the `combine` kernel.
pub mod combine_abi {
    /// The `seqs` table.
    pub const SEQS: u32 = 0;
    /// `partial`'s (m, l).
    pub const PART_ML: u32 = 1;
    /// `partial`'s accumulators.
    pub const PART_ACC: u32 = 2;
    /// Output `[batch, q_heads, head_dim]` f32.
    pub const OUT: u32 = 3;
    /// Scalar: kv heads.
    pub const KV_HEADS: u32 = 4;
    /// Scalar: sequences.
    pub const BATCH: u32 = 5;
}

/// The attention kernels of `scheme` for `shape` under `schedule`.
pub fn attention(
    scheme: &CacheScheme,
    shape: AttentionShape,
    schedule: &AttentionSchedule,
) -> Result<AttentionKernels, LowerError> {
    crate::limits::check_head_dim(u64::from(shape.head_dim))?;
    crate::limits::check_range(
        "group",
        u64::from(shape.group),
        1,
        crate::limits::MAX_GROUP as u64,
    )?;
    let probe = Shape3 {
        heads: 1,
        tokens: 1,
        dim: shape.head_dim as usize,
    };
    check_shape(&scheme.key, probe)?;
    check_shape(&scheme.value, probe)?;
    schedule.check(scheme)?;
    if schedule.layout == AttentionLayout::BlockPerItem {
        blocks::supports(scheme, shape).map_err(LowerError::Schedule)?;
    }
    let name = |kind: &str| {
        let calib = scheme
            .calibrate
            .map_or(String::new(), |d| format!("_cal{:08x}", d.get().to_bits()));
        // f32 rows keep the names they had before the type was a choice.
        let fp = match shape.fp {
            InputType::F32 => String::new(),
            other => format!("_fp{}", other.name()),
        };
        format!(
            "kvq_attend_{kind}_k{}_v{}{calib}_d{}_g{}{fp}",
            scheme_tag(&scheme.key),
            scheme_tag(&scheme.value),
            shape.head_dim,
            shape.group
        )
    };
    let (stats, partial) = match schedule.layout {
        AttentionLayout::ThreadPerItem => (
            scheme
                .calibrate
                .map(|_| partial::lower_stats(&name("stats"), scheme, shape, schedule)),
            partial::lower(&name("partial"), scheme, shape, schedule),
        ),
        AttentionLayout::BlockPerItem => {
            let lower =
                |kind: &str, mode| blocks::lower(&name(kind), scheme, shape, schedule, mode);
            (
                scheme
                    .calibrate
                    .map(|_| lower("stats_blocks", blocks::Mode::Stats)),
                lower("partial_blocks", blocks::Mode::Partial),
            )
        }
    };
    let combine = match schedule.layout {
        AttentionLayout::ThreadPerItem => combine::lower(&name("combine"), shape, schedule),
        AttentionLayout::BlockPerItem => combine::lower_blocks(&name("combine_blocks"), shape),
    };
    let kernels = AttentionKernels {
        stats,
        partial,
        combine,
    };
    Ok(sizes::state_sizes(kernels, scheme, shape, schedule))
}
