//! Warp-level analysis of an interpreter trace: sectors and coalescing of global accesses, bank
//! conflicts of shared accesses, instructions per warp.
//!
//! Threads `32w..32w + 31` of a block form warp `w`. The `k`-th execution of an instruction by
//! the lanes that executed it at least `k + 1` times is one warp request (other lanes are
//! inactive for it); a gather of `count` elements is `count` requests.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::interp::{MemAccess, Trace};
use crate::ir::Memory;

/// Bytes of a global-memory sector.
pub const SECTOR_BYTES: u64 = 32;
/// Shared-memory banks.
pub const BANKS: u64 = 32;
/// Bytes of a shared-memory bank word.
pub const BANK_BYTES: u64 = 4;

/// Global loads or stores of a sample, summed over warp requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Warp requests.
    pub requests: u64,
    /// 32-byte sectors the requests touch (each request's distinct sectors).
    pub sectors: u64,
    /// Distinct bytes each request asks for, summed.
    pub useful_bytes: u64,
    /// Distinct sectors per buffer within each block, summed over blocks (DRAM traffic / 32).
    pub dram_sectors: u64,
    /// Requests touching a sector no earlier request of the block touched (DRAM misses; the
    /// others are taken as cache hits). Loads only.
    pub dram_requests: u64,
}

impl GlobalStats {
    /// Coalescing efficiency: useful bytes / (sectors * 32); `None` without requests.
    pub fn efficiency(&self) -> Option<f64> {
        (self.sectors > 0).then(|| self.useful_bytes as f64 / (self.sectors * SECTOR_BYTES) as f64)
    }
}

/// Shared-memory requests of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Warp requests.
    pub requests: u64,
    /// Wavefronts: per request, the most distinct 4-byte words in one bank (same word:
    /// broadcast).
    pub wavefronts: u64,
    /// Wavefronts without conflicts: per request, `ceil(distinct words / 32)`.
    pub ideal_wavefronts: u64,
}

impl SharedStats {
    /// Wavefronts over ideal wavefronts (1: no bank conflicts); `None` without requests.
    pub fn conflict_factor(&self) -> Option<f64> {
        (self.ideal_wavefronts > 0).then(|| self.wavefronts as f64 / self.ideal_wavefronts as f64)
    }
}

/// What a sample of blocks did, per warp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Blocks sampled.
    pub blocks: u32,
    /// Warps sampled.
    pub warps: u64,
    /// Global loads (and gathers).
    pub loads: GlobalStats,
    /// Global stores.
    pub stores: GlobalStats,
    /// Shared loads and stores.
    pub shared: SharedStats,
    /// Warp instructions: per warp, per body, the most runs of any lane times the body's
    /// instructions ([`Trace::body_insts`]), summed.
    pub warp_insts: u64,
    /// Warp matrix multiply-accumulates, counted like `warp_insts` ([`Trace::body_mmas`]).
    pub warp_mmas: u64,
    /// The most load DRAM misses of one warp (its chain of dependent DRAM round trips).
    pub max_warp_dram_requests: u64,
    /// Per buffer parameter, distinct sectors per block summed over blocks: loads, stores.
    pub dram_sectors_by_param: BTreeMap<u32, [u64; 2]>,
    /// Per sampled block, per buffer parameter: the distinct sectors its loads touch and the
    /// sectors of all its load requests (what L1 saves depends on whether the distinct ones fit).
    pub block_load_sectors: Vec<BTreeMap<u32, [u64; 2]>>,
    /// Per sampled block, how many times it counts in the other fields (1 each for a plain
    /// sample; a stratified sample weighs each block by the share of the grid it stands for:
    /// [`analyze_weighted`]).
    pub block_copies: Vec<u64>,
}

impl TraceStats {
    /// The sampled blocks counted with their copies (the model scales the sums by the grid
    /// over this).
    pub fn weight(&self) -> u64 {
        self.block_copies.iter().sum()
    }
}

/// Analyses `trace` (buffer bases 256-byte aligned, each shared array starting at bank 0).
pub fn analyze(trace: &Trace) -> TraceStats {
    analyze_weighted(trace, &BTreeMap::new())
}

/// [`analyze`], block `b` of the trace counted `copies[b]` times (1 when absent): the sums of
/// a stratified sample, whose blocks stand for different shares of the grid.
pub fn analyze_weighted(trace: &Trace, copies: &BTreeMap<u32, u64>) -> TraceStats {
    let mut stats = TraceStats {
        blocks: trace.blocks.len() as u32,
        ..TraceStats::default()
    };
    let copies_of = |b: u32| copies.get(&b).copied().unwrap_or(1);
    stats.warp_insts = warp_insts(trace, &trace.body_insts, copies);
    stats.warp_mmas = warp_insts(trace, &trace.body_mmas, copies);
    for block in &trace.blocks {
        let one = analyze_block(block);
        stats.add(&one, copies_of(block.block));
    }
    stats
}

impl TraceStats {
    /// Adds one block's figures `c` times.
    fn add(&mut self, one: &TraceStats, c: u64) {
        self.warps += c * one.warps;
        for (to, from) in [
            (&mut self.loads, &one.loads),
            (&mut self.stores, &one.stores),
        ] {
            to.requests += c * from.requests;
            to.sectors += c * from.sectors;
            to.useful_bytes += c * from.useful_bytes;
            to.dram_sectors += c * from.dram_sectors;
            to.dram_requests += c * from.dram_requests;
        }
        self.shared.requests += c * one.shared.requests;
        self.shared.wavefronts += c * one.shared.wavefronts;
        self.shared.ideal_wavefronts += c * one.shared.ideal_wavefronts;
        self.max_warp_dram_requests = self.max_warp_dram_requests.max(one.max_warp_dram_requests);
        for (&p, n) in &one.dram_sectors_by_param {
            let to = self.dram_sectors_by_param.entry(p).or_default();
            to[0] += c * n[0];
            to[1] += c * n[1];
        }
        self.block_load_sectors
            .extend(one.block_load_sectors.iter().cloned());
        self.block_copies.push(c);
    }
}

/// One block's memory figures (its instructions are counted by [`warp_insts`]).
fn analyze_block(block: &crate::ir::interp::BlockTrace) -> TraceStats {
    let mut stats = TraceStats::default();
    {
        let mut dram: [BTreeSet<(u32, u64)>; 2] = [BTreeSet::new(), BTreeSet::new()];
        let mut requested: BTreeMap<u32, u64> = BTreeMap::new();
        for warp in block.threads.chunks(32) {
            stats.warps += 1;
            let insts: BTreeSet<usize> = warp
                .iter()
                .flat_map(|t| t.accesses.keys())
                .copied()
                .collect();
            let misses_before = stats.loads.dram_requests;
            for inst in insts {
                let seqs: Vec<&[MemAccess]> = warp
                    .iter()
                    .map(|t| t.accesses.get(&inst).map_or(&[][..], Vec::as_slice))
                    .collect();
                let runs = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
                for k in 0..runs {
                    let active: Vec<MemAccess> =
                        seqs.iter().filter_map(|s| s.get(k)).copied().collect();
                    request(&active, &mut stats, &mut dram, &mut requested);
                }
            }
            let misses = stats.loads.dram_requests - misses_before;
            stats.max_warp_dram_requests = stats.max_warp_dram_requests.max(misses);
        }
        for (kind, set) in dram.iter().enumerate() {
            for &(p, _) in set {
                if let Some(n) = stats
                    .dram_sectors_by_param
                    .entry(p)
                    .or_default()
                    .get_mut(kind)
                {
                    *n += 1;
                }
            }
        }
        let mut per_param: BTreeMap<u32, [u64; 2]> = BTreeMap::new();
        for &(p, _) in &dram[0] {
            per_param.entry(p).or_default()[0] += 1;
        }
        for (p, n) in requested {
            per_param.entry(p).or_default()[1] += n;
        }
        stats.block_load_sectors.push(per_param);
        stats.loads.dram_sectors += dram[0].len() as u64;
        stats.stores.dram_sectors += dram[1].len() as u64;
    }
    stats
}

/// Warp instructions of the sample when one run of body `b` issues `weights[b]`: per warp and
/// body, the most runs of any lane times the weight, summed, each block `copies[block]` times
/// (1 when absent).
pub fn warp_insts(trace: &Trace, weights: &[u64], copies: &BTreeMap<u32, u64>) -> u64 {
    let mut sum = 0u64;
    for block in &trace.blocks {
        let c = copies.get(&block.block).copied().unwrap_or(1);
        for warp in block.threads.chunks(32) {
            for (b, &n) in weights.iter().enumerate() {
                let runs = warp
                    .iter()
                    .map(|t| t.body_runs.get(b).copied().unwrap_or(0));
                let one = runs.max().unwrap_or(0).saturating_mul(n);
                sum = sum.saturating_add(one.saturating_mul(c));
            }
        }
    }
    sum
}

/// One execution of an instruction by the `active` lanes (all of the same memory and kind).
fn request(
    active: &[MemAccess],
    stats: &mut TraceStats,
    dram: &mut [BTreeSet<(u32, u64)>; 2],
    requested: &mut BTreeMap<u32, u64>,
) {
    let Some(first) = active.first() else { return };
    let repeat = active.iter().map(|a| a.repeat).max().unwrap_or(0);
    // Requests of a stride-0 gather are all alike: one is analysed and counted `repeat` times.
    let uniform = active.iter().all(|a| a.stride == 0);
    let (distinct, times) = if uniform {
        (repeat.min(1), u64::from(repeat))
    } else {
        (repeat, 1)
    };
    for j in 0..distinct {
        // Each lane's bytes [start, end) of request j.
        let ranges: Vec<(u64, u64)> = active
            .iter()
            .filter(|a| j < a.repeat)
            .map(|a| {
                let elem = u64::from(a.elem_bytes);
                let start = (u64::from(a.index) + u64::from(j) * u64::from(a.stride)) * elem;
                (start, start + u64::from(a.lanes) * elem)
            })
            .collect();
        match first.mem {
            Memory::Param(p) => {
                let g = if first.store {
                    &mut stats.stores
                } else {
                    &mut stats.loads
                };
                let sectors: BTreeSet<u64> = ranges
                    .iter()
                    .filter(|r| r.1 > r.0)
                    .flat_map(|&(s, e)| s / SECTOR_BYTES..=(e - 1) / SECTOR_BYTES)
                    .collect();
                g.requests += times;
                g.sectors += times * sectors.len() as u64;
                if !first.store {
                    *requested.entry(p).or_default() += times * sectors.len() as u64;
                }
                g.useful_bytes += times * union_len(ranges);
                let set = &mut dram[usize::from(first.store)];
                let mut new = false;
                for sector in sectors {
                    new |= set.insert((p, sector));
                }
                if new && !first.store {
                    g.dram_requests += 1;
                }
            }
            Memory::Shared(_) => {
                let words: BTreeSet<u64> = ranges
                    .iter()
                    .filter(|r| r.1 > r.0)
                    .flat_map(|&(s, e)| s / BANK_BYTES..=(e - 1) / BANK_BYTES)
                    .collect();
                let mut per_bank: BTreeMap<u64, u64> = BTreeMap::new();
                for w in &words {
                    *per_bank.entry(w % BANKS).or_default() += 1;
                }
                let sh = &mut stats.shared;
                sh.requests += times;
                sh.wavefronts += times * per_bank.values().copied().max().unwrap_or(0);
                sh.ideal_wavefronts += times * (words.len() as u64).div_ceil(BANKS);
            }
        }
    }
}

/// Bytes covered by the union of half-open ranges.
fn union_len(mut ranges: Vec<(u64, u64)>) -> u64 {
    ranges.sort_unstable();
    let (mut total, mut end) = (0u64, 0u64);
    for (s, e) in ranges {
        let s = s.max(end);
        if e > s {
            total += e - s;
            end = e;
        }
    }
    total
}
