//! Target `span_import`: a [`VisualKvCache`] of a random shape and scheme driven by a random
//! sequence of operations, chiefly [`import_span`](VisualKvCache::import_span) of arbitrary
//! packed spans (wrong schemes, shapes, lengths, token counts up to `usize::MAX`, non-finite or
//! non-f16 parameters) and [`export_span`](VisualKvCache::export_span), mixed with prefill,
//! append, attend and sequence removal.
//!
//! Properties: nothing panics; a refused operation leaves the cache as it was (token counts);
//! an accepted import exports back exactly (export then import is lossless, and so is import
//! then export).

use arbitrary::{Result, Unstructured};
use kvq_ir::reference::quantize::row_bytes;
use kvq_ir::reference::{param_shape, PackedSpan};
use kvq_runtime::{ModelShape, QueryRef, SeqId, VisualKvCache};

use super::gen;
use crate::{CacheScheme, Calibration, Scheme, Shape3, Tensor3};

/// A count that is usually right, sometimes off by one, sometimes anything.
fn count(u: &mut Unstructured<'_>, right: usize) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => right.saturating_add(1),
        1 => right.saturating_sub(1),
        2 => *u.choose(&[0, usize::MAX, usize::MAX / 2, 1 << 32, 1 << 62])?,
        3 => u.int_in_range(0..=64)?,
        _ => right,
    })
}

fn tensor(
    u: &mut Unstructured<'_>,
    heads: usize,
    tokens: usize,
    dim: usize,
) -> Result<Option<Tensor3>> {
    let (heads, tokens, dim) = (
        count(u, heads)?.min(8),
        tokens.min(40),
        count(u, dim)?.min(128),
    );
    let n = heads * tokens * dim;
    let finite = u.ratio(15u8, 16)?;
    let mut data = Vec::with_capacity(n);
    for _ in 0..n {
        data.push(gen::float(u, finite)?);
    }
    Ok(Tensor3::new([heads, tokens, dim], data).ok())
}

/// A span, usually well formed for `scheme` and `shape`, sometimes not in any of its parts.
fn span(u: &mut Unstructured<'_>, scheme: Scheme, shape: ModelShape) -> Result<PackedSpan> {
    let scheme = if u.ratio(1u8, 16)? {
        gen::scheme(u, 64, false)?
    } else {
        scheme
    };
    let tokens = match u.int_in_range(0u8..=7)? {
        0 => *u.choose(&[0, usize::MAX, 1 << 40, 1 << 62, usize::MAX / 3])?,
        _ => u.int_in_range(1..=24)?,
    };
    let span_shape = Shape3 {
        heads: count(u, shape.kv_heads)?,
        tokens,
        dim: count(u, shape.head_dim)?,
    };
    // The right lengths when they are small enough to allocate, else something small.
    let small = span_shape.heads <= 8 && span_shape.tokens <= 64 && span_shape.dim <= 256;
    let (want_codes, want_params) = if small {
        (
            span_shape.heads * span_shape.tokens * row_bytes(&scheme, span_shape.dim),
            param_shape(&scheme, span_shape).iter().product(),
        )
    } else {
        (3, 2)
    };
    let n_codes = count(u, want_codes)?.min(1 << 16);
    let codes: Vec<u8> = (0..n_codes).map(|_| u.arbitrary()).collect::<Result<_>>()?;
    let n_zero = count(u, want_params)?.min(1 << 14);
    let n_scale = if u.ratio(15u8, 16)? {
        n_zero
    } else {
        count(u, want_params)?.min(1 << 14)
    };
    let finite = u.ratio(7u8, 8)?;
    let param = |u: &mut Unstructured<'_>| -> Result<f32> {
        let x = gen::float(u, finite)?;
        // Mostly values that f16 parameters can hold exactly.
        Ok(if u.ratio(7u8, 8)? {
            half::f16::from_f32(x).to_f32()
        } else {
            x
        })
    };
    let zero = (0..n_zero).map(|_| param(u)).collect::<Result<_>>()?;
    let scale = (0..n_scale).map(|_| param(u)).collect::<Result<_>>()?;
    Ok(PackedSpan {
        scheme,
        shape: span_shape,
        codes,
        zero,
        scale,
    })
}

fn same_bits(a: &PackedSpan, b: &PackedSpan) -> bool {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    a.scheme == b.scheme
        && a.shape == b.shape
        && a.codes == b.codes
        && bits(&a.zero) == bits(&b.zero)
        && bits(&a.scale) == bits(&b.scale)
}

/// Tokens of every (layer, sequence) slot, for checking that refused operations change nothing.
fn snapshot(cache: &VisualKvCache, seqs: &[SeqId]) -> Vec<Option<usize>> {
    let layers = cache.shape().layers;
    seqs.iter()
        .flat_map(|&s| (0..layers).map(move |l| cache.tokens(l, s).ok()))
        .collect()
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = drive(&mut Unstructured::new(data));
}

fn drive(u: &mut Unstructured<'_>) -> Result<()> {
    let kv_heads = u.int_in_range(1..=3)?;
    let shape = ModelShape {
        layers: u.int_in_range(1..=3)?,
        kv_heads,
        q_heads: kv_heads * u.int_in_range(1..=3)? + usize::from(u.ratio(1u8, 16)?),
        head_dim: if u.ratio(3u8, 4)? {
            8 * u.int_in_range(1..=8)?
        } else {
            u.int_in_range(1..=64)?
        },
    };
    let scheme = CacheScheme {
        key: gen::scheme(u, 64, false)?,
        value: gen::scheme(u, 64, false)?,
        calibrate: if u.arbitrary()? {
            Calibration::new(f32::from(u.int_in_range(1u8..=50)?) / 10.0)
        } else {
            None
        },
    };
    let Ok(mut cache) = VisualKvCache::with_reference(shape, scheme) else {
        return Ok(());
    };
    let mut seqs = vec![cache.add_sequence()];
    for _ in 0..u.int_in_range(1..=12)? {
        if u.is_empty() {
            break;
        }
        let seq = *u.choose(&seqs)?;
        let layer = if u.ratio(15u8, 16)? {
            u.int_in_range(0..=shape.layers - 1)?
        } else {
            shape.layers + usize::from(u.arbitrary::<u8>()?)
        };
        let before = snapshot(&cache, &seqs);
        let refused = match u.int_in_range(0u8..=6)? {
            0..=2 => {
                let prefix = if u.arbitrary()? {
                    let t = u.int_in_range(0..=4)?;
                    let k = tensor(u, shape.kv_heads, t, shape.head_dim)?;
                    let v = tensor(u, shape.kv_heads, t, shape.head_dim)?;
                    k.zip(v)
                } else {
                    None
                };
                let keys = span(u, scheme.key, shape)?;
                let values = span(u, scheme.value, shape)?;
                let (k_in, v_in) = (keys.clone(), values.clone());
                let prefix_ref = prefix.as_ref().map(|(k, v)| (k, v));
                match cache.import_span(layer, seq, prefix_ref, keys, values) {
                    Ok(()) => {
                        let (k_out, v_out) = cache
                            .export_span(layer, seq)
                            .unwrap_or_else(|e| panic!("export after import: {e}"));
                        assert!(same_bits(&k_in, &k_out), "keys changed by import/export");
                        assert!(same_bits(&v_in, &v_out), "values changed by import/export");
                        let again = cache.import_span(layer, seq, None, k_out, v_out);
                        assert!(again.is_err(), "a slot imported twice");
                        false
                    }
                    Err(e) => {
                        drop(e.to_string());
                        true
                    }
                }
            }
            3 => {
                let t = u.int_in_range(1..=6)?;
                let k = tensor(u, shape.kv_heads, t, shape.head_dim)?;
                let v = tensor(u, shape.kv_heads, t, shape.head_dim)?;
                let (a, b) = (u.int_in_range(0..=t + 1)?, u.int_in_range(0..=t + 1)?);
                match k.zip(v) {
                    Some((k, v)) => cache.prefill(layer, seq, &k, &v, a..b).is_err(),
                    None => true,
                }
            }
            4 => {
                let t = u.int_in_range(1..=4)?;
                let k = tensor(u, shape.kv_heads, t, shape.head_dim)?;
                let v = tensor(u, shape.kv_heads, t, shape.head_dim)?;
                match k.zip(v) {
                    Some((k, v)) => cache.append(layer, seq, &k, &v).is_err(),
                    None => true,
                }
            }
            5 => {
                let n = count(u, shape.q_heads * shape.head_dim)?.min(1 << 12);
                let finite = u.ratio(15u8, 16)?;
                let q = (0..n)
                    .map(|_| gen::float(u, finite))
                    .collect::<Result<Vec<_>>>()?;
                if let Ok(out) = cache.attend(layer, &[QueryRef { seq, q: &q }]) {
                    assert_eq!(out.len(), 1);
                    assert_eq!(out[0].len(), shape.q_heads * shape.head_dim);
                }
                let _ = cache.memory();
                let _ = cache.suffix_capacity(layer, seq);
                continue;
            }
            _ => {
                if u.arbitrary()? {
                    seqs.push(cache.add_sequence());
                } else if cache.remove_sequence(seq).is_ok() {
                    assert!(cache.remove_sequence(seq).is_err(), "removed twice");
                }
                continue;
            }
        };
        if refused {
            assert_eq!(
                before,
                snapshot(&cache, &seqs),
                "a refused operation changed the cache"
            );
        }
    }
    Ok(())
}
