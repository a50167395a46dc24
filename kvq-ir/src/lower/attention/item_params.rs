//! The parameters of the `stats` and `partial` kernels, declared in ABI order
//! ([`super::partial_abi`], [`super::stats_abi`]) by the one function both layouts call.

use crate::ir::{Access, Builder, Memory, ScalarType, Value};
use crate::lower::emit::param_type;
use crate::lower::InputType;
use crate::scheme::CacheScheme;

use super::{partial_abi as abi, stats_abi};

/// The parameters of a `stats` or `partial` kernel.
pub(super) struct ItemParams {
    pub q: Memory,
    pub seqs: Memory,
    pub work_seq: Memory,
    pub fp_k: Memory,
    pub fp_v: Memory,
    /// Element type of `fp_k` and `fp_v`.
    pub fp: InputType,
    /// Key codes, zeros, scales; value codes, zeros, scales.
    pub k: [Memory; 3],
    pub v: [Memory; 3],
    /// Written by `stats`, read by `partial`.
    pub stats: Memory,
    pub logits: Memory,
    /// Scalar parameters: kv heads, chunks, tokens per span chunk.
    pub kv_heads: u32,
    pub chunks: u32,
    pub span_chunk: u32,
}

/// Declares the parameters of `stats`.
pub(super) fn declare_stats(b: &mut Builder, scheme: &CacheScheme, fp: InputType) -> ItemParams {
    let (params, ()) = declare(b, scheme, fp, Access::Write, |_| ());
    debug_assert_eq!(
        (params.kv_heads, params.chunks, params.span_chunk),
        (
            stats_abi::KV_HEADS,
            stats_abi::CHUNKS,
            stats_abi::SPAN_CHUNK
        )
    );
    params
}

/// Declares the parameters of `partial`, with its outputs `[part_ml, part_acc]`.
pub(super) fn declare_partial(
    b: &mut Builder,
    scheme: &CacheScheme,
    fp: InputType,
) -> (ItemParams, [Memory; 2]) {
    let (params, outputs) = declare(b, scheme, fp, Access::Read, |b| {
        [
            b.buffer("part_ml", ScalarType::F32, Access::Write),
            b.buffer("part_acc", ScalarType::F32, Access::Write),
        ]
    });
    debug_assert_eq!(
        (params.kv_heads, params.chunks, params.span_chunk),
        (abi::KV_HEADS, abi::CHUNKS, abi::SPAN_CHUNK)
    );
    (params, outputs)
}

/// The shared parameters in ABI order, `outputs` declared between the buffers and the scalars;
/// `stats_access` is that of `stats` and `span_logits`.
fn declare<O>(
    b: &mut Builder,
    scheme: &CacheScheme,
    fp: InputType,
    stats_access: Access,
    outputs: impl FnOnce(&mut Builder) -> O,
) -> (ItemParams, O) {
    let kp = param_type(scheme.key.params);
    let vp = param_type(scheme.value.params);
    let q = b.buffer("q", ScalarType::F32, Access::Read);
    let seqs = b.buffer("seqs", ScalarType::U32, Access::Read);
    let work_seq = b.buffer("work_seq", ScalarType::U32, Access::Read);
    let fp_k = b.buffer("fp_k", fp.scalar(), Access::Read);
    let fp_v = b.buffer("fp_v", fp.scalar(), Access::Read);
    let k = [
        b.buffer("k_codes", ScalarType::U8, Access::Read),
        b.buffer("k_zero", kp, Access::Read),
        b.buffer("k_scale", kp, Access::Read),
    ];
    let v = [
        b.buffer("v_codes", ScalarType::U8, Access::Read),
        b.buffer("v_zero", vp, Access::Read),
        b.buffer("v_scale", vp, Access::Read),
    ];
    let stats = b.buffer("stats", ScalarType::F32, stats_access);
    let logits = b.buffer("span_logits", ScalarType::F32, stats_access);
    debug_assert_eq!(stats, Memory::Param(abi::STATS));
    debug_assert_eq!(logits, Memory::Param(abi::SPAN_LOGITS));
    let out = outputs(b);
    let kv_heads = b.scalar_param("kv_heads", ScalarType::U32);
    let chunks = b.scalar_param("chunks", ScalarType::U32);
    let span_chunk = b.scalar_param("span_chunk", ScalarType::U32);
    let params = ItemParams {
        q,
        seqs,
        work_seq,
        fp_k,
        fp_v,
        fp,
        k,
        v,
        stats,
        logits,
        kv_heads,
        chunks,
        span_chunk,
    };
    (params, out)
}

/// `lanes` elements of a full-precision buffer of element type `fp` at `index`, as f32 (a
/// scalar, or a vector of `lanes`); f16 and bf16 widen exactly.
pub(super) fn load_fp(
    b: &mut Builder,
    fp: InputType,
    mem: Memory,
    index: Value,
    lanes: u8,
) -> Value {
    let x = b.load(mem, index, lanes);
    if fp == InputType::F32 {
        return x;
    }
    if lanes == 1 {
        return b.convert(ScalarType::F32, x);
    }
    let wide = (0..lanes)
        .map(|i| {
            let e = b.extract(x, i);
            b.convert(ScalarType::F32, e)
        })
        .collect();
    b.vector(wide)
}
