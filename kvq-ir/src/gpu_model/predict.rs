//! The predicted time of a kernel, and the bandwidth bounds it is compared with.

use super::occupancy::Occupancy;
use super::params::GpuParams;
use super::warp::{TraceStats, SECTOR_BYTES};

/// Which term of [`predict`] is the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// DRAM bandwidth.
    Dram,
    /// L2-to-SM bandwidth (data read again from the cache).
    L2,
    /// Latency: too few loads in flight (Little's law).
    Latency,
    /// Instruction issue.
    Issue,
    /// The tensor cores (warp matrix multiply-accumulates).
    Tensor,
}

impl Bound {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Bound::Dram => "DRAM bandwidth",
            Bound::L2 => "L2 bandwidth",
            Bound::Latency => "latency (Little's law)",
            Bound::Issue => "instruction issue",
            Bound::Tensor => "tensor cores",
        }
    }
}

/// A predicted (modelled, not measured) launch of a kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Grid blocks per sampled block.
    pub scale: f64,
    /// Predicted DRAM bytes (loads and stores) of the grid.
    pub dram_bytes: f64,
    /// Predicted L2 sector bytes of the grid (loads and stores).
    pub l2_bytes: f64,
    /// Predicted global-load warp requests of the grid.
    pub load_requests: f64,
    /// Predicted warp instructions of the grid.
    pub warp_insts: f64,
    /// Warps resident at once on the device.
    pub resident_warps: f64,
    /// SMs with at least one block.
    pub active_sms: f64,
    /// `dram_bytes / bandwidth`, seconds.
    pub dram_s: f64,
    /// `l2_bytes / L2 bandwidth`, seconds.
    pub l2_s: f64,
    /// Predicted load requests of the grid that miss the caches.
    pub dram_requests: f64,
    /// `max(dram_requests / (resident_warps * in_flight), the most misses of one sampled warp
    /// / in_flight) * latency`, seconds.
    pub latency_s: f64,
    /// `warp_insts / (active_sms * min(schedulers, warps per active SM) * issue * clock)`.
    pub issue_s: f64,
    /// `warp_mmas x mma_cycles / (active_sms * min(schedulers, warps per active SM) * clock)`.
    pub tensor_s: f64,
    /// The launch constant, seconds.
    pub launch_s: f64,
    /// `launch_s + max(dram_s, l2_s) + latency_s + issue_s + tensor_s`: see [`predict`] for
    /// why the terms are added.
    pub total_s: f64,
    /// The largest term.
    pub bound: Bound,
}

/// Predicts a launch of `grid` blocks from the sampled `stats`, scaled by `grid / sampled
/// blocks` (each counted with its copies: [`TraceStats::weight`]); `buffer_bytes[p]` is the
/// size of buffer parameter `p` (missing: unbounded):
/// - DRAM: per buffer, distinct sectors per block scaled to the grid, at most the buffer's size
///   (L2 keeps what several blocks share), loads and stores apart, summed;
/// - L2: over the L2-to-SM bandwidth, every sector of every store request, and per block and
///   buffer the load sectors: the distinct ones when they fit in the block's share of the SM's
///   L1 (what the L1 and shared memory hold less the resident blocks' shared memory, split
///   among them; the rest is served by L1), else every request's;
/// - latency: Little's law on the load requests that miss (first touch of a sector in the
///   block), with `requests_in_flight_per_warp` in flight per resident warp, resident warps =
///   `min(grid, SMs * blocks_per_sm) * warps_per_block`; and no less than the most misses of
///   one warp, one after the other: a one-block kernel pays the latency per miss;
/// - issue: warp instructions over the active SMs' schedulers (a scheduler needs a warp);
/// - tensor: the cycles of the warp matrix multiply-accumulates on those schedulers' tensor
///   cores (an MMA also counts as one issued instruction).
///
/// The time is `launch + max(DRAM, L2) + latency + issue + tensor`: the two bandwidths move the
/// same bytes, so the slower one counts, but waiting on loads and issuing instructions are
/// added, not overlapped (and so are the tensor cores' cycles, which no measured kernel had).
/// That is what kvq's kernels measured on an H200 (docs/gpu/h200-2026-12-04): Nsight Compute
/// found neither memory nor issue saturated (DRAM throughput 3-19%, issue slots busy
/// 17-31% in the attention and CalibQuant quantize kernels), the phases of a warp (loads,
/// arithmetic, reductions, barriers) following one another with too few warps to hide each
/// other. Taking the largest term alone predicted those kernels 2.3x too fast on average (43
/// kernel shapes, log-RMS error 0.94); adding them, 1.07x too fast (log-RMS 0.33). A kernel that
/// overlaps well (a streaming copy at full occupancy) is predicted pessimistically.
pub fn predict(
    gpu: &GpuParams,
    grid: u32,
    occ: &Occupancy,
    stats: &TraceStats,
    buffer_bytes: &[u64],
) -> Prediction {
    let scale = match stats.weight() {
        0 => 0.0,
        n => f64::from(grid) / n as f64,
    };
    let (l, s) = (&stats.loads, &stats.stores);
    let sector = SECTOR_BYTES as f64;
    let dram_bytes: f64 = stats
        .dram_sectors_by_param
        .iter()
        .flat_map(|(&p, sectors)| {
            let cap = buffer_bytes.get(p as usize).map_or(f64::INFINITY, |&b| {
                (b.div_ceil(SECTOR_BYTES) * SECTOR_BYTES) as f64
            });
            sectors.map(|n| (n as f64 * sector * scale).min(cap))
        })
        .sum();
    let l1_total = f64::from(gpu.arch.l1_and_shared_per_sm.value);
    let blocks = f64::from(occ.blocks_per_sm.max(1));
    let l1_share = (l1_total - blocks * f64::from(occ.shared_per_block)).max(0.0) / blocks;
    let load_sectors: u64 = stats
        .block_load_sectors
        .iter()
        .zip(&stats.block_copies)
        .flat_map(|(per_param, &c)| per_param.values().map(move |n| (n, c)))
        .map(
            |(&[distinct, all], c)| match distinct as f64 * sector <= l1_share {
                true => c * distinct,
                false => c * all,
            },
        )
        .sum();
    let l2_bytes = (load_sectors + s.sectors) as f64 * sector * scale;
    let load_requests = l.requests as f64 * scale;
    let dram_requests = l.dram_requests as f64 * scale;
    let warp_insts = stats.warp_insts as f64 * scale;
    let sms = f64::from(gpu.sms.value);
    let resident_blocks = f64::from(grid).min(sms * f64::from(occ.blocks_per_sm));
    let resident_warps = resident_blocks * f64::from(occ.warps_per_block);
    let active_sms = f64::from(grid).min(sms);
    let dram_s = dram_bytes / gpu.dram_bytes_per_s.value;
    let l2_s = l2_bytes / gpu.l2_bytes_per_s.value;
    let per_warp = gpu.requests_in_flight_per_warp.value;
    let in_flight = resident_warps * per_warp;
    let latency_s = match in_flight > 0.0 {
        true => {
            let chain = stats.max_warp_dram_requests as f64 / per_warp;
            (dram_requests / in_flight).max(chain) * gpu.dram_latency_s.value
        }
        false => 0.0,
    };
    let schedulers = f64::from(gpu.arch.schedulers_per_sm.value);
    let per_sm = match active_sms > 0.0 {
        true => schedulers.min(resident_warps / active_sms),
        false => 0.0,
    };
    let issue_rate = active_sms * per_sm * gpu.issue_per_scheduler.value * gpu.clock_hz.value;
    let issue_s = match issue_rate > 0.0 {
        true => warp_insts / issue_rate,
        false => 0.0,
    };
    let tensor_s = match issue_rate > 0.0 {
        true => stats.warp_mmas as f64 * scale * gpu.mma_cycles.value / issue_rate,
        false => 0.0,
    };
    let transfer_s = dram_s.max(l2_s);
    let (mut top, mut bound) = (dram_s, Bound::Dram);
    let terms = [
        (l2_s, Bound::L2),
        (latency_s, Bound::Latency),
        (issue_s, Bound::Issue),
        (tensor_s, Bound::Tensor),
    ];
    for (t, b) in terms {
        if t > top {
            (top, bound) = (t, b);
        }
    }
    let launch_s = gpu.launch_s.value;
    Prediction {
        scale,
        dram_bytes,
        l2_bytes,
        load_requests,
        dram_requests,
        warp_insts,
        resident_warps,
        active_sms,
        dram_s,
        l2_s,
        latency_s,
        issue_s,
        tensor_s,
        launch_s,
        total_s: launch_s + transfer_s + latency_s + issue_s + tensor_s,
        bound,
    }
}

/// A bandwidth bound: `bytes / DRAM bandwidth + launch`, seconds (the same launch constant as
/// [`predict`], so that the ratio compares like with like).
pub fn bandwidth_bound_s(gpu: &GpuParams, bytes: u64) -> f64 {
    bytes as f64 / gpu.dram_bytes_per_s.value + gpu.launch_s.value
}

/// Bytes PyTorch SDPA reads in bf16 for one decode step: K and V, each `batch * kv_heads *
/// tokens * head_dim * 2` bytes (the query and output, `1 / tokens` of that, are left out).
/// `None` on overflow.
pub fn sdpa_bf16_bytes(batch: u64, kv_heads: u64, tokens: u64, head_dim: u64) -> Option<u64> {
    batch
        .checked_mul(kv_heads)?
        .checked_mul(tokens)?
        .checked_mul(head_dim)?
        .checked_mul(2)?
        .checked_mul(2)
}
