//! Fused decode attention through generated host code: the kernels of
//! [`kvq_ir::lower::attention`] compiled once per process and launched over a batch.
//!
//! ```no_run
//! # fn demo(q: &[f32], k: &kvq::reference::PackedSpan, v: &kvq::reference::PackedSpan)
//! # -> Result<(), kvq::backend::BackendError> {
//! use kvq::attention::{HostAttention, SeqData};
//! use kvq::lower::attention::AttentionShape;
//! use kvq::lower::InputType;
//! let scheme = kvq::CacheScheme::parse(
//!     "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
//!      value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
//! ).unwrap();
//! let shape = AttentionShape { head_dim: 128, group: 4, fp: InputType::F32 };
//! let attn = HostAttention::new(&scheme, shape, None)?;
//! let seq = SeqData { q, fp: None, span: Some((k, v)) };
//! let mut args = attn.prepare(8, &[seq])?;
//! attn.run(&mut args)?;
//! let out = args.outputs();
//! # Ok(()) }
//! ```

mod index;
mod scratch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use kvq_codegen::cache::CompileCache;
use kvq_codegen::host::{compile_all, HostArg, HostKernel, Job};
use kvq_codegen::Passes;
use kvq_ir::ir::interp::{Arg, Buffer};
use kvq_ir::lower::attention::{
    plan, AttentionArgs, AttentionKernels, AttentionSchedule, AttentionShape, BatchPlan, SeqExtent,
};
use kvq_ir::lower::io::values_buffer;
use kvq_ir::lower::{InputType, LowerError};
use kvq_ir::{CacheScheme, ParamType, Tensor3, TensorError};
use kvq_runtime::{ParamView, SeqView};

pub use kvq_ir::lower::attention::SeqData;

use crate::backend::{host_args, BackendError};
use crate::tune::attention::{
    default_attention_table, default_attention_table_text, lower_entry, lower_printed, warn_stale,
};
use scratch::{Scratch, SharedScratch};

/// How LLVM optimizes the attention kernels: without its loop unrollers. Their hot loops are
/// already the IR's own 16-lane runs (vectorized whole) and byte-table walks; unrolled, the
/// three kernels of 1-bit CalibQuant (head_dim 128, group 4) took 0.95-1.1 s to compile cold
/// and ran no faster (`kvq bench attention`, interleaved runs, 2026-12-06), against
/// 0.56-0.61 s without.
pub const ATTENTION_PASSES: Passes = Passes {
    unroll_loops: false,
};

/// The attention kernels of one cache scheme and shape, compiled for this CPU (a clone shares
/// them).
#[derive(Clone)]
pub struct HostAttention {
    scheme: CacheScheme,
    shape: AttentionShape,
    schedule: AttentionSchedule,
    compiled: Arc<AttentionKernels<Arc<HostKernel>>>,
    indexed: bool,
    /// The cache path's launch buffers, reused from call to call.
    scratch: SharedScratch,
}

/// What [`HostAttention::new`] was asked for: the scheme's canonical text, the shape and the
/// requested schedule.
type Request = (String, AttentionShape, Option<AttentionSchedule>);

/// The [`HostAttention`]s built in this process, by request: a repeated request skips the
/// lowering, the tuning-table lookup and the compile-cache checks (the table is read once per
/// process, and the lowering is deterministic, so the result cannot differ).
fn built() -> &'static Mutex<HashMap<Request, HostAttention>> {
    static BUILT: OnceLock<Mutex<HashMap<Request, HostAttention>>> = OnceLock::new();
    BUILT.get_or_init(Mutex::default)
}

impl std::fmt::Debug for HostAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAttention")
            .field("scheme", &self.scheme)
            .field("shape", &self.shape)
            .field("schedule", &self.schedule)
            .field("indexed", &self.indexed)
            .finish()
    }
}

impl HostAttention {
    /// Lowers and compiles the kernels through the compile cache the environment names
    /// ([`CompileCache::from_env`]), once per process and request; `schedule` defaults to the
    /// committed attention tuning table's entry for this scheme, shape class and machine, else
    /// [`AttentionSchedule::host_default`] ([`crate::tune::attention`]). See
    /// [`HostAttention::with_cache`].
    pub fn new(
        scheme: &CacheScheme,
        shape: AttentionShape,
        schedule: Option<AttentionSchedule>,
    ) -> Result<HostAttention, BackendError> {
        let request = (scheme.to_string(), shape, schedule);
        if let Some(a) = built().lock().ok().and_then(|b| b.get(&request).cloned()) {
            return Ok(a);
        }
        let attention =
            Self::with_cache(scheme, shape, schedule, CompileCache::from_env().as_ref())?;
        if let Ok(mut b) = built().lock() {
            b.insert(request, attention.clone());
        }
        Ok(attention)
    }

    /// [`HostAttention::new`] through `cache` (none: every kernel built, into temporary
    /// files), not remembered in this process. With a cache, the request's index entry is
    /// tried first (`index`: the kernels' libraries loaded without lowering); otherwise the
    /// kernels are lowered, printed, looked up or built one per core, and indexed.
    pub fn with_cache(
        scheme: &CacheScheme,
        shape: AttentionShape,
        schedule: Option<AttentionSchedule>,
        cache: Option<&CompileCache>,
    ) -> Result<HostAttention, BackendError> {
        let table = schedule
            .is_none()
            .then(default_attention_table_text)
            .flatten();
        let key = cache.map(|_| index::key(scheme, shape, schedule, table));
        let tuned = || default_attention_table().and_then(|t| t.tuned(scheme, shape));
        if let Some(found) = cache.zip(key.as_ref()).and_then(|(c, k)| index::load(c, k)) {
            if found.stale_tuning && tuned().is_some() {
                // The entry's schedule was tuned over another lowering (`tuned` itself warns
                // of an invalid entry or one of another candidate set, and parsing the table
                // of one that cannot be parsed).
                warn_stale(scheme);
            }
            return Ok(HostAttention {
                scheme: *scheme,
                shape,
                schedule: found.schedule,
                compiled: Arc::new(found.kernels),
                indexed: true,
                scratch: SharedScratch::default(),
            });
        }
        let ((schedule, kernels, texts), stale_tuning) = match schedule {
            Some(s) => (lower_printed(scheme, shape, s)?, false),
            None => {
                // The table's warning applies when it holds an entry for the request that is
                // not taken, or when it is there but cannot be parsed.
                let tuned = tuned();
                let unused = tuned.is_none()
                    && default_attention_table()
                        .map_or(table.is_some(), |t| t.holds(scheme, shape));
                let (lowered, stale) = lower_entry(tuned, scheme, shape)?;
                (lowered, stale || unused)
            }
        };
        let jobs: Vec<Job<'_>> = kernels
            .all()
            .zip(&texts)
            .map(|(kernel, ir)| Job { kernel, ir })
            .collect();
        let compiled = compile_all(&jobs, cache, ATTENTION_PASSES)?;
        let compiled = AttentionKernels::from_launch_order(compiled.into_iter().map(Arc::new))
            .ok_or_else(|| {
                BackendError::Lower(LowerError::Schedule(
                    "the attention kernels did not all compile".into(),
                ))
            })?;
        if let Some((cache, key)) = cache.zip(key.as_ref()) {
            index::store(cache, key, schedule, stale_tuning, &compiled);
        }
        Ok(HostAttention {
            scheme: *scheme,
            shape,
            schedule,
            compiled: Arc::new(compiled),
            indexed: false,
            scratch: SharedScratch::default(),
        })
    }

    /// The schedule in use.
    pub fn schedule(&self) -> AttentionSchedule {
        self.schedule
    }

    /// The compiled kernels, in [`AttentionKernels`]' places.
    pub fn compiled(&self) -> &AttentionKernels<Arc<HostKernel>> {
        &self.compiled
    }

    /// Whether the kernels came from the compile cache's index (no lowering in this process).
    pub fn indexed(&self) -> bool {
        self.indexed
    }

    /// Lays out a batch for [`run`](Self::run) (copies the data once).
    pub fn prepare(
        &self,
        kv_heads: usize,
        seqs: &[SeqData<'_>],
    ) -> Result<AttentionArgs, BackendError> {
        Ok(AttentionArgs::new(
            &self.scheme,
            self.shape,
            &self.schedule,
            kv_heads,
            seqs,
        )?)
    }

    /// Launches the kernels over `args`; results are in [`AttentionArgs::outputs`]. The
    /// launches are made from a worker of the host kernels' pool
    /// ([`kvq_codegen::host::on_workers`]): one hand-over for the three instead of one per
    /// launch (about 9x fewer context switches and 8% less CPU time over a `kvq tune-attention`
    /// run of 64-token spans, `perf stat`, 2026-12-06).
    pub fn run(&self, args: &mut AttentionArgs) -> Result<(), BackendError> {
        kvq_codegen::host::on_workers(|| {
            args.launch(
                &self.compiled,
                |compiled: &Arc<HostKernel>, a: &mut [Arg], grid| {
                    let mut host = host_args(a);
                    // SAFETY: `AttentionArgs::launch` checked every buffer against the kernel's
                    // stated length for its plan and the grid against its bound; the `seqs` and
                    // `work_seq` tables are the plan's own (built by `AttentionArgs::new`, not
                    // public).
                    unsafe { compiled.launch(&mut host, grid)? };
                    Ok(())
                },
            )
        })
    }

    /// Prepares, runs and returns the outputs, one `[q_heads, head_dim]` vector per sequence.
    pub fn attend(
        &self,
        kv_heads: usize,
        seqs: &[SeqData<'_>],
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        let mut args = self.prepare(kv_heads, seqs)?;
        self.run(&mut args)?;
        Ok(args.outputs())
    }
}

/// The cache's decode attention through these kernels
/// ([`kvq_runtime::VisualKvCache::attend_with`]): each sequence is launched on the cache's own
/// storage, its span's codes and parameters passed as they are (no copy), so a batch takes one
/// launch of each kernel per sequence.
impl kvq_runtime::AttentionKernel for HostAttention {
    fn attend(&self, batch: &[SeqView<'_>]) -> Result<Vec<Vec<f32>>, String> {
        kvq_codegen::host::on_workers(|| {
            batch
                .iter()
                .map(|s| self.attend_view(s).map_err(|e| e.to_string()))
                .collect()
        })
    }
}

/// The launch argument of full-precision keys (`which` 0) or values (1): `narrow`'s when the
/// kernels read f16 or bf16 rows, else the f32 rows as they are.
fn fp_rows<'a>(
    narrow: &'a Option<(Buffer, Buffer)>,
    which: usize,
    f32_rows: &'a [f32],
) -> HostArg<'a> {
    let rows = match narrow {
        Some((k, _)) if which == 0 => k,
        Some((_, v)) => v,
        None => return f32_rows.into(),
    };
    match rows {
        Buffer::U8(x) => x[..].into(),
        Buffer::U16(x) => x[..].into(),
        Buffer::U32(x) => x[..].into(),
        Buffer::F16(x) => x[..].into(),
        Buffer::BF16(x) => x[..].into(),
        Buffer::F32(x) => x[..].into(),
        Buffer::F64(x) => x[..].into(),
    }
}

/// Read-only launch arguments of a quantized part's parameters.
fn param_args<'a>(p: &ParamView<'a>) -> [HostArg<'a>; 2] {
    match *p {
        ParamView::F16 { zero, scale } => [zero.into(), scale.into()],
        ParamView::F32 { zero, scale } => [zero.into(), scale.into()],
    }
}

impl HostAttention {
    /// Attention for one sequence given as views of a cache's storage. The views' shapes and
    /// schemes are checked, and every launch's buffers against the kernels' stated sizes for
    /// this sequence's plan: a short view is an error, never a read out of bounds.
    fn attend_view(&self, s: &SeqView<'_>) -> Result<Vec<f32>, BackendError> {
        let (d, g) = (self.shape.head_dim as usize, self.shape.group as usize);
        let bad = |why: String| BackendError::Lower(LowerError::Schedule(why));
        if s.q.is_empty() || s.q.len() % (d * g) != 0 {
            return Err(bad(format!(
                "query of {} values is not a whole number of kv heads x {g} query heads x {d}",
                s.q.len()
            )));
        }
        let q_heads = s.q.len() / d;
        let kv = q_heads / g;
        if let Some((k, v)) = &s.span {
            if k.scheme != self.scheme.key || v.scheme != self.scheme.value || k.tokens != v.tokens
            {
                return Err(bad(
                    "the span's schemes or token counts differ from the kernels'".into(),
                ));
            }
        }
        let span_tokens = s.span.map_or(0, |(k, _)| k.tokens);
        let extent = SeqExtent {
            fp_tokens: s.fp_tokens,
            span_tokens,
        };
        let plan = plan(&self.scheme, kv, d, &[extent], &self.schedule)?;
        let chunks = plan.chunks();
        let slots = chunks * kv * g;
        let saved = self.schedule.saved_logits_len(&self.scheme, slots);
        let mut out = vec![0.0f32; q_heads * d];
        self.scratch.with(|sc| {
            sc.size([slots * 2, saved, slots * 2, slots * d]);
            self.launch_view(s, &plan, sc, &mut out)
        })?;
        Ok(out)
    }

    /// The launches of [`attend_view`](Self::attend_view) for `s` and its `plan`, into `out`,
    /// through the buffers of `scratch` (sized for the plan).
    fn launch_view(
        &self,
        s: &SeqView<'_>,
        plan: &BatchPlan,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        let Scratch {
            stats,
            saved_logits,
            ml,
            acc,
        } = scratch;
        let q_heads = out.len() / self.shape.head_dim as usize;
        let kv = q_heads / self.shape.group as usize;
        let chunks = plan.chunks();
        // Kernels never read a part that is absent; they still get a valid address.
        let (one_f, one_u8, one_h) = ([0.0f32], [0u8], [half::f16::ZERO]);
        let absent = |p: ParamType| match p {
            ParamType::F16 => ParamView::F16 {
                zero: &one_h,
                scale: &one_h,
            },
            ParamType::F32 => ParamView::F32 {
                zero: &one_f,
                scale: &one_f,
            },
        };
        let (fp_k, fp_v) = match s.fp_tokens {
            0 => (&one_f[..], &one_f[..]),
            _ => (s.fp_k, s.fp_v),
        };
        // Kernels of narrow rows take them in their type (rounded; exact for rows that came
        // from it).
        let narrow = (self.shape.fp != InputType::F32).then(|| {
            (
                values_buffer(fp_k, self.shape.fp),
                values_buffer(fp_v, self.shape.fp),
            )
        });
        let (kc, kp, vc, vp) = match &s.span {
            Some((k, v)) => (k.codes, k.params, v.codes, v.params),
            None => (
                &one_u8[..],
                absent(self.scheme.key.params),
                &one_u8[..],
                absent(self.scheme.value.params),
            ),
        };
        let (kv32, chunks32) = (kv as u32, chunks as u32);
        let item_blocks = self.schedule.item_blocks((chunks * kv) as u64) as u32;
        let inputs = || {
            let [kz, ks] = param_args(&kp);
            let [vz, vs] = param_args(&vp);
            let a: Vec<HostArg<'_>> = vec![
                s.q.into(),
                plan.seqs[..].into(),
                plan.work_seq[..].into(),
                fp_rows(&narrow, 0, fp_k),
                fp_rows(&narrow, 1, fp_v),
                kc.into(),
                kz,
                ks,
                vc.into(),
                vz,
                vs,
            ];
            a
        };
        // Checks the sizes, then launches: every launch of this function goes through it.
        let launch = |compiled: &HostKernel, a: &mut [HostArg<'_>], blocks: u32| {
            compiled.check_sizes(a, blocks, Some(plan))?;
            // SAFETY: `check_sizes` matched every buffer to the length the kernel states for
            // this plan (and the grid to its bound), and `seqs` / `work_seq` are the plan's
            // own tables.
            unsafe { compiled.launch(a, blocks) }.map_err(BackendError::from)
        };
        if let Some(k) = &self.compiled.stats {
            let mut a = inputs();
            a.extend([
                HostArg::from(&mut stats[..]),
                HostArg::from(&mut saved_logits[..]),
                HostArg::U32(kv32),
                HostArg::U32(chunks32),
                HostArg::U32(plan.span_chunk),
            ]);
            launch(k, &mut a, item_blocks)?;
        }
        let mut a = inputs();
        a.extend([
            HostArg::from(&stats[..]),
            HostArg::from(&saved_logits[..]),
            HostArg::from(&mut ml[..]),
            HostArg::from(&mut acc[..]),
            HostArg::U32(kv32),
            HostArg::U32(chunks32),
            HostArg::U32(plan.span_chunk),
        ]);
        launch(&self.compiled.partial, &mut a, item_blocks)?;
        drop(a);
        let mut a: Vec<HostArg<'_>> = vec![
            plan.seqs[..].into(),
            ml[..].into(),
            acc[..].into(),
            (&mut out[..]).into(),
            HostArg::U32(kv32),
            HostArg::U32(1),
        ];
        let blocks = self.schedule.combine_blocks(q_heads as u64) as u32;
        launch(&self.compiled.combine, &mut a, blocks)?;
        Ok(())
    }
}

/// K/V-like synthetic data `[heads, tokens, dim]` for benchmarks, tuning and GPU cases: a
/// per-channel offset `offset * sin(0.37 c)` plus uniform noise in [-0.5, 0.5) from a xorshift
/// generator seeded with `seed` (deterministic). Errors on a zero size.
pub fn synthetic_kv(
    heads: usize,
    tokens: usize,
    dim: usize,
    seed: u64,
    offset: f32,
) -> Result<Tensor3, TensorError> {
    let mut s = seed | 1;
    let data = (0..heads * tokens * dim)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let noise = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            offset * ((i % dim.max(1)) as f32 * 0.37).sin() + noise
        })
        .collect();
    Tensor3::new([heads, tokens, dim], data)
}
