//! Decode attention of a [`Cuda`] cache: the batch's data is laid out in plan order on the
//! device (`kvq_ir::lower::attention::plan`), and the generated kernels run once per layer for
//! the whole batch (`stats` with calibration, `partial`, `combine`).
//!
//! Full-precision tokens are gathered per (sequence, kv head) into one `[kv_heads, n, head_dim]`
//! block each by device-to-device copies (prefix, then suffix). A batch with one quantized span
//! lends that span's buffers to the kernels as they are; several spans are concatenated on the
//! device first.

use kvq_ir::lower::attention::{plan, SeqExtent, WorkLens};
use kvq_ir::lower::InputType;

use super::Cuda;
use crate::cache::fp_segment::{with_fp, FpElem};
use crate::cache::segment::{QuantPart, StoredParams};
use crate::cache::sequence::LayerState;
use crate::cache::{CacheError, DeviceError, QueryRef, VisualKvCache};
use crate::cuda::{CudaError, CudaRuntime, DeviceBuffer, NamedArgs};

fn device(op: &'static str) -> impl Fn(CudaError) -> CacheError {
    move |e| CacheError::Device {
        source: DeviceError::new(op, e),
    }
}

/// The key or value buffers of every span of the batch: the one span's own (lent), or a
/// concatenation in batch order.
struct SpanBuffers<'a> {
    codes: &'a DeviceBuffer,
    zero: &'a DeviceBuffer,
    scale: &'a DeviceBuffer,
}

fn parts(part: &QuantPart<Cuda>) -> SpanBuffers<'_> {
    let (zero, scale) = match part.params() {
        StoredParams::F16 { zero, scale } | StoredParams::F32 { zero, scale } => (zero, scale),
    };
    SpanBuffers {
        codes: part.codes(),
        zero,
        scale,
    }
}

/// Concatenates `bufs` (each holding elements of one type) on the device; `one` elements of
/// zeros when there are none, so every kernel argument is addressable.
fn concat(
    rt: &CudaRuntime,
    bufs: &[&DeviceBuffer],
    zeros: impl Fn(usize) -> Result<DeviceBuffer, CudaError>,
) -> Result<DeviceBuffer, CudaError> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut out = zeros(total.max(1))?;
    let mut at = 0;
    for b in bufs {
        let n = b.len();
        match b {
            DeviceBuffer::U8(_) => rt.copy_at::<u8>(&mut out, at, b, 0..n)?,
            DeviceBuffer::F16(_) => rt.copy_at::<half::f16>(&mut out, at, b, 0..n)?,
            DeviceBuffer::F32(_) => rt.copy_at::<f32>(&mut out, at, b, 0..n)?,
            DeviceBuffer::U32(_) => rt.copy_at::<u32>(&mut out, at, b, 0..n)?,
            DeviceBuffer::Bf16(_) => rt.copy_at::<half::bf16>(&mut out, at, b, 0..n)?,
        }
        at += n;
    }
    Ok(out)
}

impl VisualKvCache<Cuda> {
    /// Decode attention at `layer` for a batch, on the GPU (see [`VisualKvCache::attend`]):
    /// SPEC.md section 4, every query checked before anything runs, through the generated
    /// kernels on the cache's own device buffers, one launch set for the whole batch. Results
    /// match the host within float tolerance (the kernels' `exp` is approximate).
    pub(in crate::cache) fn attend_on_gpu(
        &self,
        layer: usize,
        queries: &[QueryRef<'_>],
    ) -> Result<Vec<Vec<f32>>, CacheError> {
        let states = self.checked_queries(layer, queries)?;
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let dev = &self.device;
        let rt = &dev.rt;
        let (kv, d, g) = (self.shape.kv_heads, self.shape.head_dim, self.shape.group());
        let extents: Vec<SeqExtent> = states
            .iter()
            .map(|s| SeqExtent {
                fp_tokens: s.prefix.tokens() + s.suffix.tokens(),
                span_tokens: s.span.as_ref().map_or(0, |(k, _)| k.tokens()),
            })
            .collect();
        let schedule = &dev.schedule;
        let lowering = |e: kvq_ir::lower::LowerError| CacheError::Kernel(e.to_string());
        let plan = plan(&self.scheme, kv, d, &extents, schedule).map_err(lowering)?;
        let work = WorkLens::new(&self.scheme, schedule, &plan, kv, g, d, states.len())
            .map_err(lowering)?;
        let q: Vec<f32> = queries.iter().flat_map(|q| q.q.iter().copied()).collect();
        let (fp_k, fp_v) = gather_fp(rt, &states, (kv, d), self.fp_storage())
            .map_err(device("gathering fp tokens"))?;
        let spans: Vec<_> = states.iter().filter_map(|s| s.span.as_ref()).collect();
        let keys: Vec<SpanBuffers<'_>> = spans.iter().map(|(k, _)| parts(k)).collect();
        let values: Vec<SpanBuffers<'_>> = spans.iter().map(|(_, v)| parts(v)).collect();
        let mut args = NamedArgs::default();
        let build = |args: &mut NamedArgs<'_>| -> Result<(), CudaError> {
            args.own("q", rt.upload(&q)?);
            args.own("seqs", rt.upload(&plan.seqs)?);
            args.own("work_seq", rt.upload(&plan.work_seq)?);
            args.own("fp_k", fp_k);
            args.own("fp_v", fp_v);
            args.own("stats", rt.zeros::<f32>(work.stats)?);
            args.own("span_logits", rt.zeros::<f32>(work.span_logits)?);
            args.own("part_ml", rt.zeros::<f32>(work.part_ml)?);
            args.own("part_acc", rt.zeros::<f32>(work.part_acc)?);
            args.own("out", rt.zeros::<f32>(work.out)?);
            args.scalar("kv_heads", u32_of(kv)?);
            args.scalar("chunks", u32_of(plan.chunks())?);
            args.scalar("span_chunk", plan.span_chunk);
            args.scalar("batch", u32_of(states.len())?);
            Ok(())
        };
        build(&mut args).map_err(device("preparing the attention launch"))?;
        let key_params = self.scheme.key.params;
        let value_params = self.scheme.value.params;
        for (prefix, bufs, params) in [("k", &keys, key_params), ("v", &values, value_params)] {
            let names = [
                format!("{prefix}_codes"),
                format!("{prefix}_zero"),
                format!("{prefix}_scale"),
            ];
            if let [one] = bufs.as_slice() {
                args.share(&names[0], one.codes);
                args.share(&names[1], one.zero);
                args.share(&names[2], one.scale);
                continue;
            }
            let joined = join(rt, bufs, params).map_err(device("joining the batch's spans"))?;
            for (name, buf) in names.iter().zip(joined) {
                args.own(name, buf);
            }
        }
        let launch = |args: &mut NamedArgs<'_>| -> Result<(), CudaError> {
            for kernel in dev.stats.iter().chain([&dev.partial, &dev.combine]) {
                // SAFETY: `seqs` and `work_seq` were uploaded above from `plan`'s own tables,
                // and `plan` is the plan the launch is sized with.
                unsafe { args.launch_planned(rt, kernel, &plan)? };
            }
            Ok(())
        };
        launch(&mut args).map_err(device("launching attention"))?;
        let out = args
            .buffer("out")
            .map(|b| rt.download::<f32>(b))
            .transpose()
            .map_err(device("reading the attention output"))?
            .unwrap_or_default();
        let per = self.shape.q_heads * d;
        Ok(out
            .chunks(per)
            .take(states.len())
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// The codes, zero points and scales of `bufs` concatenated in batch order.
fn join(
    rt: &CudaRuntime,
    bufs: &[SpanBuffers<'_>],
    params: kvq_ir::ParamType,
) -> Result<[DeviceBuffer; 3], CudaError> {
    let codes: Vec<&DeviceBuffer> = bufs.iter().map(|b| b.codes).collect();
    let zero: Vec<&DeviceBuffer> = bufs.iter().map(|b| b.zero).collect();
    let scale: Vec<&DeviceBuffer> = bufs.iter().map(|b| b.scale).collect();
    let param_zeros = |n| super::zeros_of(rt, params, n);
    Ok([
        concat(rt, &codes, |n| rt.zeros::<u8>(n))?,
        concat(rt, &zero, param_zeros)?,
        concat(rt, &scale, param_zeros)?,
    ])
}

fn u32_of(n: usize) -> Result<u32, CudaError> {
    u32::try_from(n).map_err(|_| CudaError::BundleMismatch(format!("{n} exceeds 32 bits")))
}

/// Every sequence's prefix and suffix as `[kv_heads, n, head_dim]` blocks of the cache's
/// full-precision type `fp`, in batch order.
fn gather_fp(
    rt: &CudaRuntime,
    states: &[&LayerState<Cuda>],
    (kv, d): (usize, usize),
    fp: InputType,
) -> Result<(DeviceBuffer, DeviceBuffer), CudaError> {
    with_fp!(fp, T => gather_typed::<T>(rt, states, kv, d))
}

fn gather_typed<T: FpElem>(
    rt: &CudaRuntime,
    states: &[&LayerState<Cuda>],
    kv: usize,
    d: usize,
) -> Result<(DeviceBuffer, DeviceBuffer), CudaError> {
    let total: usize = states
        .iter()
        .map(|s| (s.prefix.tokens() + s.suffix.tokens()) * kv * d)
        .sum();
    let mut k = rt.zeros::<T>(total.max(1))?;
    let mut v = rt.zeros::<T>(total.max(1))?;
    let mut at = 0;
    for s in states {
        for h in 0..kv {
            for seg in [&s.prefix, &s.suffix] {
                let Some(bufs) = seg.buffers() else {
                    continue;
                };
                let (sk, sv) = T::pair(bufs).ok_or_else(|| {
                    CudaError::BundleMismatch(format!(
                        "a segment's rows are not of the cache's type {}",
                        T::TYPE.name()
                    ))
                })?;
                let n = seg.tokens() * d;
                let from = h * seg.capacity() * d;
                rt.copy_at::<T>(&mut k, at, sk, from..from + n)?;
                rt.copy_at::<T>(&mut v, at, sv, from..from + n)?;
                at += n;
            }
        }
    }
    Ok((k, v))
}
