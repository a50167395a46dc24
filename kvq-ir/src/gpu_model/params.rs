//! The one table of GPU parameters the model uses, each value with its source.

/// A value and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Its source: a vendor document, or "assumption: ..." with the reason.
    pub source: &'static str,
}

const fn s<T>(value: T, source: &'static str) -> Sourced<T> {
    Sourced { value, source }
}

/// Per-SM limits of a compute capability (what the occupancy rules need).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchLimits {
    /// `sm_80` or `sm_90`.
    pub name: &'static str,
    /// 32-bit registers per SM.
    pub regs_per_sm: Sourced<u32>,
    /// Most registers one thread may use.
    pub max_regs_per_thread: Sourced<u32>,
    /// Registers are allocated per warp in units of this many.
    pub reg_alloc_unit: Sourced<u32>,
    /// Warps per SM are counted, for registers, in multiples of this.
    pub warp_alloc_granularity: Sourced<u32>,
    /// Resident warps per SM.
    pub max_warps_per_sm: Sourced<u32>,
    /// Resident blocks per SM.
    pub max_blocks_per_sm: Sourced<u32>,
    /// Shared memory per SM, bytes (the largest carve-out).
    pub shared_per_sm: Sourced<u32>,
    /// The combined L1 data cache and shared memory of an SM, bytes.
    pub l1_and_shared_per_sm: Sourced<u32>,
    /// Most shared memory one block may use (opt-in), bytes.
    pub max_shared_per_block: Sourced<u32>,
    /// Shared memory is allocated per block in units of this many bytes.
    pub shared_alloc_unit: Sourced<u32>,
    /// Shared memory the system reserves per block, bytes.
    pub reserved_shared_per_block: Sourced<u32>,
    /// Warp schedulers per SM.
    pub schedulers_per_sm: Sourced<u32>,
}

const CC_TABLE: &str = "CUDA C++ Programming Guide, \"Technical Specifications per Compute \
                        Capability\" table";
const CALC: &str = "CUDA Occupancy Calculator (CUDA_Occupancy_Calculator.xls, \"GPU Data\" sheet)";

/// Compute capability 8.0 (A100).
pub const SM80: ArchLimits = ArchLimits {
    name: "sm_80",
    regs_per_sm: s(65536, CC_TABLE),
    max_regs_per_thread: s(255, CC_TABLE),
    reg_alloc_unit: s(256, CALC),
    warp_alloc_granularity: s(4, CALC),
    max_warps_per_sm: s(64, CC_TABLE),
    max_blocks_per_sm: s(32, CC_TABLE),
    shared_per_sm: s(164 * 1024, CC_TABLE),
    l1_and_shared_per_sm: s(
        192 * 1024,
        "NVIDIA A100 Tensor Core GPU Architecture whitepaper: 192 KB combined L1/shared per SM",
    ),
    max_shared_per_block: s(163 * 1024, CC_TABLE),
    shared_alloc_unit: s(128, CALC),
    reserved_shared_per_block: s(
        1024,
        "CUDA C++ Programming Guide, compute capability 8.x shared memory (1 KB reserved per block)",
    ),
    schedulers_per_sm: s(4, "NVIDIA A100 Tensor Core GPU Architecture whitepaper (SM diagram)"),
};

/// Compute capability 9.0 (H100, H200).
pub const SM90: ArchLimits = ArchLimits {
    name: "sm_90",
    regs_per_sm: s(65536, CC_TABLE),
    max_regs_per_thread: s(255, CC_TABLE),
    reg_alloc_unit: s(256, CALC),
    warp_alloc_granularity: s(4, CALC),
    max_warps_per_sm: s(64, CC_TABLE),
    max_blocks_per_sm: s(32, CC_TABLE),
    shared_per_sm: s(228 * 1024, CC_TABLE),
    l1_and_shared_per_sm: s(
        256 * 1024,
        "NVIDIA H100 Tensor Core GPU Architecture whitepaper: 256 KB combined L1/shared per SM",
    ),
    max_shared_per_block: s(227 * 1024, CC_TABLE),
    shared_alloc_unit: s(128, CALC),
    reserved_shared_per_block: s(
        1024,
        "CUDA C++ Programming Guide, compute capability 9.0 shared memory (1 KB reserved per block)",
    ),
    schedulers_per_sm: s(4, "NVIDIA H100 Tensor Core GPU Architecture whitepaper (SM diagram)"),
};

/// One GPU: its architecture, size, memory and clocks, and the model's assumptions for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuParams {
    /// `h100`, `h200`, `a100`.
    pub name: &'static str,
    /// The product, in words.
    pub product: &'static str,
    /// Its per-SM limits.
    pub arch: ArchLimits,
    /// Streaming multiprocessors.
    pub sms: Sourced<u32>,
    /// DRAM bandwidth, bytes per second.
    pub dram_bytes_per_s: Sourced<f64>,
    /// L2 cache, bytes.
    pub l2_bytes: Sourced<u64>,
    /// Bandwidth from L2 to the SMs, bytes per second (every sector a warp request touches
    /// crosses it, cached or not).
    pub l2_bytes_per_s: Sourced<f64>,
    /// SM clock (boost), Hz.
    pub clock_hz: Sourced<f64>,
    /// Warp instructions one scheduler issues per cycle.
    pub issue_per_scheduler: Sourced<f64>,
    /// DRAM load latency seen by a warp, seconds (Little's law).
    pub dram_latency_s: Sourced<f64>,
    /// Global-load requests a warp keeps in flight.
    pub requests_in_flight_per_warp: Sourced<f64>,
    /// Fixed cost of one kernel launch on the GPU, seconds.
    pub launch_s: Sourced<f64>,
    /// Cycles a scheduler's tensor cores take for one warp `mma.sync` m16n8k16 (f16 inputs,
    /// f32 accumulators: 2,048 multiply-adds).
    pub mma_cycles: Sourced<f64>,
}

const ISSUE: &str = "NVIDIA Ampere/Hopper architecture whitepapers: each of the 4 SM \
                     sub-partitions issues one warp instruction per clock";
const LATENCY: &str = "assumption: ~700 ns, the class of global-memory (DRAM) load latency that \
                       pointer-chasing microbenchmarks report on A100/H100 (e.g. Jia et al., \
                       'Dissecting the NVIDIA Volta GPU Architecture via Microbenchmarking', \
                       and the Hopper follow-ups: several hundred cycles at ~1.4-2 GHz)";
const IN_FLIGHT: &str = "assumption: 1 (a warp waits for each load before the next; loop \
                         unrolling that overlaps loads would raise it)";
const L2_GH100: &str = "assumption: 5.5 TB/s, about what Chips and Cheese measured on H100 PCIe \
                        (114 SMs) in 'Nvidia's H100: Funny L2, and Tons of Bandwidth' (2023), \
                        taken for the GH100 SXM parts too (more SMs and clock would raise it)";
const MMA_A100: &str = "NVIDIA A100 whitepaper: 312 dense FP16 tensor TFLOPS (f32 accumulate) \
                        over 108 SMs x 4 sub-partitions x 1.41 GHz = 256 multiply-adds a cycle \
                        per sub-partition, so 2,048 take 8 cycles";
const MMA_GH100: &str = "assumption: 8 cycles, A100's rate per sub-partition; the H100 \
                         whitepaper's 989 dense FP16 TFLOPS (4 cycles) are for Hopper's \
                         asynchronous warpgroup MMA, which kvq does not emit, and mma.sync is \
                         not taken to reach them";
const LAUNCH: &str = "measured: 6 us per kernel as CUDA events around one launch time it (launch, \
                      start and drain); the smallest kvq kernels took 7.7-8.7 us so on an NVIDIA \
                      H200 (docs/gpu/h200-2026-12-04), less ~1-2 us of predicted work; taken for \
                      every GPU of the table, and for the bandwidth bounds too";

/// NVIDIA H100 SXM5 80 GB.
pub const H100: GpuParams = GpuParams {
    name: "h100",
    product: "NVIDIA H100 SXM5 80GB",
    arch: SM90,
    sms: s(
        132,
        "NVIDIA H100 Tensor Core GPU Architecture whitepaper / H100 datasheet (SXM5)",
    ),
    dram_bytes_per_s: s(3.35e12, "NVIDIA H100 datasheet (SXM): 3.35 TB/s HBM3"),
    l2_bytes: s(
        50 << 20,
        "NVIDIA H100 Tensor Core GPU Architecture whitepaper: 50 MB L2",
    ),
    l2_bytes_per_s: s(5.5e12, L2_GH100),
    clock_hz: s(1.98e9, "NVIDIA H100 whitepaper: 1.98 GHz boost (SXM5)"),
    issue_per_scheduler: s(1.0, ISSUE),
    dram_latency_s: s(700e-9, LATENCY),
    requests_in_flight_per_warp: s(1.0, IN_FLIGHT),
    launch_s: s(6e-6, LAUNCH),
    mma_cycles: s(8.0, MMA_GH100),
};

/// NVIDIA H200 SXM 141 GB.
pub const H200: GpuParams = GpuParams {
    name: "h200",
    product: "NVIDIA H200 SXM 141GB",
    arch: SM90,
    sms: s(
        132,
        "NVIDIA H200 datasheet (same GH100 configuration as H100 SXM5)",
    ),
    dram_bytes_per_s: s(4.8e12, "NVIDIA H200 datasheet: 4.8 TB/s HBM3e"),
    l2_bytes: s(50 << 20, "NVIDIA H200 datasheet (GH100: 50 MB L2)"),
    l2_bytes_per_s: s(5.5e12, L2_GH100),
    clock_hz: s(
        1.98e9,
        "assumption: H100 SXM5 boost clock (1.98 GHz, H100 whitepaper); same GH100 chip",
    ),
    issue_per_scheduler: s(1.0, ISSUE),
    dram_latency_s: s(700e-9, LATENCY),
    requests_in_flight_per_warp: s(1.0, IN_FLIGHT),
    launch_s: s(6e-6, LAUNCH),
    mma_cycles: s(8.0, MMA_GH100),
};

/// NVIDIA A100 SXM4 80 GB.
pub const A100: GpuParams = GpuParams {
    name: "a100",
    product: "NVIDIA A100 SXM4 80GB",
    arch: SM80,
    sms: s(
        108,
        "NVIDIA A100 Tensor Core GPU Architecture whitepaper: 108 SMs",
    ),
    dram_bytes_per_s: s(
        2.039e12,
        "NVIDIA A100 datasheet (80GB SXM): 2,039 GB/s HBM2e",
    ),
    l2_bytes: s(
        40 << 20,
        "NVIDIA A100 Tensor Core GPU Architecture whitepaper: 40 MB L2",
    ),
    l2_bytes_per_s: s(
        4.9e12,
        "assumption: 2.3x V100's (NVIDIA A100 whitepaper: 'A100 L2 cache read bandwidth is 2.3x \
         V100'), V100's measured at ~2.15 TB/s by Jia et al., 'Dissecting the NVIDIA Volta GPU \
         Architecture via Microbenchmarking' (2018)",
    ),
    clock_hz: s(1.41e9, "NVIDIA A100 whitepaper: 1410 MHz boost"),
    issue_per_scheduler: s(1.0, ISSUE),
    dram_latency_s: s(700e-9, LATENCY),
    requests_in_flight_per_warp: s(1.0, IN_FLIGHT),
    launch_s: s(6e-6, LAUNCH),
    mma_cycles: s(8.0, MMA_A100),
};

/// Every GPU of the table.
pub const GPUS: [GpuParams; 3] = [H100, H200, A100];

impl GpuParams {
    /// The GPU named `name` (`h100`, `h200`, `a100`).
    pub fn by_name(name: &str) -> Option<GpuParams> {
        GPUS.into_iter().find(|g| g.name == name)
    }

    /// The table's entry for an architecture's default GPU (`sm_80`: A100, `sm_90`: H100).
    pub fn default_for(arch: &str) -> Option<GpuParams> {
        match arch {
            "sm_80" => Some(A100),
            "sm_90" => Some(H100),
            _ => None,
        }
    }

    /// Every value with its name and source, in a fixed order (for reports).
    pub fn table(&self) -> Vec<(&'static str, String, &'static str)> {
        let a = &self.arch;
        let u = |name, v: Sourced<u32>| (name, v.value.to_string(), v.source);
        vec![
            u("sms", self.sms),
            (
                "dram_bytes_per_s",
                format!("{:e}", self.dram_bytes_per_s.value),
                self.dram_bytes_per_s.source,
            ),
            (
                "l2_bytes",
                self.l2_bytes.value.to_string(),
                self.l2_bytes.source,
            ),
            (
                "l2_bytes_per_s",
                format!("{:e}", self.l2_bytes_per_s.value),
                self.l2_bytes_per_s.source,
            ),
            (
                "clock_hz",
                format!("{:e}", self.clock_hz.value),
                self.clock_hz.source,
            ),
            u("schedulers_per_sm", a.schedulers_per_sm),
            (
                "issue_per_scheduler",
                self.issue_per_scheduler.value.to_string(),
                self.issue_per_scheduler.source,
            ),
            (
                "dram_latency_s",
                format!("{:e}", self.dram_latency_s.value),
                self.dram_latency_s.source,
            ),
            (
                "requests_in_flight_per_warp",
                self.requests_in_flight_per_warp.value.to_string(),
                self.requests_in_flight_per_warp.source,
            ),
            (
                "launch_s",
                format!("{:e}", self.launch_s.value),
                self.launch_s.source,
            ),
            (
                "mma_cycles",
                self.mma_cycles.value.to_string(),
                self.mma_cycles.source,
            ),
            u("regs_per_sm", a.regs_per_sm),
            u("max_regs_per_thread", a.max_regs_per_thread),
            u("reg_alloc_unit", a.reg_alloc_unit),
            u("warp_alloc_granularity", a.warp_alloc_granularity),
            u("max_warps_per_sm", a.max_warps_per_sm),
            u("max_blocks_per_sm", a.max_blocks_per_sm),
            u("shared_per_sm", a.shared_per_sm),
            u("l1_and_shared_per_sm", a.l1_and_shared_per_sm),
            u("max_shared_per_block", a.max_shared_per_block),
            u("shared_alloc_unit", a.shared_alloc_unit),
            u("reserved_shared_per_block", a.reserved_shared_per_block),
        ]
    }
}
