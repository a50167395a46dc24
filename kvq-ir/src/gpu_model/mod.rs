//! A GPU cost model that needs no GPU: occupancy by the CUDA rules, a warp-level analysis of an
//! interpreter trace of a few sampled blocks, and a predicted time. Every time it gives is a
//! prediction of a model, not a measurement; its inputs sit in one table ([`params`]), each with
//! its source.
//!
//! - [`params`]: the GPUs (H100, H200, A100) and their architectures (sm_80, sm_90).
//! - [`occupancy()`]: resident blocks and warps per SM.
//! - [`analyze`]: sectors, coalescing, bank conflicts and instructions of a
//!   [`Trace`](crate::ir::interp::Trace).
//! - [`predict()`]: `launch + max(DRAM, L2) + latency + issue`, and the bandwidth bounds it is compared
//!   with.

pub mod machine;
pub mod occupancy;
pub mod params;
pub mod predict;
pub mod warp;

#[cfg(test)]
mod tests;

pub use machine::{body_machine_insts, LineCounts};
pub use occupancy::{occupancy, BlockResources, Limiter, Occupancy, OccupancyError};
pub use params::{ArchLimits, GpuParams, Sourced, A100, GPUS, H100, H200, SM80, SM90};
pub use predict::{bandwidth_bound_s, predict, sdpa_bf16_bytes, Bound, Prediction};
pub use warp::{analyze, warp_insts, GlobalStats, SharedStats, TraceStats};

/// The blocks the model samples: the first, the middle and the last (distinct, increasing).
pub fn sample_blocks(grid: u32) -> Vec<u32> {
    let mut blocks: Vec<u32> = match grid {
        0 => Vec::new(),
        g => vec![0, g / 2, g - 1],
    };
    blocks.dedup();
    blocks
}
