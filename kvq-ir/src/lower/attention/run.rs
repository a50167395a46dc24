//! The arguments of an attention launch on host memory, independent of the backend that runs
//! the kernels (the interpreter here, generated host code in `kvq-codegen`).

use crate::ir::interp::{Arg, Buffer};
use crate::ir::{check_launch, ArgSize, Signature, SizeError};
use crate::lower::args::param_values;
use crate::lower::io::values_buffer;
use crate::reference::quantize::{param_shape, row_bytes};
use crate::reference::PackedSpan;
use crate::scheme::CacheScheme;
use crate::tensor::Tensor3;

use super::{
    plan, AttentionKernels, AttentionLayout, AttentionSchedule, AttentionShape, BatchPlan,
    SeqExtent,
};
use crate::lower::LowerError;

/// One sequence of a batch: its query `[q_heads, head_dim]`, its full-precision tokens
/// `(k, v)` = `[kv_heads, n, head_dim]` each (prefix and suffix together, if any; rounded to the
/// shape's `fp` type when that is f16 or bf16), and its quantized span `(keys, values)`, if any.
#[derive(Debug, Clone, Copy)]
pub struct SeqData<'a> {
    /// The query.
    pub q: &'a [f32],
    /// Full-precision keys and values.
    pub fp: Option<(&'a Tensor3, &'a Tensor3)>,
    /// The quantized span.
    pub span: Option<(&'a PackedSpan, &'a PackedSpan)>,
}

/// The argument lists of the three kernels for one batch, built once and launched any number
/// of times (the buffers they write are overwritten by each launch).
#[derive(Debug)]
pub struct AttentionArgs {
    /// The batch plan.
    plan: BatchPlan,
    /// Arguments of `stats` (empty without calibration), `partial` and `combine`.
    stats: Vec<Arg>,
    /// See [`AttentionArgs::stats`].
    partial: Vec<Arg>,
    /// See [`AttentionArgs::stats`].
    combine: Vec<Arg>,
    /// Sequences, kv heads, head dim, q heads.
    batch: usize,
    q_heads: usize,
    head_dim: usize,
    /// Blocks of the work-item kernels and of `combine`.
    item_blocks: u32,
    combine_blocks: u32,
}

/// Lengths of the buffers the attention kernels write for one batch: `partial`'s `stats`,
/// `span_logits`, `part_ml` and `part_acc` (read by `combine`), and `combine`'s `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLens {
    /// Span-logit extremes per (work item, query head) slot.
    pub stats: usize,
    /// Saved logits (see [`AttentionSchedule::saved_logits_len`]).
    pub span_logits: usize,
    /// Running max and sum per slot.
    pub part_ml: usize,
    /// Accumulator per slot, `head_dim` each.
    pub part_acc: usize,
    /// Outputs, `[batch, q_heads, head_dim]`.
    pub out: usize,
}

impl WorkLens {
    /// The lengths for `plan` (of `batch` sequences, `kv_heads` x `group` query heads).
    pub fn new(
        scheme: &CacheScheme,
        schedule: &AttentionSchedule,
        plan: &BatchPlan,
        kv_heads: usize,
        group: usize,
        head_dim: usize,
        batch: usize,
    ) -> Result<WorkLens, LowerError> {
        let too_big = || shape_error("the batch exceeds 32-bit offsets".into());
        let slots = plan
            .chunks()
            .checked_mul(kv_heads)
            .and_then(|x| x.checked_mul(group))
            .ok_or_else(too_big)?;
        let lens = WorkLens {
            stats: slots.checked_mul(2).ok_or_else(too_big)?,
            // As `AttentionSchedule::saved_logits_len`, with the product checked.
            span_logits: match (schedule.layout, scheme.calibrate) {
                (AttentionLayout::ThreadPerItem, Some(_)) => slots
                    .checked_mul(schedule.chunk as usize)
                    .ok_or_else(too_big)?,
                _ => 1,
            },
            part_ml: slots.checked_mul(2).ok_or_else(too_big)?,
            part_acc: slots.checked_mul(head_dim).ok_or_else(too_big)?,
            out: batch
                .checked_mul(kv_heads * group * head_dim)
                .ok_or_else(too_big)?,
        };
        u32::try_from(lens.span_logits).map_err(|_| too_big())?;
        Ok(lens)
    }
}

/// Whether a span's codes and parameters have the lengths its shape and scheme give
/// (SPEC.md section 3).
fn span_sizes_fit(span: &PackedSpan) -> bool {
    let (shape, scheme) = (span.shape, &span.scheme);
    let codes = shape.heads * shape.tokens * row_bytes(scheme, shape.dim);
    let params: usize = param_shape(scheme, shape).iter().product();
    span.codes.len() == codes && span.zero.len() == params && span.scale.len() == params
}

fn shape_error(why: String) -> LowerError {
    LowerError::Schedule(why)
}

impl AttentionArgs {
    /// Concatenates the batch's data in plan order. Shapes are checked; spans must use
    /// `scheme`'s key and value schemes.
    pub fn new(
        scheme: &CacheScheme,
        shape: AttentionShape,
        schedule: &AttentionSchedule,
        kv_heads: usize,
        seqs: &[SeqData<'_>],
    ) -> Result<AttentionArgs, LowerError> {
        let (d, g) = (shape.head_dim as usize, shape.group as usize);
        let q_heads = kv_heads * g;
        let mut extents = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            if s.q.len() != q_heads * d {
                return Err(shape_error(format!(
                    "sequence {i}: query of {} values, expected {}",
                    s.q.len(),
                    q_heads * d
                )));
            }
            let fp_tokens = match s.fp {
                Some((k, v)) => {
                    let want = [kv_heads, k.shape().tokens, d];
                    if k.shape().dims() != want || v.shape().dims() != want {
                        return Err(shape_error(format!(
                            "sequence {i}: fp shapes differ from {want:?}"
                        )));
                    }
                    k.shape().tokens
                }
                None => 0,
            };
            let span_tokens = match s.span {
                Some((k, v)) => {
                    let ok = k.scheme == scheme.key
                        && v.scheme == scheme.value
                        && k.shape == v.shape
                        && k.shape.heads == kv_heads
                        && k.shape.dim == d
                        && span_sizes_fit(k)
                        && span_sizes_fit(v);
                    if !ok {
                        return Err(shape_error(format!("sequence {i}: span does not fit")));
                    }
                    k.shape.tokens
                }
                None => 0,
            };
            extents.push(SeqExtent {
                fp_tokens,
                span_tokens,
            });
        }
        let plan = plan(scheme, kv_heads, d, &extents, schedule)?;
        let mut q = Vec::with_capacity(seqs.len() * q_heads * d);
        let (mut fk, mut fv) = (
            Vec::with_capacity(plan.fp_elems),
            Vec::with_capacity(plan.fp_elems),
        );
        let (mut kc, mut kz, mut ks) = (Vec::new(), Vec::new(), Vec::new());
        let (mut vc, mut vz, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for s in seqs {
            q.extend_from_slice(s.q);
            if let Some((k, v)) = s.fp {
                fk.extend_from_slice(k.data());
                fv.extend_from_slice(v.data());
            }
            if let Some((k, v)) = s.span {
                kc.extend_from_slice(&k.codes);
                kz.extend_from_slice(&k.zero);
                ks.extend_from_slice(&k.scale);
                vc.extend_from_slice(&v.codes);
                vz.extend_from_slice(&v.zero);
                vs.extend_from_slice(&v.scale);
            }
        }
        // Empty buffers get one element so every backend can address them.
        let nonempty = |mut v: Vec<f32>| {
            if v.is_empty() {
                v.push(0.0);
            }
            v
        };
        let nonempty_u8 = |mut v: Vec<u8>| {
            if v.is_empty() {
                v.push(0);
            }
            v
        };
        let chunks = plan.chunks();
        let work = WorkLens::new(scheme, schedule, &plan, kv_heads, g, d, seqs.len())?;
        let too_big = || shape_error("the batch needs more than 2^32 - 1 blocks".to_string());
        let item_blocks = u32::try_from(schedule.item_blocks((chunks * kv_heads) as u64))
            .map_err(|_| too_big())?;
        let combine_blocks = u32::try_from(schedule.combine_blocks((seqs.len() * q_heads) as u64))
            .map_err(|_| too_big())?;
        let mut partial = vec![
            Arg::Buffer(Buffer::F32(q)),
            Arg::Buffer(Buffer::U32(plan.seqs.clone())),
            Arg::Buffer(Buffer::U32(plan.work_seq.clone())),
            Arg::Buffer(values_buffer(&nonempty(fk), shape.fp)),
            Arg::Buffer(values_buffer(&nonempty(fv), shape.fp)),
            Arg::Buffer(Buffer::U8(nonempty_u8(kc))),
            Arg::Buffer(param_values(scheme.key.params, &nonempty(kz))),
            Arg::Buffer(param_values(scheme.key.params, &nonempty(ks))),
            Arg::Buffer(Buffer::U8(nonempty_u8(vc))),
            Arg::Buffer(param_values(scheme.value.params, &nonempty(vz))),
            Arg::Buffer(param_values(scheme.value.params, &nonempty(vs))),
            Arg::Buffer(Buffer::F32(vec![0.0; work.stats])),
            Arg::Buffer(Buffer::F32(vec![0.0; work.span_logits])),
            Arg::Buffer(Buffer::F32(vec![0.0; work.part_ml])),
            Arg::Buffer(Buffer::F32(vec![0.0; work.part_acc])),
            Arg::U32(kv_heads as u32),
            Arg::U32(chunks as u32),
            Arg::U32(plan.span_chunk),
        ];
        let stats = if scheme.calibrate.is_some() {
            // Every buffer is moved in from `partial` for each launch.
            let mut s: Vec<Arg> = (0..=super::partial_abi::SPAN_LOGITS)
                .map(|_| Arg::Buffer(Buffer::U8(Vec::new())))
                .collect();
            s.push(Arg::U32(kv_heads as u32));
            s.push(Arg::U32(chunks as u32));
            s.push(Arg::U32(plan.span_chunk));
            s
        } else {
            Vec::new()
        };
        let combine = vec![
            Arg::Buffer(Buffer::U32(plan.seqs.clone())),
            Arg::Buffer(Buffer::F32(vec![0.0; work.part_ml])),
            Arg::Buffer(Buffer::F32(vec![0.0; work.part_acc])),
            Arg::Buffer(Buffer::F32(vec![0.0; work.out])),
            Arg::U32(kv_heads as u32),
            Arg::U32(seqs.len() as u32),
        ];
        partial.shrink_to_fit();
        Ok(AttentionArgs {
            plan,
            stats,
            partial,
            combine,
            batch: seqs.len(),
            q_heads,
            head_dim: d,
            item_blocks,
            combine_blocks,
        })
    }

    /// The batch plan.
    pub fn plan(&self) -> &BatchPlan {
        &self.plan
    }

    /// The arguments of `partial` (read-only: its inputs, to write them elsewhere).
    pub fn partial_args(&self) -> &[Arg] {
        &self.partial
    }

    /// Runs the kernels with `run(kernel, args, blocks)`, moving buffers between the launches
    /// (a host backend shares them; a device backend would keep them resident). Before each
    /// launch, every buffer's length and the grid are checked against the kernel's stated
    /// sizes for this plan ([`crate::ir::check_launch`]): `run` gets only launches whose
    /// accesses stay inside their buffers.
    pub fn launch<K: Signature, E: From<SizeError>>(
        &mut self,
        kernels: &AttentionKernels<K>,
        mut run: impl FnMut(&K, &mut [Arg], u32) -> Result<(), E>,
    ) -> Result<(), E> {
        use super::{combine_abi as c, partial_abi as p};
        let plan = &self.plan;
        let mut run = |kernel: &K, args: &mut [Arg], grid: u32| {
            let sizes: Vec<ArgSize> = args.iter().map(Arg::size).collect();
            check_launch(
                kernel.name(),
                kernel.params(),
                kernel.max_grid(),
                &sizes,
                grid,
                Some(plan),
            )?;
            run(kernel, args, grid)
        };
        if let Some(stats) = &kernels.stats {
            for i in 0..=p::SPAN_LOGITS {
                swap(&mut self.partial, i, &mut self.stats, i);
            }
            let r = run(stats, &mut self.stats, self.item_blocks);
            for i in 0..=p::SPAN_LOGITS {
                swap(&mut self.partial, i, &mut self.stats, i);
            }
            r?;
        }
        run(&kernels.partial, &mut self.partial, self.item_blocks)?;
        swap(&mut self.partial, p::PART_ML, &mut self.combine, c::PART_ML);
        swap(
            &mut self.partial,
            p::PART_ACC,
            &mut self.combine,
            c::PART_ACC,
        );
        let result = run(&kernels.combine, &mut self.combine, self.combine_blocks);
        swap(&mut self.partial, p::PART_ML, &mut self.combine, c::PART_ML);
        swap(
            &mut self.partial,
            p::PART_ACC,
            &mut self.combine,
            c::PART_ACC,
        );
        result
    }

    /// The outputs of the last launch, one `[q_heads, head_dim]` vector per sequence.
    pub fn outputs(&self) -> Vec<Vec<f32>> {
        let Some(Arg::Buffer(Buffer::F32(out))) =
            self.combine.get(super::combine_abi::OUT as usize)
        else {
            return Vec::new();
        };
        out.chunks(self.q_heads * self.head_dim)
            .take(self.batch)
            .map(<[f32]>::to_vec)
            .collect()
    }
}

fn swap(a: &mut [Arg], i: u32, b: &mut [Arg], j: u32) {
    std::mem::swap(&mut a[i as usize], &mut b[j as usize]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Kernel, SizeError};
    use crate::lower::attention::attention;

    /// A buffer shortened after planning (what a public `Vec<Arg>` once allowed) stops the
    /// launch with a size error before any kernel runs.
    #[test]
    fn a_short_buffer_stops_the_launch_before_any_kernel_runs() {
        let scheme = CacheScheme::parse(
            "key(bits = 1, axis = channel, group = all, rule = minmax), \
             value(bits = 2, axis = token, group = 32, rule = minmax)",
        )
        .unwrap();
        let shape = AttentionShape {
            fp: crate::lower::InputType::F32,
            head_dim: 64,
            group: 2,
        };
        let schedule = AttentionSchedule::host_default(&scheme);
        let kernels = attention(&scheme, shape, &schedule).unwrap();
        let x = Tensor3::new(
            [2, 40, 64],
            (0..2 * 40 * 64).map(|i| (i % 7) as f32).collect(),
        )
        .unwrap();
        let k = crate::reference::quantize(&x, &scheme.key).unwrap();
        let v = crate::reference::quantize(&x, &scheme.value).unwrap();
        let q = vec![0.5f32; 4 * 64];
        let seq = SeqData {
            q: &q,
            fp: Some((&x, &x)),
            span: Some((&k, &v)),
        };
        let mut args = AttentionArgs::new(&scheme, shape, &schedule, 2, &[seq]).unwrap();
        let launched = std::cell::RefCell::new(Vec::new());
        let run = |k: &Kernel, _: &mut [Arg], _| -> Result<(), SizeError> {
            launched.borrow_mut().push(k.name.clone());
            Ok(())
        };
        args.launch(&kernels, run).unwrap();
        assert_eq!(launched.borrow().len(), 2, "partial and combine");
        for (i, name) in [(0, "q"), (3, "fp_k"), (5, "k_codes"), (10, "v_scale")] {
            let mut short = AttentionArgs::new(&scheme, shape, &schedule, 2, &[seq]).unwrap();
            if let Arg::Buffer(Buffer::F32(b)) = &mut short.partial[i] {
                b.pop();
            } else if let Arg::Buffer(Buffer::U8(b)) = &mut short.partial[i] {
                b.pop();
            } else if let Arg::Buffer(Buffer::F16(b)) = &mut short.partial[i] {
                b.pop();
            }
            launched.borrow_mut().clear();
            let err = short.launch(&kernels, run).unwrap_err();
            assert!(
                matches!(&err, SizeError::ShortBuffer { param, .. } if param == name),
                "{err}"
            );
            assert!(launched.borrow().is_empty(), "{name}: {launched:?}");
        }
        // A truncated span is refused when the batch is laid out.
        let mut cut = k.clone();
        cut.codes.pop();
        let seq = SeqData {
            span: Some((&cut, &v)),
            ..seq
        };
        let err = AttentionArgs::new(&scheme, shape, &schedule, 2, &[seq]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid schedule: sequence 0: span does not fit"
        );
    }
}
