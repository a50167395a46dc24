//! Shared by the benchmarks: ratios against the baseline timed in the same run. Each bench
//! binary uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;

/// Mean time in ns of a finished criterion benchmark `group/id`, from criterion's own estimates.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = dir
        .join("criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

/// Calls `report(id, baseline_ns, id_ns)` for each of `others` that has an estimate, all of one
/// group and one run; says so when an estimate is missing.
fn against_baseline(group: &str, baseline: &str, others: &[&str], report: impl Fn(&str, f64, f64)) {
    let Some(base) = mean_ns(group, baseline) else {
        eprintln!("{group}: no estimate for {baseline}; run the whole group");
        return;
    };
    for id in others {
        match mean_ns(group, id) {
            Some(t) => report(id, base, t),
            None => println!("{group}: no estimate for {id}"),
        }
    }
}

/// Prints each benchmark's time as a multiple of `baseline`'s, all of one group and one run.
pub fn print_ratios(group: &str, baseline: &str, others: &[&str]) {
    against_baseline(group, baseline, others, |id, base, t| {
        println!(
            "{group}: {id} takes {:.2}x the time of {baseline}",
            t / base
        )
    });
}

/// Prints each benchmark's bandwidth (same bytes per iteration) as a fraction of `baseline`'s.
pub fn print_bandwidth_fractions(group: &str, baseline: &str, others: &[&str]) {
    against_baseline(group, baseline, others, |id, base, t| {
        println!(
            "{group}: {id} runs at {:.1}% of {baseline}'s bandwidth",
            100.0 * base / t
        )
    });
}

/// A compiled host quantize kernel with its output buffers allocated once, so that a benchmark
/// times the launch alone.
pub struct HostQuantizer {
    kernel: kvq_codegen::host::HostKernel,
    grid: u32,
    params: kvq_ir::ParamType,
    shape: [usize; 3],
    codes: Vec<u8>,
    half_params: [Vec<half::f16>; 2],
    f32_params: [Vec<f32>; 2],
    status: Vec<u32>,
}

impl HostQuantizer {
    /// Lowers, verifies and compiles (without the cache) `scheme`'s quantize kernel under
    /// `schedule` for f16 spans of `shape` = [heads, tokens, head_dim].
    pub fn new(
        scheme: &kvq_ir::Scheme,
        schedule: &kvq_ir::lower::Schedule,
        shape: [usize; 3],
    ) -> Self {
        use kvq::reference::quantize::{param_shape, row_bytes};
        let class = kvq_ir::lower::ShapeClass {
            head_dim: shape[2] as u32,
            input: kvq_ir::lower::InputType::F16,
        };
        let lowered = kvq_ir::lower::quantize(scheme, class, schedule).unwrap();
        let info = kvq_ir::ir::verify(&lowered.kernel).unwrap();
        let kernel = kvq_codegen::host::compile_with(&lowered.kernel, &info, None).unwrap();
        let grid = lowered
            .launch
            .grid(shape[0] as u32, shape[1] as u32, lowered.kernel.block_size)
            as u32;
        let shape3 = kvq_ir::Shape3 {
            heads: shape[0],
            tokens: shape[1],
            dim: shape[2],
        };
        let n: usize = param_shape(scheme, shape3).iter().product();
        HostQuantizer {
            kernel,
            grid,
            params: scheme.params,
            shape,
            codes: vec![0; shape[0] * shape[1] * row_bytes(scheme, shape[2])],
            half_params: [vec![half::f16::ZERO; n], vec![half::f16::ZERO; n]],
            f32_params: [vec![0.0; n], vec![0.0; n]],
            status: vec![0],
        }
    }

    /// Quantizes the f16 span `x` (of the shape given to [`HostQuantizer::new`]).
    pub fn run(&mut self, x: &[half::f16]) {
        use kvq_codegen::host::{BufferMut, BufferRef, HostArg};
        assert_eq!(x.len(), self.shape.iter().product::<usize>());
        let [hz, hs] = &mut self.half_params;
        let [fz, fs] = &mut self.f32_params;
        let (zero, scale) = match self.params {
            kvq_ir::ParamType::F16 => (BufferMut::F16(hz), BufferMut::F16(hs)),
            kvq_ir::ParamType::F32 => (BufferMut::F32(fz), BufferMut::F32(fs)),
        };
        let mut args = [
            HostArg::ReadOnly(BufferRef::F16(x)),
            HostArg::Buffer(BufferMut::U8(&mut self.codes)),
            HostArg::Buffer(zero),
            HostArg::Buffer(scale),
            HostArg::Buffer(BufferMut::U32(&mut self.status)),
            HostArg::U32(self.shape[0] as u32),
            HostArg::U32(self.shape[1] as u32),
        ];
        self.kernel.check_sizes(&args, self.grid, None).unwrap();
        // SAFETY: `check_sizes` matched every buffer to the length the lowered kernel states
        // for this shape, and the grid to its bound.
        unsafe { self.kernel.launch(&mut args, self.grid) }.unwrap();
    }
}

/// Prints how many times faster `subject` ran than each of `baselines`, all of one group and run.
pub fn print_speedups(group: &str, baselines: &[&str], subject: &str) {
    let Some(t) = mean_ns(group, subject) else {
        eprintln!("{group}: no estimate for {subject}; run the whole group");
        return;
    };
    for base in baselines {
        match mean_ns(group, base) {
            Some(b) => println!("{group}: {subject} is {:.2}x faster than {base}", b / t),
            None => println!("{group}: no estimate for {base}"),
        }
    }
}
