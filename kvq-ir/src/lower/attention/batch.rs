//! The batch layout the attention kernels read: where each sequence's data starts in the
//! concatenated buffers, and how its tokens are cut into chunks.

use crate::reference::quantize::{param_shape, row_bytes};
use crate::scheme::CacheScheme;
use crate::tensor::Shape3;

use super::{seq_field as f, AttentionSchedule};
use crate::lower::LowerError;

/// The token counts of one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqExtent {
    /// Full-precision tokens (prefix and suffix).
    pub fp_tokens: usize,
    /// Quantized span tokens.
    pub span_tokens: usize,
}

/// The `seqs` and `work_seq` tables of a batch and the sizes of the concatenated buffers, with
/// each sequence's data in batch order: fp `[kv_heads, fp_tokens, head_dim]`, then span codes
/// and parameters in SPEC.md section 3's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// `[batch, seq_field::COUNT]`.
    pub seqs: Vec<u32>,
    /// The sequence of each chunk.
    pub work_seq: Vec<u32>,
    /// Elements of `fp_k` (and of `fp_v`).
    pub fp_elems: usize,
    /// Bytes of key codes, elements of key zero points (and scales).
    pub k_code_bytes: usize,
    /// Key parameters.
    pub k_params: usize,
    /// Bytes of value codes.
    pub v_code_bytes: usize,
    /// Value parameters.
    pub v_params: usize,
    /// Tokens per span chunk ([`AttentionSchedule::span_chunk`]), the kernels' `span_chunk`.
    pub span_chunk: u32,
}

impl BatchPlan {
    /// Work chunks in the batch.
    pub fn chunks(&self) -> usize {
        self.work_seq.len()
    }

    /// A field of sequence `seq`'s row.
    pub fn field(&self, seq: usize, field: u32) -> u32 {
        self.seqs[seq * f::COUNT as usize + field as usize]
    }
}

/// Plans a batch. Errors when a sequence has no token or an offset exceeds `u32`.
pub fn plan(
    scheme: &CacheScheme,
    kv_heads: usize,
    head_dim: usize,
    extents: &[SeqExtent],
    schedule: &AttentionSchedule,
) -> Result<BatchPlan, LowerError> {
    let too_big = || LowerError::Schedule("the batch exceeds 32-bit offsets".to_string());
    let u = |x: usize| u32::try_from(x).map_err(|_| too_big());
    let span_chunk = schedule.span_chunk(extents.iter().map(|e| e.span_tokens), kv_heads);
    let chunk = span_chunk as usize;
    let mut p = BatchPlan {
        seqs: Vec::with_capacity(extents.len() * f::COUNT as usize),
        work_seq: Vec::new(),
        fp_elems: 0,
        k_code_bytes: 0,
        k_params: 0,
        v_code_bytes: 0,
        v_params: 0,
        span_chunk,
    };
    for (i, e) in extents.iter().enumerate() {
        if e.fp_tokens + e.span_tokens == 0 {
            return Err(LowerError::Schedule(format!("sequence {i} has no token")));
        }
        let span = Shape3 {
            heads: kv_heads,
            tokens: e.span_tokens,
            dim: head_dim,
        };
        let span_chunks = e.span_tokens.div_ceil(chunk);
        let chunks = span_chunks + e.fp_tokens.div_ceil(schedule.fp_chunk() as usize);
        let row = [
            u(e.fp_tokens)?,
            u(p.fp_elems)?,
            u(e.span_tokens)?,
            u(p.k_code_bytes)?,
            u(p.k_params)?,
            u(p.v_code_bytes)?,
            u(p.v_params)?,
            u(p.work_seq.len())?,
            u(span_chunks)?,
            u(chunks)?,
        ];
        p.seqs.extend_from_slice(&row);
        p.work_seq.extend(std::iter::repeat_n(u(i)?, chunks));
        p.fp_elems += kv_heads * e.fp_tokens * head_dim;
        if e.span_tokens > 0 {
            p.k_code_bytes += kv_heads * e.span_tokens * row_bytes(&scheme.key, head_dim);
            p.v_code_bytes += kv_heads * e.span_tokens * row_bytes(&scheme.value, head_dim);
            p.k_params += param_shape(&scheme.key, span).iter().product::<usize>();
            p.v_params += param_shape(&scheme.value, span).iter().product::<usize>();
        }
    }
    // Every index a kernel forms stays below these (times a group of at most 64).
    let acc = p.work_seq.len() * kv_heads * 64 * head_dim;
    for n in [
        p.fp_elems,
        p.k_code_bytes,
        p.v_code_bytes,
        p.k_params,
        p.v_params,
        acc,
    ] {
        u(n)?;
    }
    Ok(p)
}
