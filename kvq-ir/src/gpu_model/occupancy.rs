//! Theoretical occupancy by the CUDA Occupancy Calculator's rules.

use thiserror::Error;

use super::params::ArchLimits;

/// What a block of a kernel needs from an SM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockResources {
    /// Threads per block.
    pub threads: u32,
    /// Registers per thread (from ptxas); `None` when unknown (no register limit applied).
    pub regs_per_thread: Option<u32>,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u32,
}

/// Which rule limits the resident blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// Resident warps per SM.
    Warps,
    /// Resident blocks per SM.
    Blocks,
    /// Registers.
    Registers,
    /// Shared memory.
    Shared,
}

impl Limiter {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Limiter::Warps => "warps",
            Limiter::Blocks => "blocks",
            Limiter::Registers => "registers",
            Limiter::Shared => "shared memory",
        }
    }
}

/// The result of [`occupancy`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Occupancy {
    /// Warps per block (threads rounded up to 32).
    pub warps_per_block: u32,
    /// Resident blocks per SM.
    pub blocks_per_sm: u32,
    /// Resident warps per SM.
    pub warps_per_sm: u32,
    /// `warps_per_sm / max_warps_per_sm`.
    pub fraction: f64,
    /// The binding limit.
    pub limiter: Limiter,
    /// Shared memory each resident block holds, bytes (allocation units and the reserved part
    /// included).
    pub shared_per_block: u32,
}

/// A block that cannot be resident at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OccupancyError {
    /// 0 threads or more warps than an SM holds.
    #[error("a block of {threads} threads cannot run on {arch} (1..={max} threads)")]
    Threads {
        /// Threads per block.
        threads: u32,
        /// Architecture.
        arch: &'static str,
        /// Most threads per block the model accepts.
        max: u32,
    },
    /// More registers per thread than the architecture has.
    #[error("{regs} registers per thread exceed the {max} of {arch}")]
    Registers {
        /// Registers per thread.
        regs: u32,
        /// Architecture.
        arch: &'static str,
        /// The limit.
        max: u32,
    },
    /// More shared memory than a block may have, or registers for no warp.
    #[error("a block needing {what} does not fit one {arch} SM")]
    DoesNotFit {
        /// What does not fit.
        what: String,
        /// Architecture.
        arch: &'static str,
    },
}

/// Resident blocks and warps per SM for `block` on `arch`:
/// - warps: `floor(max_warps / warps_per_block)`;
/// - blocks: `max_blocks_per_sm`;
/// - registers: a warp takes `ceil(regs * 32 / reg_alloc_unit) * reg_alloc_unit` registers; the
///   SM holds `floor(regs_per_sm / that)` warps, rounded down to a multiple of the warp
///   allocation granularity; blocks = that / warps_per_block;
/// - shared memory: a block takes `ceil((shared + reserved) / unit) * unit` bytes; blocks =
///   `floor(shared_per_sm / that)`.
pub fn occupancy(arch: &ArchLimits, block: BlockResources) -> Result<Occupancy, OccupancyError> {
    let max_warps = arch.max_warps_per_sm.value;
    let warps_per_block = block.threads.div_ceil(32);
    if block.threads == 0 || warps_per_block > max_warps.min(32) {
        return Err(OccupancyError::Threads {
            threads: block.threads,
            arch: arch.name,
            max: 1024,
        });
    }
    let mut limits = vec![
        (max_warps / warps_per_block, Limiter::Warps),
        (arch.max_blocks_per_sm.value, Limiter::Blocks),
    ];
    if let Some(regs) = block.regs_per_thread {
        if regs > arch.max_regs_per_thread.value {
            return Err(OccupancyError::Registers {
                regs,
                arch: arch.name,
                max: arch.max_regs_per_thread.value,
            });
        }
        let unit = u64::from(arch.reg_alloc_unit.value);
        let per_warp = (u64::from(regs) * 32).div_ceil(unit) * unit;
        let gran = u64::from(arch.warp_alloc_granularity.value);
        let warps = match per_warp {
            0 => u64::from(max_warps),
            n => u64::from(arch.regs_per_sm.value) / n / gran * gran,
        };
        let blocks = warps / u64::from(warps_per_block);
        limits.push((blocks.min(u64::from(u32::MAX)) as u32, Limiter::Registers));
    }
    let unit = u64::from(arch.shared_alloc_unit.value);
    let shared = u64::from(block.shared_bytes);
    if shared > u64::from(arch.max_shared_per_block.value) {
        return Err(OccupancyError::DoesNotFit {
            what: format!("{shared} bytes of shared memory"),
            arch: arch.name,
        });
    }
    let per_block =
        (shared + u64::from(arch.reserved_shared_per_block.value)).div_ceil(unit) * unit;
    let by_shared = u64::from(arch.shared_per_sm.value) / per_block.max(1);
    limits.push((by_shared.min(u64::from(u32::MAX)) as u32, Limiter::Shared));
    // The first smallest limit names the limiter (warps before blocks before registers).
    let (blocks_per_sm, limiter) = limits
        .into_iter()
        .min_by_key(|&(n, _)| n)
        .unwrap_or((0, Limiter::Warps));
    if blocks_per_sm == 0 {
        return Err(OccupancyError::DoesNotFit {
            what: format!(
                "{} registers per thread x {} threads",
                block.regs_per_thread.unwrap_or(0),
                block.threads
            ),
            arch: arch.name,
        });
    }
    let warps_per_sm = blocks_per_sm * warps_per_block;
    Ok(Occupancy {
        warps_per_block,
        blocks_per_sm,
        warps_per_sm,
        fraction: f64::from(warps_per_sm) / f64::from(max_warps),
        limiter,
        shared_per_block: per_block.min(u64::from(u32::MAX)) as u32,
    })
}
