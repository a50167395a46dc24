//! Lowering: a scheme, a shape class and a [`Schedule`] become kernels in the IR.
//!
//! Every kernel of a span takes its dimensions as scalar parameters `heads` and `tokens`; the
//! head dimension and the input type are fixed by the [`ShapeClass`]. The kernels:
//!
//! | scheme | kernel | work split |
//! | --- | --- | --- |
//! | axis = channel, group = all | [`quantize`] | one block per (head, column of W channels); its threads split the tokens, combine partial minima and maxima through shared memory, pick the range, then code their tokens |
//! | axis = channel, group = N | [`quantize`] | one thread per (head, column, token group): statistics, parameters, codes |
//! | axis = token | [`quantize`] | one thread per (head, token) row: every channel group of the row |
//! | axis = token, group = all, min/max rules (host) | [`quantize`] | one thread per run of 16 rows: their extremes, their parameters in one loop, their codes (`quantize_rows`) |
//! | any | [`dequantize`] | one thread per (head, token) row |
//! | axis = token, min/max rules (cooperative schedule) | [`quantize`] | lanes over channels: a row split across a warp's lanes, group extremes by shuffles ([`lanes`]) |
//! | axis = channel, group = N, min/max rules (cooperative schedule) | [`quantize`] | one warp per (head, token group): lanes over channels, whole rows per step, extremes by shuffles over the lanes of the same channels ([`lanes_channel`]) |
//! | any (cooperative schedule) | [`dequantize`] | lanes over channels, aligned f32 vector stores ([`lanes`]) |
//! | axis = channel, group = all, quantile rule (cooperative schedule without clusters; host) | [`quantize`] | one block per (head, column); the whole block selects the order statistics (`block_select`) |
//! | axis = channel, group = all, every rule (schedule with clusters, sm_90) | [`quantize`] | a cluster of blocks per (head, column), each thread a strand of rows kept in shared memory; the blocks exchange their extremes (or mse's sums every round, or the quantile rule's histograms every pass) through distributed shared memory ([`cluster_channel`]) |
//!
//! Statistics and codes read the data twice (a range needs the whole group before the first code);
//! the quantile rule selects exact order statistics with [`crate::ir::Op::SelectRank`]. Every
//! kernel writes 1 to `status[0]` when it meets a non-finite input and 2 when a group's parameters
//! do not fit their type; the caller then reports the precise error (the reference finds it).

pub mod args;
pub mod attention;
mod block_select;
pub mod cluster_channel;
mod cluster_mse;
mod cluster_quantile;
mod cluster_rows;
mod dequantize;
mod emit;
pub mod io;
mod key16;
pub mod lanes;
pub mod lanes_channel;
mod quantize_channel;
mod quantize_rows;
mod quantize_token;
mod thread_tokens;

use thiserror::Error;

use crate::ir::{Kernel, Len, Param, ScalarType};
use crate::reference::quantize::{check_shape, QuantError};
use crate::scheme::{Axis, Group, Rule, Scheme};
use crate::tensor::Shape3;

/// Element type of the unquantized input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputType {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single.
    F32,
}

impl InputType {
    /// Its name in kernel names (`f16`, `bf16`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            InputType::F16 => "f16",
            InputType::BF16 => "bf16",
            InputType::F32 => "f32",
        }
    }

    /// `x` rounded to this type (to nearest even) and widened back to f32, exactly: the value a
    /// buffer of this type holds for `x`.
    pub fn round(self, x: f32) -> f32 {
        match self {
            InputType::F16 => half::f16::from_f32(x).to_f32(),
            InputType::BF16 => half::bf16::from_f32(x).to_f32(),
            InputType::F32 => x,
        }
    }

    /// The IR element type.
    pub fn scalar(self) -> ScalarType {
        match self {
            InputType::F16 => ScalarType::F16,
            InputType::BF16 => ScalarType::BF16,
            InputType::F32 => ScalarType::F32,
        }
    }
}

/// What a kernel is specialised for besides the scheme: the head dimension and the input type.
/// Heads and tokens stay runtime parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShapeClass {
    /// Channels per head.
    pub head_dim: u32,
    /// Element type of K or V.
    pub input: InputType,
}

/// The knobs a tuner searches. Every combination that [`Schedule::check`] accepts is correct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Schedule {
    /// Threads per block.
    pub block_size: u32,
    /// Channels one thread (or, for axis = channel with group = all, one block) covers: a
    /// multiple of the codes per byte that divides head_dim. Ignored for axis = token (a thread
    /// covers a whole row).
    pub channels: u32,
    /// Elements per load (1, 2, 4, 8 or 16), dividing `channels` (and the group size for
    /// axis = token).
    pub vector: u8,
    /// GPU layout: lanes over channels where a lane plan exists (quantize with a min/max rule
    /// and axis = token ([`lanes`]) or axis = channel with token groups ([`lanes_channel`]);
    /// dequantize of every scheme), the kernels above elsewhere. `block_size` is then a
    /// multiple of 32.
    pub cooperative: bool,
    /// Blocks per thread-block cluster (sm_90) for axis = channel, group = all: the span split
    /// across a cluster's blocks ([`cluster_channel`]); 1 (no clusters) elsewhere, and for GPUs
    /// without clusters ([`Schedule::without_clusters`]).
    pub cluster: u32,
    /// How the threads of a block of several share a column's tokens (axis = channel, group =
    /// all, without clusters): `false`, token `t` to thread `t % block_size`, so that a GPU
    /// warp's loads lie side by side; `true`, each thread a contiguous run of
    /// `ceil(tokens / block_size)` of them, for a CPU, where the threads are loops run one after
    /// another and each then reads its run in order ([`Schedule::host_select`]).
    pub contiguous: bool,
}

impl Schedule {
    /// A schedule that suits a GPU: many threads, narrow columns, coalesced vector loads.
    pub fn gpu_default(scheme: &Scheme, shape: ShapeClass) -> Schedule {
        let per_byte = scheme.bits.codes_per_byte() as u32;
        let channels = per_byte.max(8).min(shape.head_dim);
        Schedule {
            // group = all runs in clusters where the GPU has them and head_dim is whole
            // 16-channel columns ([`Schedule::with_clusters`]); else in one block per column
            // of these sizes (see [`Schedule::without_clusters`]).
            block_size: match (scheme.axis, scheme.group, scheme.rule) {
                (Axis::Channel, Group::All, Rule::Quantile(_)) => 256,
                (Axis::Channel, Group::All, Rule::Mse) => 256,
                (Axis::Channel, Group::All, _) => 1024,
                _ => 128,
            },
            channels,
            vector: vector_for(channels, scheme, shape, 8),
            cooperative: true,
            cluster: 1,
            contiguous: false,
        }
        .with_clusters(scheme, shape)
    }

    /// This schedule with the cluster kernel where [`cluster_channel::plan`] has one (clusters
    /// of [`crate::ir::MAX_CLUSTER_SIZE`] blocks of 256 threads), unchanged elsewhere.
    fn with_clusters(self, scheme: &Scheme, shape: ShapeClass) -> Schedule {
        match cluster_channel::plan(scheme, shape) {
            Ok(plan) => Schedule {
                block_size: plan.block_size,
                channels: plan.w,
                cluster: plan.cluster,
                ..self
            },
            Err(_) => self,
        }
    }

    /// This schedule for a GPU without thread-block clusters (sm_80): the cluster kernel's
    /// schemes get the one-block-per-column kernel: 32 warps per column, their extremes combined
    /// by warp reductions; the quantile rule's order statistics selected by 8 warps (the
    /// search's counters, three per channel and side, need more than the 128 registers a thread
    /// of 512 may have: ptxas spilled 600 bytes there); for mse one thread per channel sums its
    /// strands, with 256 threads.
    pub fn without_clusters(self, scheme: &Scheme, shape: ShapeClass) -> Schedule {
        match self.cluster {
            1 => self,
            _ => {
                let channels = (scheme.bits.codes_per_byte() as u32)
                    .max(8)
                    .min(shape.head_dim);
                Schedule {
                    block_size: match scheme.rule {
                        Rule::Mse | Rule::Quantile(_) => 256,
                        _ => 1024,
                    },
                    channels,
                    vector: vector_for(channels, scheme, shape, 8),
                    cluster: 1,
                    ..self
                }
            }
        }
    }

    /// A schedule that suits a CPU backend (threads become loops): one thread per block, columns
    /// of 32 channels (one cache line of f16) loaded 16 at a time, few enough accumulators to
    /// stay in vector registers. The quantile rule with group = all takes
    /// [`Schedule::host_select`] where it exists.
    pub fn host_default(scheme: &Scheme, shape: ShapeClass) -> Schedule {
        if let Some(select) = Schedule::host_select(scheme, shape) {
            return select;
        }
        let per_byte = scheme.bits.codes_per_byte() as u32;
        let channels = per_byte.max(32).min(shape.head_dim);
        let channels = if shape.head_dim.checked_rem(channels) == Some(0) {
            channels
        } else {
            per_byte
        };
        Schedule {
            block_size: 1,
            channels,
            vector: vector_for(channels, scheme, shape, 16),
            cooperative: false,
            cluster: 1,
            contiguous: false,
        }
    }

    /// For the quantile rule with axis = channel and group = all: one warp per column of the
    /// widest width up to 128 channels (a multiple of the codes per byte dividing head_dim)
    /// selecting the order statistics together (the cooperative kernel's `block_select`: every
    /// pass over the column counts all of its channels from whole rows, which vectorizes on a
    /// CPU), instead of a strided selection per channel; each thread walks a contiguous run of
    /// the tokens ([`Schedule::contiguous`]: 1.4-1.5x faster than every 32nd token at 8 x
    /// 16,384 x 128 f16, where each pass then streams its runs in order). None for other
    /// schemes.
    pub fn host_select(scheme: &Scheme, shape: ShapeClass) -> Option<Schedule> {
        if !matches!(
            (scheme.axis, scheme.group, scheme.rule),
            (Axis::Channel, Group::All, Rule::Quantile(_))
        ) {
            return None;
        }
        let per_byte = scheme.bits.codes_per_byte() as u32;
        let channels = [128u32, 64, 32, 16, 8]
            .into_iter()
            .find(|&w| w % per_byte == 0 && shape.head_dim % w == 0)?;
        let select = Schedule {
            block_size: crate::ir::WARP_SIZE,
            channels,
            vector: vector_for(channels, scheme, shape, 16),
            cooperative: true,
            cluster: 1,
            contiguous: true,
        };
        select.check(scheme, shape).ok().map(|()| select)
    }

    /// Checks that this schedule can lower `scheme` for `shape`.
    pub fn check(&self, scheme: &Scheme, shape: ShapeClass) -> Result<(), LowerError> {
        let bad = |why: String| Err(LowerError::Schedule(why));
        let per_byte = scheme.bits.codes_per_byte() as u32;
        if !(1..=1024).contains(&self.block_size) {
            return bad(format!("block size {} outside 1..=1024", self.block_size));
        }
        if self.cooperative && self.block_size % crate::ir::WARP_SIZE != 0 {
            return bad(format!(
                "block size {} of a cooperative schedule is not a multiple of 32",
                self.block_size
            ));
        }
        if !matches!(self.vector, 1 | 2 | 4 | 8 | 16) {
            return bad(format!(
                "vector width {} is not 1, 2, 4, 8 or 16",
                self.vector
            ));
        }
        if scheme.axis == Axis::Channel {
            let w = self.channels;
            if w == 0 || w % per_byte != 0 || shape.head_dim % w != 0 {
                return bad(format!(
                    "{w} channels per thread must be a multiple of {per_byte} dividing head_dim {}",
                    shape.head_dim
                ));
            }
            if w % self.vector as u32 != 0 {
                return bad(format!(
                    "vector width {} does not divide {w} channels",
                    self.vector
                ));
            }
        } else if token_group(scheme, shape) % self.vector as u32 != 0 {
            return bad(format!(
                "vector width {} does not divide the group of {} channels",
                self.vector,
                token_group(scheme, shape)
            ));
        }
        if self.cluster != 1 {
            return match (self.cooperative, cluster_channel::plan(scheme, shape)) {
                (true, Ok(plan)) if plan.fits(self) => Ok(()),
                (_, Err(why)) => bad(why),
                _ => bad(format!(
                    "clusters of {} blocks of {} threads over {} channels: the cluster kernel \
                     takes its own plan's sizes",
                    self.cluster, self.block_size, self.channels
                )),
            };
        }
        let shared = quantize_channel::shared_bytes(scheme, self);
        if shared > crate::ir::verify::MAX_SHARED_BYTES {
            return bad(format!(
                "block size {} with {} channels needs {shared} bytes of shared memory, more than \
                 the {} a block may use",
                self.block_size,
                self.channels,
                crate::ir::verify::MAX_SHARED_BYTES
            ));
        }
        Ok(())
    }
}

/// The widest vector of at most `max` lanes that divides the run a thread loads.
fn vector_for(channels: u32, scheme: &Scheme, shape: ShapeClass, max: u8) -> u8 {
    let span = match scheme.axis {
        Axis::Channel => channels,
        Axis::Token => token_group(scheme, shape),
    };
    [16u8, 8, 4, 2, 1]
        .into_iter()
        .filter(|&v| v <= max)
        .find(|&v| span % v as u32 == 0)
        .unwrap_or(1)
}

/// Channels per group for axis = token.
fn token_group(scheme: &Scheme, shape: ShapeClass) -> u32 {
    match scheme.group {
        Group::All => shape.head_dim,
        Group::Size(n) => n.get() as u32,
    }
}

/// How many blocks a lowered kernel is launched with, as a function of the runtime sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Launch {
    /// `heads * columns` blocks: one per (head, column).
    BlockPerColumn {
        /// Columns per head.
        columns: u32,
    },
    /// One thread per (head, column, token group): `heads * columns * ceil(tokens / group)`
    /// threads, rounded up to whole blocks.
    ThreadPerGroup {
        /// Columns per head.
        columns: u32,
        /// Tokens per group.
        group: u32,
    },
    /// One thread per (head, token) row, rounded up to whole blocks.
    ThreadPerRow,
    /// One thread per run of `rows` consecutive (head, token) rows (the last run may be
    /// shorter), rounded up to whole blocks.
    ThreadPerRows {
        /// Rows per thread.
        rows: u32,
    },
    /// `heads * columns * cluster` blocks: a cluster of blocks per (head, column).
    ClusterPerColumn {
        /// Columns per head.
        columns: u32,
        /// Blocks per cluster.
        cluster: u32,
    },
}

impl Launch {
    /// Number of blocks for `heads` x `tokens` with `block_size` threads per block.
    pub fn grid(&self, heads: u32, tokens: u32, block_size: u32) -> u64 {
        let sizes = [heads, tokens];
        let scalar = |i: u32| sizes.get(i as usize).copied();
        // Constants and the two scalars: the product of at most four u32 factors fits u64.
        self.grid_len(0, 1, block_size)
            .eval(&scalar, None)
            .unwrap_or(u64::MAX)
    }

    /// The grid as a size over the scalar parameters `heads` and `tokens` (ABI indices).
    pub fn grid_len(&self, heads: u32, tokens: u32, block_size: u32) -> Len {
        let (h, t, b) = (
            Len::Scalar(heads),
            Len::Scalar(tokens),
            u64::from(block_size),
        );
        match *self {
            Launch::BlockPerColumn { columns } => Len::product([h, Len::Const(columns.into())]),
            Launch::ThreadPerGroup { columns, group } => {
                Len::product([h, Len::Const(columns.into()), t.ceil_div(group.into())]).ceil_div(b)
            }
            Launch::ThreadPerRow => Len::product([h, t]).ceil_div(b),
            Launch::ThreadPerRows { rows } => {
                Len::product([h, t]).ceil_div(rows.into()).ceil_div(b)
            }
            Launch::ClusterPerColumn { columns, cluster } => {
                Len::product([h, Len::Const(u64::from(columns) * u64::from(cluster))])
            }
        }
    }
}

/// Elements of a span's zero points (and scales) under `scheme` for head_dim `d`, over the
/// scalar parameters `heads` and `tokens` (SPEC.md section 3, as `param_shape`).
fn param_len(scheme: &Scheme, d: u32, heads: u32, tokens: u32) -> Len {
    let (h, t, d) = (Len::Scalar(heads), Len::Scalar(tokens), u64::from(d));
    match (scheme.axis, scheme.group) {
        (Axis::Channel, Group::All) => Len::product([h, Len::Const(d)]),
        (Axis::Channel, Group::Size(n)) => {
            Len::product([h, t.ceil_div(n.get() as u64), Len::Const(d)])
        }
        (Axis::Token, Group::All) => Len::product([h, t]),
        (Axis::Token, Group::Size(n)) => Len::product([h, t, Len::Const(d / n.get() as u64)]),
    }
}

/// States the sizes of a quantize (`quantize` true) or dequantize kernel's signature: every
/// buffer's length over `heads` and `tokens`, and the grid of its launch rule. One place for
/// every quantize and dequantize lowering.
fn state_sizes(
    mut lowered: Lowered,
    scheme: &Scheme,
    shape: ShapeClass,
    quantize: bool,
) -> Lowered {
    let (heads, tokens) = if quantize {
        (quantize_abi::HEADS, quantize_abi::TOKENS)
    } else {
        (dequantize_abi::HEADS, dequantize_abi::TOKENS)
    };
    let d = shape.head_dim;
    let rows = || Len::product([Len::Scalar(heads), Len::Scalar(tokens)]);
    let elems = Len::product([rows(), Len::Const(d.into())]);
    let codes = Len::product([rows(), Len::Const((d * scheme.bits.width() / 8).into())]);
    let params = param_len(scheme, d, heads, tokens);
    let lens = if quantize {
        vec![elems, codes, params.clone(), params, Len::Const(1)]
    } else {
        vec![codes, params.clone(), params, elems]
    };
    let kernel = &mut lowered.kernel;
    let buffers = kernel.params.iter_mut().filter_map(|p| match p {
        Param::Buffer { len, .. } => Some(len),
        Param::Scalar { .. } => None,
    });
    for (len, l) in buffers.zip(lens) {
        *len = Some(l);
    }
    kernel.max_grid = Some(lowered.launch.grid_len(heads, tokens, kernel.block_size));
    lowered
}

/// A lowered kernel and how to launch it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lowered {
    /// The kernel (unverified; run [`crate::ir::verify`]).
    pub kernel: Kernel,
    /// Its launch rule.
    pub launch: Launch,
}

/// Why a scheme cannot be lowered.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LowerError {
    /// The schedule does not fit the scheme and shape.
    #[error("invalid schedule: {0}")]
    Schedule(String),
    /// The scheme does not fit the shape (head_dim).
    #[error(transparent)]
    Shape(#[from] QuantError),
    /// A size outside what kvq supports.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

/// Parameter indices of a quantize kernel, in ABI order.
pub mod quantize_abi {
    /// Input `[heads, tokens, head_dim]`.
    pub const X: u32 = 0;
    /// Packed codes `[heads, tokens, head_dim * b / 8]`.
    pub const CODES: u32 = 1;
    /// Zero points in SPEC.md section 3 layout, of the `params` type.
    pub const ZERO: u32 = 2;
    /// Scales, same layout.
    pub const SCALE: u32 = 3;
    /// `status[0]`: 0, or 1 for non-finite input, 2 for a parameter overflow.
    pub const STATUS: u32 = 4;
    /// Scalar: heads.
    pub const HEADS: u32 = 5;
    /// Scalar: tokens.
    pub const TOKENS: u32 = 6;
}

/// Parameter indices of a dequantize kernel, in ABI order.
pub mod dequantize_abi {
    /// Packed codes.
    pub const CODES: u32 = 0;
    /// Zero points.
    pub const ZERO: u32 = 1;
    /// Scales.
    pub const SCALE: u32 = 2;
    /// Output `[heads, tokens, head_dim]` f32.
    pub const OUT: u32 = 3;
    /// Scalar: heads.
    pub const HEADS: u32 = 4;
    /// Scalar: tokens.
    pub const TOKENS: u32 = 5;
}

fn check(scheme: &Scheme, shape: ShapeClass, schedule: &Schedule) -> Result<(), LowerError> {
    crate::limits::check_head_dim(u64::from(shape.head_dim))?;
    let probe = Shape3 {
        heads: 1,
        tokens: 1,
        dim: shape.head_dim as usize,
    };
    check_shape(scheme, probe)?;
    schedule.check(scheme, shape)
}

/// A short, stable name fragment of a scheme, for kernel names.
pub fn scheme_tag(scheme: &Scheme) -> String {
    use crate::scheme::{BitOrder, Center, ParamType, Rule};
    let axis = match scheme.axis {
        Axis::Channel => "c",
        Axis::Token => "t",
    };
    let group = match scheme.group {
        Group::All => "all".to_string(),
        Group::Size(n) => n.get().to_string(),
    };
    let rule = match scheme.rule {
        Rule::MinMax => "minmax".to_string(),
        Rule::Shrink { alpha, center } => format!(
            "shrink{}{:08x}",
            if center == Center::Mid { "mid" } else { "" },
            alpha.get().to_bits()
        ),
        Rule::Quantile(p) => format!("q{:016x}", p.get().to_bits()),
        Rule::Mse => "mse".to_string(),
    };
    let params = if scheme.params == ParamType::F16 {
        "h"
    } else {
        "f"
    };
    let order = if scheme.order == BitOrder::Msb {
        "m"
    } else {
        "l"
    };
    format!(
        "b{}{axis}{group}_{rule}_{params}{order}",
        scheme.bits.width()
    )
}

/// The entry-point name of a kernel: `kvq_<kind>_<scheme tag>_d<head_dim>_<input>`.
fn kernel_name(kind: &str, scheme: &Scheme, shape: ShapeClass) -> String {
    format!(
        "kvq_{kind}_{}_d{}_{}",
        scheme_tag(scheme),
        shape.head_dim,
        shape.input.name()
    )
}

/// The quantize kernel of `scheme` for `shape` under `schedule`.
pub fn quantize(
    scheme: &Scheme,
    shape: ShapeClass,
    schedule: &Schedule,
) -> Result<Lowered, LowerError> {
    check(scheme, shape, schedule)?;
    let lowered = quantize_unsized(scheme, shape, schedule);
    Ok(state_sizes(lowered, scheme, shape, true))
}

/// The quantize kernel before [`state_sizes`] (`check` passed).
fn quantize_unsized(scheme: &Scheme, shape: ShapeClass, schedule: &Schedule) -> Lowered {
    if schedule.cluster != 1 {
        // `check` accepted it: the cluster kernel's plan.
        if let Ok(plan) = cluster_channel::plan(scheme, shape) {
            return cluster_channel::quantize(scheme, shape, plan);
        }
    }
    if schedule.cooperative {
        if let Ok(plan) = lanes::plan(scheme, shape.head_dim, true) {
            return lanes::quantize_token(scheme, shape, schedule.block_size, plan);
        }
        if let Ok(plan) = lanes_channel::plan(scheme, shape.head_dim) {
            return lanes_channel::quantize(scheme, shape, schedule.block_size, plan);
        }
    }
    match scheme.axis {
        Axis::Channel => quantize_channel::lower(scheme, shape, schedule),
        Axis::Token => quantize_token::lower(scheme, shape, schedule),
    }
}

/// The dequantize kernel of `scheme` for `shape` under `schedule` (one thread per row, or
/// lanes over channels for a cooperative schedule).
pub fn dequantize(
    scheme: &Scheme,
    shape: ShapeClass,
    schedule: &Schedule,
) -> Result<Lowered, LowerError> {
    check(scheme, shape, schedule)?;
    let lowered = match schedule.cooperative {
        true => match lanes::plan(scheme, shape.head_dim, false) {
            Ok(plan) => lanes::dequantize(scheme, shape, schedule.block_size, plan),
            Err(_) => dequantize::lower(scheme, shape, schedule),
        },
        false => dequantize::lower(scheme, shape, schedule),
    };
    Ok(state_sizes(lowered, scheme, shape, false))
}
