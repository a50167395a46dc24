//! `kvq eval --kernels`: each layer's decode attention through kvq's generated kernels, against
//! the reference decode attention (SPEC.md section 4, in f64).

use kvq_ir::lower::attention::{AttentionSchedule, AttentionShape, SeqData};
use kvq_ir::metrics::max_head_deviation;
use kvq_ir::reference::attention::AttentionError;
use kvq_ir::reference::{decode_attention, quantize, QuantError, Segment};
use kvq_ir::{CacheScheme, Scheme, Tensor3};
use kvq_runtime::KvFile;
use thiserror::Error;

use crate::attention::HostAttention;
use crate::backend::BackendError;

/// Which attention schedule the kernels run, both as host code on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelSchedule {
    /// The host schedule (a thread per work item, byte tables).
    Host,
    /// The GPU schedule (`AttentionSchedule::gpu_default`), its warps run as loops.
    Gpu,
}

/// Why a layer's kernel deviation could not be measured.
#[derive(Debug, Error)]
pub enum KernelDevError {
    /// The layer's K or V cannot be quantized with the scheme.
    #[error("layer {layer}: {source}")]
    Quant {
        /// Layer index.
        layer: usize,
        /// The quantizer's error.
        source: QuantError,
    },
    /// The kernels failed to build or run.
    #[error("layer {layer}: kernels: {source}")]
    Kernels {
        /// Layer index.
        layer: usize,
        /// The backend's error.
        source: BackendError,
    },
    /// The reference rejected the layer.
    #[error("layer {layer}: reference attention: {source}")]
    Reference {
        /// Layer index.
        layer: usize,
        /// The reference's error.
        source: AttentionError,
    },
    /// The file's query heads are not a multiple of its kv heads.
    #[error("layer {layer}: {q_heads} query heads over {kv_heads} kv heads")]
    Heads {
        /// Layer index.
        layer: usize,
        /// Query heads.
        q_heads: usize,
        /// Kv heads.
        kv_heads: usize,
    },
}

/// The decode query of the last token, `[q_heads * dim]`.
fn last_query(q: &Tensor3) -> Vec<f32> {
    let s = q.shape();
    (0..s.heads)
        .flat_map(|h| q.row(h, s.tokens - 1).to_vec())
        .collect()
}

/// Per layer of `file`: the last token's query attends over the layer's K and V quantized as
/// one span (no calibration, as in the error metrics), through the generated kernels of
/// `schedule`; the result is the largest relative deviation of a query head's output from the
/// reference (`kvq_ir::metrics::max_head_deviation`).
pub fn kernel_deviation(
    file: &KvFile,
    key: &Scheme,
    value: &Scheme,
    schedule: KernelSchedule,
) -> Result<Vec<f64>, KernelDevError> {
    let scheme = CacheScheme {
        key: *key,
        value: *value,
        calibrate: None,
    };
    let mut compiled: Option<(AttentionShape, HostAttention)> = None;
    let mut out = Vec::with_capacity(file.layers.len());
    for (layer, kv) in file.layers.iter().enumerate() {
        let (q_heads, kv_heads) = (kv.q.shape().heads, kv.k.shape().heads);
        if kv_heads == 0 || q_heads % kv_heads != 0 {
            return Err(KernelDevError::Heads {
                layer,
                q_heads,
                kv_heads,
            });
        }
        let d = kv.k.shape().dim;
        let shape = AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: d as u32,
            group: (q_heads / kv_heads) as u32,
        };
        let kernels = |source| KernelDevError::Kernels { layer, source };
        let attn = match compiled.take() {
            Some((s, a)) if s == shape => a,
            _ => {
                let sched = match schedule {
                    KernelSchedule::Host => AttentionSchedule::host_default(&scheme),
                    KernelSchedule::Gpu => AttentionSchedule::gpu_default(&scheme, shape),
                };
                HostAttention::new(&scheme, shape, Some(sched)).map_err(kernels)?
            }
        };
        let quant = |source| KernelDevError::Quant { layer, source };
        let k = quantize(&kv.k, key).map_err(quant)?;
        let v = quantize(&kv.v, value).map_err(quant)?;
        let q = last_query(&kv.q);
        let seq = SeqData {
            q: &q,
            fp: None,
            span: Some((&k, &v)),
        };
        let got = attn.attend(kv_heads, &[seq]).map_err(kernels)?;
        let segments = [Segment::Quantized { k: &k, v: &v }];
        let want = decode_attention(&q, q_heads, &segments, None)
            .map_err(|source| KernelDevError::Reference { layer, source })?;
        out.push(max_head_deviation(&got[0], &want, d));
        compiled = Some((shape, attn));
    }
    Ok(out)
}
