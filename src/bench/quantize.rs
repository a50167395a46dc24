//! Host quantize throughput on an f16 span (default `[8, 16384, 128]`, K-like data), each
//! generated kernel (the tuned schedule `kvq quantize` uses) against a copy of the same bytes
//! on every core, timed in the same process: the share of copy bandwidth each kernel reaches.

use half::f16;
use kvq_codegen::host::{BufferMut, BufferRef, HostArg, HostKernel};
use kvq_ir::lower::{InputType, Schedule, ShapeClass};
use kvq_ir::reference::quantize::{param_shape, row_bytes};
use kvq_ir::{ParamType, Scheme, Shape3};

use super::{timed, Contender, Order, Rounds};

/// The schemes `kvq bench quantize` times by default: CalibQuant's 1-bit keys, KIVI's 2-bit
/// keys and values, a 4-bit token scheme, quantile and mse.
pub const SCHEMES: [&str; 6] = [
    "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
    "bits = 2, axis = channel, group = 32, rule = minmax",
    "bits = 2, axis = token, group = 32, rule = minmax",
    "bits = 4, axis = token, group = all, rule = minmax",
    "bits = 1, axis = channel, group = all, rule = quantile(0.15)",
    "bits = 1, axis = channel, group = all, rule = mse",
];

/// The figures of one scheme; times are medians in seconds per call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeRow {
    /// The scheme.
    pub scheme: String,
    /// The order of the timed calls.
    pub order: Order,
    /// The generated host kernel.
    pub kvq_s: f64,
    /// The copy of the input's bytes on every core.
    pub copy_s: f64,
}

impl QuantizeRow {
    /// The kernel's bandwidth (input bytes per second) as a fraction of the copy's.
    pub fn copy_share(&self) -> f64 {
        self.copy_s / self.kvq_s
    }
}

/// K-like f16 data of `shape`: per-channel offsets plus noise.
pub fn span(shape: Shape3) -> Vec<f16> {
    let mut s = 0x2545F4914F6CDD1Du64;
    (0..shape.len())
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let noise = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            f16::from_f32(noise + ((i % shape.dim) as f32 * 0.37).sin())
        })
        .collect()
}

/// A copy of `src` into `dst` on every core, the bandwidth baseline: one chunk a core, on the
/// host kernels' own worker pool ([`kvq_codegen::host::on_workers`]), so that the copy and the
/// kernels it is compared with reach their threads the same way (not a thread spawned per core
/// and call, which the kernels no longer pay).
pub fn parallel_copy(src: &[f16], dst: &mut [f16]) {
    use rayon::prelude::*;
    let workers = kvq_codegen::host::cores();
    let chunk = src.len().div_ceil(workers).max(1);
    kvq_codegen::host::on_workers(|| {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, c)| d.copy_from_slice(c));
    });
}

/// A compiled host quantize kernel with its output buffers allocated once, so that a
/// benchmark times the launch alone.
#[derive(Debug)]
pub struct HostQuantizer {
    kernel: HostKernel,
    grid: u32,
    params: ParamType,
    shape: Shape3,
    codes: Vec<u8>,
    half_params: [Vec<f16>; 2],
    f32_params: [Vec<f32>; 2],
    status: Vec<u32>,
}

impl HostQuantizer {
    /// Lowers, verifies and compiles `scheme`'s quantize kernel under `schedule` for f16 spans
    /// of `shape`, through the environment's compile cache (compiling is not timed; a kernel
    /// loaded from a cache file lets `perf` name its symbols).
    pub fn new(scheme: &Scheme, schedule: &Schedule, shape: Shape3) -> anyhow::Result<Self> {
        let class = ShapeClass {
            head_dim: u32::try_from(shape.dim)?,
            input: InputType::F16,
        };
        let lowered = kvq_ir::lower::quantize(scheme, class, schedule)?;
        let kernel = kvq_codegen::host::compile_with(
            &lowered.kernel,
            kvq_codegen::cache::CompileCache::from_env().as_ref(),
        )?;
        let (heads, tokens) = (u32::try_from(shape.heads)?, u32::try_from(shape.tokens)?);
        let grid = lowered
            .launch
            .grid(heads, tokens, lowered.kernel.block_size);
        let n: usize = param_shape(scheme, shape).iter().product();
        Ok(HostQuantizer {
            kernel,
            grid: u32::try_from(grid)?,
            params: scheme.params,
            shape,
            codes: vec![0; shape.heads * shape.tokens * row_bytes(scheme, shape.dim)],
            half_params: [vec![f16::ZERO; n], vec![f16::ZERO; n]],
            f32_params: [vec![0.0; n], vec![0.0; n]],
            status: vec![0],
        })
    }

    /// The tuned schedule (what `kvq quantize --backend host` runs) for `scheme` at `shape`.
    pub fn tuned(scheme: &Scheme, shape: Shape3) -> anyhow::Result<Self> {
        let class = ShapeClass {
            head_dim: u32::try_from(shape.dim)?,
            input: InputType::F16,
        };
        let table = crate::tune::default_table();
        let schedule = crate::tune::schedule_for(table, scheme, class, shape.heads, shape.tokens);
        Self::new(scheme, &schedule, shape)
    }

    /// Quantizes the f16 span `x` (of the shape given to [`HostQuantizer::new`]).
    pub fn run(&mut self, x: &[f16]) -> anyhow::Result<()> {
        let [hz, hs] = &mut self.half_params;
        let [fz, fs] = &mut self.f32_params;
        let (zero, scale) = match self.params {
            ParamType::F16 => (BufferMut::F16(hz), BufferMut::F16(hs)),
            ParamType::F32 => (BufferMut::F32(fz), BufferMut::F32(fs)),
        };
        let mut args = [
            HostArg::ReadOnly(BufferRef::F16(x)),
            HostArg::Buffer(BufferMut::U8(&mut self.codes)),
            HostArg::Buffer(zero),
            HostArg::Buffer(scale),
            HostArg::Buffer(BufferMut::U32(&mut self.status)),
            HostArg::U32(self.shape.heads as u32),
            HostArg::U32(self.shape.tokens as u32),
        ];
        self.kernel.check_sizes(&args, self.grid, None)?;
        // SAFETY: `check_sizes` matched every buffer, the input included, to the length the
        // lowered kernel states for this shape, and the grid to its bound.
        unsafe { self.kernel.launch(&mut args, self.grid)? };
        Ok(())
    }
}

/// Times the tuned host kernel of each of `schemes` and the copy at `shape`, over `rounds`
/// ([`super::timed`]: the copy is timed again for every scheme, beside it).
pub fn run(schemes: &[Scheme], shape: Shape3, rounds: Rounds) -> anyhow::Result<Vec<QuantizeRow>> {
    let (h, t, d) = (shape.heads as u64, shape.tokens as u64, shape.dim as u64);
    kvq_ir::limits::check_tensor(h, t, d)?;
    kvq_ir::limits::check_addressable(h, t, d)?;
    anyhow::ensure!(t > 0, "at least one token");
    let x = span(shape);
    let mut copy = vec![f16::ZERO; x.len()];
    let mut rows = Vec::new();
    for scheme in schemes {
        let mut q = HostQuantizer::tuned(scheme, shape)?;
        let times = {
            let (x, copy) = (&x, &mut copy);
            let mut contenders = [
                Contender {
                    name: "copy",
                    run: Box::new(move || {
                        parallel_copy(x, copy);
                        Ok(())
                    }),
                },
                Contender {
                    name: "kvq",
                    run: Box::new(|| q.run(x)),
                },
            ];
            timed(rounds, &mut contenders)?
        };
        rows.push(QuantizeRow {
            scheme: scheme.to_string(),
            order: rounds.order,
            copy_s: times[0],
            kvq_s: times[1],
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_baseline_copies_every_element() {
        for n in [0usize, 1, 3, 1000, 4097] {
            let src: Vec<f16> = (0..n).map(|i| f16::from_f32(i as f32 * 0.25)).collect();
            let mut dst = vec![f16::from_f32(-1.0); n];
            parallel_copy(&src, &mut dst);
            assert_eq!(dst, src, "{n} elements");
        }
    }
}
