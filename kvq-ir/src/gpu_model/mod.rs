//! A GPU cost model that needs no GPU: occupancy by the CUDA rules, a warp-level analysis of an
//! interpreter trace of a few sampled blocks, and a predicted time. Every time it gives is a
//! prediction of a model, not a measurement; its inputs sit in one table ([`params`]), each with
//! its source.
//!
//! - [`params`]: the GPUs (H100, H200, A100) and their architectures (sm_80, sm_90).
//! - [`occupancy()`]: resident blocks and warps per SM.
//! - [`analyze`]: sectors, coalescing, bank conflicts and instructions of a
//!   [`Trace`](crate::ir::interp::Trace) ([`analyze_weighted`] for a [`stratified_sample`]).
//! - [`machine`]: machine instructions per body of a trace, from ptxas's line information.
//! - [`predict()`]: `launch + max(DRAM, L2) + latency + issue + tensor`, and the bandwidth
//!   bounds it is compared with.

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
pub use warp::{analyze, analyze_weighted, warp_insts, GlobalStats, SharedStats, TraceStats};

/// The blocks the model samples: the first, the middle and the last (distinct, increasing).
pub fn sample_blocks(grid: u32) -> Vec<u32> {
    let mut blocks: Vec<u32> = match grid {
        0 => Vec::new(),
        g => vec![0, g / 2, g - 1],
    };
    blocks.dedup();
    blocks
}

/// Copies per sampled block of a stratified sample are `class size x STRATUM_UNIT / sampled
/// blocks of the class`: whole numbers for 1, 2 or 3 sampled blocks.
pub const STRATUM_UNIT: u64 = 6;

/// A stratified sample of a grid whose blocks fall into classes (`class_of`; an attention
/// launch's span chunks and full-precision chunks do different work): the first, middle and last
/// block of each class, each counted as the share of the grid it stands for (class size / blocks
/// sampled from the class, times [`STRATUM_UNIT`] for every block alike). Returns the blocks,
/// increasing, and their copies for [`analyze_weighted`].
pub fn stratified_sample(
    grid: u32,
    class_of: impl Fn(u32) -> u32,
) -> (Vec<u32>, std::collections::BTreeMap<u32, u64>) {
    use std::collections::BTreeMap;
    let mut count: BTreeMap<u32, (u32, u32, u32)> = BTreeMap::new();
    for b in 0..grid {
        let e = count.entry(class_of(b)).or_insert((0, b, b));
        e.0 += 1;
        e.2 = b;
    }
    let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
    let mut copies: BTreeMap<u32, u64> = BTreeMap::new();
    let mut middle: BTreeMap<u32, u32> = BTreeMap::new();
    for b in 0..grid {
        let c = class_of(b);
        let k = seen.entry(c).or_insert(0);
        if let Some(&(n, _, _)) = count.get(&c) {
            if *k == n / 2 {
                middle.insert(c, b);
            }
        }
        *k += 1;
    }
    for (c, &(n, first, last)) in &count {
        let mut picks = vec![first, middle.get(c).copied().unwrap_or(first), last];
        picks.dedup();
        let each = u64::from(n) * STRATUM_UNIT / picks.len() as u64;
        for p in picks {
            copies.insert(p, each);
        }
    }
    (copies.keys().copied().collect(), copies)
}
