//! The reference decode attention of SPEC.md section 4 over a list of segments: it dequantizes
//! and computes in f64, the oracle that fast kernels (f32, post-scaled) are checked against.

use thiserror::Error;

use super::quantize::{PackedSpan, QuantError};
use crate::scheme::Calibration;
use crate::tensor::{Shape3, Tensor3};

/// One run of cached tokens, in positional order.
#[derive(Debug, Clone, Copy)]
pub enum Segment<'a> {
    /// Full-precision keys and values, `[kv_heads, tokens, head_dim]` each.
    Full {
        /// Keys.
        k: &'a Tensor3,
        /// Values.
        v: &'a Tensor3,
    },
    /// A quantized span: packed keys and values.
    Quantized {
        /// Keys.
        k: &'a PackedSpan,
        /// Values.
        v: &'a PackedSpan,
    },
}

/// Why attention cannot be computed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AttentionError {
    /// Shapes disagree.
    #[error("attention shape mismatch: {0}")]
    Shape(String),
    /// A non-finite query value.
    #[error("non-finite query value at head {head}, channel {channel}")]
    NonFiniteQuery {
        /// Query head.
        head: usize,
        /// Channel.
        channel: usize,
    },
    /// No segment holds a token.
    #[error("attention over an empty cache")]
    Empty,
    /// A malformed quantized segment.
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// Decode attention of one query per query head, `q` = `[q_heads, head_dim]`, over `segments`;
/// returns `[q_heads, head_dim]`. Query head h reads kv head `h / (q_heads / kv_heads)`.
/// `calibrate` applies to the logits of each quantized segment separately.
pub fn decode_attention(
    q: &[f32],
    q_heads: usize,
    segments: &[Segment<'_>],
    calibrate: Option<Calibration>,
) -> Result<Vec<f32>, AttentionError> {
    let dequantized = segments
        .iter()
        .map(|s| match s {
            Segment::Full { k, v } => Ok(((*k).clone(), (*v).clone(), false)),
            Segment::Quantized { k, v } => Ok((k.dequantize()?, v.dequantize()?, true)),
        })
        .collect::<Result<Vec<_>, QuantError>>()?;
    let Some(first) = dequantized.first() else {
        return Err(AttentionError::Empty);
    };
    let Shape3 {
        heads: kv_heads,
        dim,
        ..
    } = first.0.shape();
    for (i, (k, v, _)) in dequantized.iter().enumerate() {
        let (ks, vs) = (k.shape(), v.shape());
        if ks != vs || ks.heads != kv_heads || ks.dim != dim {
            return Err(AttentionError::Shape(format!(
                "segment {i} has keys {:?} and values {:?}, expected [{kv_heads}, _, {dim}]",
                ks.dims(),
                vs.dims()
            )));
        }
    }
    if q_heads == 0 || q_heads % kv_heads != 0 || q.len() != q_heads * dim {
        return Err(AttentionError::Shape(format!(
            "{} query values for {q_heads} query heads of dim {dim} over {kv_heads} kv heads",
            q.len()
        )));
    }
    if let Some(i) = q.iter().position(|x| !x.is_finite()) {
        return Err(AttentionError::NonFiniteQuery {
            head: i / dim,
            channel: i % dim,
        });
    }
    let group = q_heads / kv_heads;
    let norm = (dim as f64).sqrt();
    let mut out = vec![0.0f32; q_heads * dim];
    for h in 0..q_heads {
        let kvh = h / group;
        let qh = &q[h * dim..(h + 1) * dim];
        let mut logits = Vec::new();
        for (k, _, quantized) in &dequantized {
            let start = logits.len();
            for t in 0..k.shape().tokens {
                let dot: f64 = qh
                    .iter()
                    .zip(k.row(kvh, t))
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                logits.push(dot / norm);
            }
            if let (true, Some(d)) = (*quantized, calibrate) {
                calibrate_logits(&mut logits[start..], d.get() as f64);
            }
        }
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logits.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = vec![0.0f64; dim];
        let mut t_all = 0;
        for (_, v, _) in &dequantized {
            for t in 0..v.shape().tokens {
                let p = weights[t_all] / total;
                t_all += 1;
                for (a, &x) in acc.iter_mut().zip(v.row(kvh, t)) {
                    *a += p * x as f64;
                }
            }
        }
        for (o, a) in out[h * dim..(h + 1) * dim].iter_mut().zip(acc) {
            *o = a as f32;
        }
    }
    Ok(out)
}

/// SPEC.md section 4's calibration: if the spread M - m of `s` exceeds `d`, map it linearly onto
/// [m, M - d] keeping m fixed; otherwise leave `s` unchanged.
pub fn calibrate_logits(s: &mut [f64], d: f64) {
    let m = s.iter().cloned().fold(f64::INFINITY, f64::min);
    let big = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if big - m > d {
        let factor = (big - m - d) / (big - m);
        for x in s.iter_mut() {
            *x = m + (*x - m) * factor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_compresses_only_wide_spreads() {
        let mut s = [0.0, 1.0, 5.0];
        calibrate_logits(&mut s, 3.0);
        assert_eq!(s, [0.0, 0.4, 2.0]);
        let mut s = [0.0, 1.0, 2.0];
        calibrate_logits(&mut s, 3.0);
        assert_eq!(s, [0.0, 1.0, 2.0]);
    }

    #[test]
    fn single_token_returns_its_value_for_every_gqa_head() {
        let k = Tensor3::new([1, 1, 2], vec![1.0, 2.0]).unwrap();
        let v = Tensor3::new([1, 1, 2], vec![3.0, -4.0]).unwrap();
        let o = decode_attention(
            &[1.0, 0.0, 0.5, 0.5],
            2,
            &[Segment::Full { k: &k, v: &v }],
            None,
        )
        .unwrap();
        assert_eq!(o, vec![3.0, -4.0, 3.0, -4.0]);
    }

    #[test]
    fn rejects_bad_queries() {
        let k = Tensor3::new([2, 1, 2], vec![0.0; 4]).unwrap();
        let seg = [Segment::Full { k: &k, v: &k }];
        assert!(matches!(
            decode_attention(&[0.0; 6], 3, &seg, None),
            Err(AttentionError::Shape(_))
        ));
        assert!(matches!(
            decode_attention(&[0.0, 0.0, f32::NAN, 0.0], 2, &seg, None),
            Err(AttentionError::NonFiniteQuery {
                head: 1,
                channel: 0
            })
        ));
        assert!(matches!(
            decode_attention(&[0.0; 4], 2, &[], None),
            Err(AttentionError::Empty)
        ));
    }
}
