//! The error metrics of SPEC.md section 5, in f64: relative Frobenius errors of the dequantized
//! K and V, and of the attention output over all queries of a layer.

use thiserror::Error;

use crate::reference::{quantize, QuantError};
use crate::scheme::Scheme;
use crate::tensor::Tensor3;

/// Why a layer's metrics cannot be computed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MetricsError {
    /// Q, K and V shapes disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Quantizing keys failed.
    #[error("keys: {0}")]
    Key(#[source] QuantError),
    /// Quantizing values failed.
    #[error("values: {0}")]
    Value(#[source] QuantError),
    /// A non-finite query.
    #[error("non-finite query value at head {head}, token {token}, channel {channel}")]
    NonFiniteQuery {
        /// Query head.
        head: usize,
        /// Token.
        token: usize,
        /// Channel.
        channel: usize,
    },
}

/// The three figures of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerMetrics {
    /// ||K_hat - K||_F / ||K||_F.
    pub k_rel: f64,
    /// ||V_hat - V||_F / ||V||_F.
    pub v_rel: f64,
    /// ||O_hat - O||_F / ||O||_F over all queries.
    pub attn_out_rel: f64,
}

/// How far two attention outputs differ: over rows of `dim` values (one per query head), the
/// largest `max |got - want| / max |want|` (infinite when the lengths differ; a zero row counts
/// its absolute difference). The tolerance measure of the attention tests and checks.
pub fn max_head_deviation(got: &[f32], want: &[f32], dim: usize) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.chunks(dim.max(1))
        .zip(want.chunks(dim.max(1)))
        .map(|(g, w)| {
            let scale = w.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
            let diff = g.iter().zip(w).fold(0.0f64, |m, (&a, &b)| {
                m.max((f64::from(a) - f64::from(b)).abs())
            });
            if scale > 0.0 {
                diff / scale
            } else {
                diff
            }
        })
        .fold(0.0, f64::max)
}

/// ||a - b|| / ||b|| over flat data, in f64 (0 when both are zero).
pub fn rel_error(approx: &[f32], exact: &[f32]) -> f64 {
    rel_error_f64(
        &approx.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &exact.iter().map(|&x| x as f64).collect::<Vec<_>>(),
    )
}

fn rel_error_f64(approx: &[f64], exact: &[f64]) -> f64 {
    let num: f64 = approx
        .iter()
        .zip(exact)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = exact.iter().map(|b| b * b).sum();
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// softmax(Q K^T / sqrt(D) + mask) V in f64 for every query, `[q_heads, T, D]`, with query head h
/// reading kv head h / (q_heads / kv_heads); `causal` masks keys after each query's position.
pub fn attention_f64(q: &Tensor3, k: &Tensor3, v: &Tensor3, causal: bool) -> Vec<f64> {
    let (qs, ks) = (q.shape(), k.shape());
    let group = qs.heads / ks.heads;
    let norm = (qs.dim as f64).sqrt();
    let mut out = vec![0.0f64; qs.len()];
    let mut logits = vec![0.0f64; ks.tokens];
    for h in 0..qs.heads {
        let kvh = h / group;
        for i in 0..qs.tokens {
            let qi = q.row(h, i);
            let visible = if causal {
                (i + 1).min(ks.tokens)
            } else {
                ks.tokens
            };
            for (j, s) in logits[..visible].iter_mut().enumerate() {
                let dot: f64 = qi
                    .iter()
                    .zip(k.row(kvh, j))
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                *s = dot / norm;
            }
            let max = logits[..visible]
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0.0;
            for s in &mut logits[..visible] {
                *s = (*s - max).exp();
                total += *s;
            }
            let o = &mut out[qs.index(h, i, 0)..qs.index(h, i, 0) + qs.dim];
            for (j, &w) in logits[..visible].iter().enumerate() {
                let p = w / total;
                for (a, &x) in o.iter_mut().zip(v.row(kvh, j)) {
                    *a += p * x as f64;
                }
            }
        }
    }
    out
}

/// Quantizes one layer's K and V (each as one span) and reports SPEC.md section 5's metrics.
pub fn layer_metrics(
    q: &Tensor3,
    k: &Tensor3,
    v: &Tensor3,
    key: &Scheme,
    value: &Scheme,
    causal: bool,
) -> Result<LayerMetrics, MetricsError> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if ks != vs || qs.tokens != ks.tokens || qs.dim != ks.dim || qs.heads % ks.heads != 0 {
        return Err(MetricsError::Shape(format!(
            "q {:?}, k {:?}, v {:?}: k and v must agree, q must share tokens and head_dim, and q heads must be a multiple of kv heads",
            qs.dims(),
            ks.dims(),
            vs.dims()
        )));
    }
    if let Some(([head, token, channel], _)) = q.first_non_finite() {
        return Err(MetricsError::NonFiniteQuery {
            head,
            token,
            channel,
        });
    }
    let k_hat = quantize(k, key)
        .and_then(|p| p.dequantize())
        .map_err(MetricsError::Key)?;
    let v_hat = quantize(v, value)
        .and_then(|p| p.dequantize())
        .map_err(MetricsError::Value)?;
    let exact = attention_f64(q, k, v, causal);
    let approx = attention_f64(q, &k_hat, &v_hat, causal);
    Ok(LayerMetrics {
        k_rel: rel_error(k_hat.data(), k.data()),
        v_rel: rel_error(v_hat.data(), v.data()),
        attn_out_rel: rel_error_f64(&approx, &exact),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_error_of_scaled_copy() {
        assert_eq!(rel_error(&[2.0, 0.0], &[1.0, 0.0]), 1.0);
        assert_eq!(rel_error(&[0.0], &[0.0]), 0.0);
    }

    #[test]
    fn causal_first_query_sees_only_first_value() {
        let q = Tensor3::new([1, 2, 1], vec![1.0, 1.0]).unwrap();
        let k = Tensor3::new([1, 2, 1], vec![0.0, 10.0]).unwrap();
        let v = Tensor3::new([1, 2, 1], vec![5.0, 7.0]).unwrap();
        let o = attention_f64(&q, &k, &v, true);
        assert_eq!(o[0], 5.0);
        let w = 10f64.exp();
        assert!((o[1] - (5.0 + 7.0 * w) / (1.0 + w)).abs() < 1e-12);
    }
}
