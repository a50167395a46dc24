//! The search: every candidate compiled, checked bit for bit against the default, and timed.

use std::sync::Arc;

use super::*;
use crate::backend::host_kernels_printed;
use kvq_codegen::Passes;
use kvq_ir::ir::Kernel;
use kvq_ir::lower::args::QuantizeArgs;
use kvq_ir::lower::quantize_abi as abi;

/// What [`tune`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneResult {
    /// The chosen schedule: the one with the lowest [`TuneResult::ratios`] entry, unless that
    /// is above 0.97 (less than 3 % faster than the default), when the default is kept.
    pub best: Schedule,
    /// Every candidate with its median time in ns, in candidate order.
    pub timings: Vec<(Schedule, f64)>,
    /// Bytes one launch reads and writes (input, codes, parameters), for bandwidth figures.
    pub bytes: u64,
    /// Timed rounds each median is over (fewer than asked when the budget ran short).
    pub rounds: usize,
    /// Per candidate, in candidate order: the median over rounds of its time divided by the
    /// default schedule's time in the same round. The choice is made on these.
    pub ratios: Vec<f64>,
}

impl TuneResult {
    /// The median ratio of `schedule`'s time to the default's, if it was timed.
    pub fn ratio_of(&self, schedule: &Schedule) -> Option<f64> {
        let i = self.timings.iter().position(|(s, _)| s == schedule)?;
        self.ratios.get(i).copied()
    }

    /// The median time of `schedule`, if it was timed.
    pub fn median_of(&self, schedule: &Schedule) -> Option<f64> {
        self.timings
            .iter()
            .find(|(s, _)| s == schedule)
            .map(|t| t.1)
    }
}

/// K-like synthetic data: per-channel offsets plus xorshift noise, deterministic.
fn synthetic(shape: Shape3) -> Result<Tensor3, QuantError> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let data = (0..shape.len())
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let noise = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            noise + ((i % shape.dim) as f32 * 0.37).sin()
        })
        .collect();
    Ok(Tensor3::new(shape.dims(), data)?)
}

/// Launches `kernel` over `args` (allocated by [`tune`] for its shape), sizes checked.
fn launch(kernel: &HostKernel, args: &mut [Arg], grid: u32) -> Result<(), BackendError> {
    crate::backend::launch_host(kernel, args, grid)
}

/// The outputs of a launch as bits: codes, zero bits, scale bits, status.
fn output_bits(args: &[Arg]) -> [Vec<u32>; 4] {
    let bits = |a: &Arg| -> Vec<u32> {
        match a {
            Arg::Buffer(Buffer::U8(v)) => v.iter().map(|&x| x as u32).collect(),
            Arg::Buffer(Buffer::U32(v)) => v.clone(),
            Arg::Buffer(Buffer::F16(v)) => v.iter().map(|x| x.to_bits() as u32).collect(),
            Arg::Buffer(Buffer::F32(v)) => v.iter().map(|x| x.to_bits()).collect(),
            _ => Vec::new(),
        }
    };
    [abi::CODES, abi::ZERO, abi::SCALE, abi::STATUS].map(|i| bits(&args[i as usize]))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Tunes the host quantize kernel of `scheme` for a `heads` x `tokens` span of `shape`: compiles
/// every [`candidates`] schedule, checks that each reproduces the default schedule's codes and
/// parameters bit for bit, then times `repeats` rounds after one warm-up. Rounds visit every
/// candidate in turn, so load from other processes spreads over all of them; each candidate is
/// judged by the median over rounds of its time relative to the default's in the same round
/// (noise that lasts a round cancels), and wins only when that is below 0.97.
pub fn tune(
    scheme: &Scheme,
    shape: ShapeClass,
    heads: usize,
    tokens: usize,
    repeats: usize,
) -> Result<TuneResult, TuneError> {
    tune_within(scheme, shape, heads, tokens, repeats, Duration::MAX)
}

/// [`tune`], with fewer rounds (but at least one) where `repeats` rounds would take longer than
/// `budget`, as estimated from the warm-up launches: slow schemes (exact quantiles) still get
/// tuned in bounded time.
pub fn tune_within(
    scheme: &Scheme,
    shape: ShapeClass,
    heads: usize,
    tokens: usize,
    repeats: usize,
    budget: Duration,
) -> Result<TuneResult, TuneError> {
    let span = Shape3 {
        heads,
        tokens,
        dim: shape.head_dim as usize,
    };
    let bad_shape = || TuneError::Shape { heads, tokens };
    if heads == 0 || tokens == 0 {
        return Err(bad_shape());
    }
    check_shape(scheme, span)?;
    let x = synthetic(span)?;
    let n_params: usize = param_shape(scheme, span).iter().product();
    let codes_len = heads * tokens * row_bytes(scheme, span.dim);
    let mut args = QuantizeArgs::new(scheme, input_buffer(&x, shape.input), span)
        .map_err(|_| bad_shape())?
        .into_args();
    let param_size = match scheme.params {
        kvq_ir::ParamType::F16 => 2,
        kvq_ir::ParamType::F32 => 4,
    };
    let bytes =
        (span.len() * shape.input.scalar().size() + codes_len + 2 * n_params * param_size) as u64;

    let default = Schedule::host_default(scheme, shape);
    let list = candidates(scheme, shape);
    let mut lowered = Vec::with_capacity(list.len());
    let mut grids = Vec::with_capacity(list.len());
    for &schedule in &list {
        let l = lower::quantize(scheme, shape, &schedule)?;
        let grid = l
            .launch
            .grid(heads as u32, tokens as u32, l.kernel.block_size);
        grids.push(u32::try_from(grid).map_err(|_| bad_shape())?);
        lowered.push(l);
    }
    // Every candidate compiled at once (one kernel per core).
    let kernels: Vec<&Kernel> = lowered.iter().map(|l| &l.kernel).collect();
    let texts = kernels.iter().map(|k| kvq_ir::ir::print(k)).collect();
    let compiled: Vec<(Schedule, Arc<HostKernel>, u32)> =
        host_kernels_printed(&kernels, texts, Passes::default())
            .map_err(|e| failing_candidate(&list, &kernels).unwrap_or((default, e)))
            .map_err(|(schedule, source)| TuneError::Backend { schedule, source })?
            .into_iter()
            .zip(&list)
            .zip(grids)
            .map(|((kernel, &schedule), grid)| (schedule, kernel, grid))
            .collect();

    // The default's output first, then every candidate's against it (this is the warm-up).
    let run = |k: &HostKernel, s: Schedule, g: u32, args: &mut [Arg]| {
        launch(k, args, g).map_err(|source| TuneError::Backend {
            schedule: s,
            source,
        })
    };
    let default_idx = list.iter().position(|s| *s == default).unwrap_or(0);
    let (s, k, g) = &compiled[default_idx];
    run(k, *s, *g, &mut args)?;
    let expected = output_bits(&args);
    if expected[3].iter().any(|&st| st != 0) {
        return Err(TuneError::Mismatch {
            schedule: *s,
            what: "status",
        });
    }
    let warm_up = Instant::now();
    for (s, k, g) in &compiled {
        clear_outputs(&mut args);
        run(k, *s, *g, &mut args)?;
        let got = output_bits(&args);
        for (i, what) in ["codes", "zero", "scale", "status"].into_iter().enumerate() {
            if got[i] != expected[i] {
                return Err(TuneError::Mismatch { schedule: *s, what });
            }
        }
    }

    let round = warm_up.elapsed().as_secs_f64().max(1e-9);
    let affordable = (budget.as_secs_f64() / round).floor() as usize;
    let rounds = repeats.min(affordable).max(1);
    let mut samples = vec![Vec::with_capacity(rounds); compiled.len()];
    for _ in 0..rounds {
        for (i, (s, k, g)) in compiled.iter().enumerate() {
            let start = Instant::now();
            run(k, *s, *g, &mut args)?;
            samples[i].push(start.elapsed().as_nanos() as f64);
        }
    }
    // Each round's time relative to the default's in the same round: load that comes and goes
    // over a round affects both and cancels.
    let ratios: Vec<f64> = samples
        .iter()
        .map(|v| {
            median(
                v.iter()
                    .zip(&samples[default_idx])
                    .map(|(t, d)| t / d)
                    .collect(),
            )
        })
        .collect();
    let timings: Vec<(Schedule, f64)> = list
        .iter()
        .zip(samples)
        .map(|(s, v)| (*s, median(v)))
        .collect();
    let fastest = (0..list.len())
        .min_by(|&a, &b| ratios[a].total_cmp(&ratios[b]))
        .unwrap_or(default_idx);
    let best = if ratios[fastest] < 1.0 - MIN_GAIN {
        list[fastest]
    } else {
        default
    };
    Ok(TuneResult {
        best,
        timings,
        bytes,
        rounds,
        ratios,
    })
}

/// The first candidate whose kernel does not compile on its own, with its error (to name it
/// when compiling them together failed).
fn failing_candidate(list: &[Schedule], kernels: &[&Kernel]) -> Option<(Schedule, BackendError)> {
    list.iter()
        .zip(kernels)
        .find_map(|(&s, k)| host_kernel(k).err().map(|e| (s, e)))
}

/// Zeroes the codes, parameter and status buffers so a launch that skips an element shows.
fn clear_outputs(args: &mut [Arg]) {
    for a in &mut args[abi::CODES as usize..=abi::STATUS as usize] {
        match a {
            Arg::Buffer(Buffer::U8(v)) => v.fill(0),
            Arg::Buffer(Buffer::U32(v)) => v.fill(0),
            Arg::Buffer(Buffer::F16(v)) => v.iter_mut().for_each(|x| *x = Default::default()),
            Arg::Buffer(Buffer::F32(v)) => v.fill(0.0),
            _ => {}
        }
    }
}
