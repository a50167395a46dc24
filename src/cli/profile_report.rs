//! The text and JSON of `kvq profile`. Every modelled figure is labelled predicted.

use std::fmt::Write;

use kvq_codegen::ptxas::PtxasReport;
use kvq_ir::gpu_model::{GlobalStats, GpuParams, Occupancy, Prediction, TraceStats};
use serde_json::{json, Value};

use super::profile::ProfileShape;

/// What the model says about one kernel.
pub struct KernelReport {
    pub role: String,
    pub name: String,
    pub grid: u32,
    pub block: u32,
    pub ptxas: Option<PtxasReport>,
    pub shared_bytes: u32,
    pub occupancy: Occupancy,
    pub sample: Vec<u32>,
    /// `stats.warp_insts` counts machine instructions when nvdisasm ran (each body of the trace
    /// weighed by its machine instructions: `gpu_model::body_machine_insts`), else IR ones.
    pub stats: TraceStats,
    /// The sample's warp instructions in IR instructions (unweighed).
    pub ir_warp_insts: u64,
    /// Machine instructions per IR instruction, both counted statically over the whole kernel
    /// (nvdisasm on ptxas's cubin; the IR as the trace counts it): reported, no longer used to
    /// weigh the trace.
    pub sass_per_ir: Option<f64>,
    pub prediction: Prediction,
    /// Bytes of the copy bound (data read plus data written, once).
    pub bound_bytes: u64,
    pub bound_s: f64,
}

/// The whole profile.
pub struct Report<'a> {
    pub gpu: &'a GpuParams,
    pub shape: ProfileShape,
    pub ptxas: bool,
    /// Whether instructions are weighed by the machine code (nvdisasm found).
    pub nvdisasm: bool,
    pub kernels: Vec<KernelReport>,
    pub sdpa_bytes: u64,
}

/// Microseconds, rounded to 1 ns so that the JSON is short and stable.
fn us(s: f64) -> f64 {
    (s * 1e9).round() / 1e3
}

fn pct(x: Option<f64>) -> String {
    x.map_or("n/a".to_string(), |x| format!("{:.1}%", x * 100.0))
}

fn per_warp(total: u64, warps: u64) -> f64 {
    match warps {
        0 => 0.0,
        w => total as f64 / w as f64,
    }
}

fn global_json(g: &GlobalStats, per: &impl Fn(u64) -> u64) -> Value {
    json!({
        "requests": per(g.requests),
        "sectors": per(g.sectors),
        "useful_bytes": per(g.useful_bytes),
        "efficiency": g.efficiency(),
        "dram_sectors": per(g.dram_sectors),
    })
}

impl Report<'_> {
    fn sdpa_s(&self) -> f64 {
        kvq_ir::gpu_model::bandwidth_bound_s(self.gpu, self.sdpa_bytes)
    }

    /// The predicted time of the decode-attention kernels together, when they were profiled.
    fn attention_s(&self) -> Option<f64> {
        let times: Vec<f64> = self
            .kernels
            .iter()
            .filter(|k| k.role.starts_with("attention"))
            .map(|k| k.prediction.total_s)
            .collect();
        (!times.is_empty()).then(|| times.iter().sum())
    }

    /// The text report.
    pub fn text(&self) -> String {
        let (g, s) = (self.gpu, &self.shape);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kvq profile: {} on {} ({}, {} SMs, {:.3} TB/s); all times are predicted by a model, not measured",
            g.arch.name,
            g.name,
            g.product,
            g.sms.value,
            g.dram_bytes_per_s.value / 1e12
        );
        let _ = writeln!(
            out,
            "shape: batch {} x {} kv heads x {} tokens x head_dim {}, input {}",
            s.batch,
            s.kv_heads,
            s.tokens,
            s.head_dim,
            s.input.name()
        );
        for k in &self.kernels {
            kernel_text(&mut out, k);
        }
        let _ = writeln!(
            out,
            "PyTorch SDPA bf16 decode (reads K and V, {} bytes; q/out left out): predicted bound {:.3} us",
            self.sdpa_bytes,
            us(self.sdpa_s())
        );
        if let Some(t) = self.attention_s() {
            let _ = writeln!(
                out,
                "kvq decode attention (all its kernels): predicted {:.3} us; SDPA bf16 bound / kvq predicted = {:.2}",
                us(t),
                self.sdpa_s() / t
            );
        }
        let _ = writeln!(
            out,
            "model: predicted = {2} us launch + max(DRAM bytes / bandwidth, L2 sector bytes / L2 bandwidth) + max(load misses / (resident warps x {0}), one warp's misses / {0}) x {1} ns latency + (warp instructions + {3} x warp MMAs) / issue rate; parameters and sources: --json",
            g.requests_in_flight_per_warp.value,
            g.dram_latency_s.value * 1e9,
            g.launch_s.value * 1e6,
            g.mma_cycles.value
        );
        out
    }

    /// The JSON report (keys sorted, so deterministic).
    pub fn json(&self) -> Value {
        let s = &self.shape;
        let params: Vec<Value> = self
            .gpu
            .table()
            .into_iter()
            .map(|(name, value, source)| json!({"name": name, "value": value, "source": source}))
            .collect();
        json!({
            "note": "every predicted_* figure comes from kvq_ir::gpu_model, not a measurement",
            "target": self.gpu.arch.name,
            "gpu": self.gpu.name,
            "product": self.gpu.product,
            "ptxas": self.ptxas,
            "nvdisasm": self.nvdisasm,
            "shape": {
                "batch": s.batch,
                "kv_heads": s.kv_heads,
                "tokens": s.tokens,
                "head_dim": s.head_dim,
                "group": s.group,
                "input": s.input.name(),
            },
            "kernels": self.kernels.iter().map(kernel_json).collect::<Vec<_>>(),
            "sdpa_bf16": {
                "bytes": self.sdpa_bytes,
                "predicted_bound_us": us(self.sdpa_s()),
            },
            "attention": self.attention_s().map(|t| json!({
                "predicted_us": us(t),
                "predicted_sdpa_bound_over_kvq": self.sdpa_s() / t,
            })),
            "params": params,
        })
    }
}

fn kernel_text(out: &mut String, k: &KernelReport) {
    let (st, p, o) = (&k.stats, &k.prediction, &k.occupancy);
    let _ = writeln!(out, "\n{} ({})", k.role, k.name);
    let _ = writeln!(out, "  launch        grid {} x block {}", k.grid, k.block);
    let _ = match k.ptxas {
        Some(r) => writeln!(
            out,
            "  ptxas         {} registers, {} B stack (local), {} B spilled, {} B shared",
            r.registers,
            r.stack_frame,
            r.spill_stores + r.spill_loads,
            r.shared
        ),
        None => writeln!(
            out,
            "  ptxas         not run; {} B shared (IR)",
            k.shared_bytes
        ),
    };
    let _ = writeln!(
        out,
        "  occupancy     {} theoretical ({} blocks, {} warps per SM; limited by {})",
        pct(Some(o.fraction)),
        o.blocks_per_sm,
        o.warps_per_sm,
        o.limiter.name()
    );
    let _ = match st.block_copies.iter().all(|&c| c == 1) {
        true => writeln!(
            out,
            "  sample        {} of {} blocks {:?}, scaled x{:.2}",
            k.sample.len(),
            k.grid,
            k.sample,
            p.scale
        ),
        false => writeln!(
            out,
            "  sample        {} of {} blocks {:?}, stratified by the work a block does: they stand for {:?} blocks",
            k.sample.len(),
            k.grid,
            k.sample,
            stands_for(st, p.scale)
        ),
    };
    let per = per_block(st);
    for (what, g) in [("global loads ", &st.loads), ("global stores", &st.stores)] {
        let _ = writeln!(
            out,
            "  {what} {} warp requests, {} sectors, coalescing {}",
            per(g.requests),
            per(g.sectors),
            pct(g.efficiency())
        );
    }
    let _ = writeln!(
        out,
        "  shared        {} warp requests, bank conflicts x{} (wavefronts / ideal)",
        per(st.shared.requests),
        st.shared
            .conflict_factor()
            .map_or("n/a".to_string(), |f| format!("{f:.2}"))
    );
    let _ = match k.sass_per_ir {
        Some(r) => writeln!(
            out,
            "  instructions  {:.1} machine instructions per warp (sampled mean, each body weighed by what ptxas made of it: nvdisasm line information); {:.1} IR instructions, {:.2} machine per IR statically",
            per_warp(st.warp_insts, st.warps),
            per_warp(k.ir_warp_insts, st.warps),
            r
        ),
        None => writeln!(
            out,
            "  instructions  {:.1} per warp (IR instructions, sampled mean)",
            per_warp(st.warp_insts, st.warps)
        ),
    };
    let _ = writeln!(
        out,
        "  predicted     DRAM {:.3} us ({} B), L2 {:.3} us ({} B), latency {:.3} us, issue {:.3} us, launch {:.3} us",
        us(p.dram_s),
        p.dram_bytes.round(),
        us(p.l2_s),
        p.l2_bytes.round(),
        us(p.latency_s),
        us(p.issue_s),
        us(p.launch_s)
    );
    if st.warp_mmas > 0 {
        let _ = writeln!(
            out,
            "  predicted     tensor cores {:.3} us ({:.1} MMAs per warp)",
            us(p.tensor_s),
            per_warp(st.warp_mmas, st.warps)
        );
    }
    let _ = writeln!(
        out,
        "  predicted     {:.3} us, bound by {}; copy bound {:.3} us ({} B); ratio {:.2}",
        us(p.total_s),
        p.bound.name(),
        us(k.bound_s),
        k.bound_bytes,
        p.total_s / k.bound_s
    );
}

/// The grid blocks each sampled block stands for (its copies times the prediction's scale).
fn stands_for(st: &TraceStats, scale: f64) -> Vec<f64> {
    st.block_copies
        .iter()
        .map(|&c| (c as f64 * scale * 10.0).round() / 10.0)
        .collect()
}

/// A count of the sample as the sampled blocks' own (a stratified sample's sums count each
/// block with its copies; divided by their mean, the figures keep a plain sample's scale).
fn per_block(st: &TraceStats) -> impl Fn(u64) -> u64 {
    let mean = st.weight() as f64 / st.block_copies.len().max(1) as f64;
    move |x| match mean > 0.0 {
        true => (x as f64 / mean).round() as u64,
        false => x,
    }
}

fn kernel_json(k: &KernelReport) -> Value {
    let (st, p, o) = (&k.stats, &k.prediction, &k.occupancy);
    let r = k.ptxas;
    let per = per_block(st);
    json!({
        "role": k.role,
        "name": k.name,
        "grid": k.grid,
        "block": k.block,
        "registers": r.map(|r| r.registers),
        "stack_bytes": r.map(|r| r.stack_frame),
        "spill_bytes": r.map(|r| r.spill_stores + r.spill_loads),
        "shared_bytes": k.shared_bytes,
        "occupancy": o.fraction,
        "blocks_per_sm": o.blocks_per_sm,
        "warps_per_sm": o.warps_per_sm,
        "occupancy_limiter": o.limiter.name(),
        "sample_blocks": k.sample,
        "sample_stands_for": stands_for(st, p.scale),
        "global_loads": global_json(&st.loads, &per),
        "global_stores": global_json(&st.stores, &per),
        "shared": {
            "requests": per(st.shared.requests),
            "wavefronts": per(st.shared.wavefronts),
            "ideal_wavefronts": per(st.shared.ideal_wavefronts),
            "conflict_factor": st.shared.conflict_factor(),
        },
        "warp_insts_per_warp": per_warp(st.warp_insts, st.warps),
        "ir_insts_per_warp": per_warp(k.ir_warp_insts, st.warps),
        "sass_per_ir": k.sass_per_ir.map(|r| (r * 1e4).round() / 1e4),
        "predicted_dram_bytes": p.dram_bytes.round(),
        "predicted_dram_us": us(p.dram_s),
        "predicted_l2_bytes": p.l2_bytes.round(),
        "predicted_l2_us": us(p.l2_s),
        "predicted_latency_us": us(p.latency_s),
        "predicted_issue_us": us(p.issue_s),
        "predicted_tensor_us": us(p.tensor_s),
        "mmas_per_warp": per_warp(st.warp_mmas, st.warps),
        "launch_us": us(p.launch_s),
        "predicted_us": us(p.total_s),
        "predicted_bound": p.bound.name(),
        "copy_bound_bytes": k.bound_bytes,
        "predicted_copy_bound_us": us(k.bound_s),
        "predicted_ratio": p.total_s / k.bound_s,
    })
}
