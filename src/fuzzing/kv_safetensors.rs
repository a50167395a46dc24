//! Target `kv_safetensors`: any bytes as a safetensors K/V capture through
//! [`KvFile::from_bytes`] (what [`KvFile::load`] runs on a file's contents).
//!
//! Properties: loading never panics; an error renders; a loaded capture has at least one
//! layer, `q`/`k`/`v` shapes that agree as the loader promises, and finite values only.

use std::collections::HashMap;

use kvq_runtime::KvFile;
use safetensors::{Dtype, View};

/// Runs one input.
pub fn run(data: &[u8]) {
    match KvFile::from_bytes(data) {
        Ok(file) => {
            assert!(!file.layers.is_empty(), "a capture without layers");
            for layer in &file.layers {
                let (q, k, v) = (layer.q.shape(), layer.k.shape(), layer.v.shape());
                assert_eq!(k, v, "k and v shapes differ");
                assert_eq!((q.tokens, q.dim), (k.tokens, k.dim), "q disagrees with k");
                assert_eq!(q.heads % k.heads, 0, "q heads not a multiple of kv heads");
                for t in [&layer.q, &layer.k, &layer.v] {
                    assert!(t.first_non_finite().is_none(), "a non-finite value loaded");
                }
            }
        }
        Err(e) => drop(e.to_string()),
    }
}

/// A raw tensor for [`safetensors::serialize`].
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// `n` little-endian values of `dtype` counting up from 0.25 by 0.5.
fn ramp(dtype: Dtype, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let x = 0.25 + 0.5 * i as f32;
            match dtype {
                Dtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                Dtype::F64 => f64::from(x).to_le_bytes().to_vec(),
                _ => x.to_le_bytes().to_vec(),
            }
        })
        .collect()
}

fn file(tensors: &[(&str, Dtype, [usize; 4])], causal: Option<&str>) -> Option<Vec<u8>> {
    let raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|&(name, dtype, shape)| {
            let n = shape.iter().product();
            let raw = Raw {
                dtype,
                shape: shape.to_vec(),
                data: ramp(dtype, n),
            };
            (name.to_string(), raw)
        })
        .collect();
    let metadata = causal.map(|c| HashMap::from([("causal".to_string(), c.to_string())]));
    safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), &metadata).ok()
}

/// Small valid captures (each dtype, GQA, causal or not) and near misses.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f = Dtype::F32;
    type Case<'a> = (&'a str, Vec<(&'a str, Dtype, [usize; 4])>, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (
            "f32",
            vec![
                ("q", f, [1, 2, 3, 8]),
                ("k", f, [1, 1, 3, 8]),
                ("v", f, [1, 1, 3, 8]),
            ],
            None,
        ),
        (
            "f16-causal",
            vec![
                ("q", Dtype::F16, [2, 2, 2, 4]),
                ("k", Dtype::F16, [2, 2, 2, 4]),
                ("v", Dtype::F16, [2, 2, 2, 4]),
            ],
            Some("true"),
        ),
        (
            "bf16",
            vec![
                ("q", Dtype::BF16, [1, 4, 1, 2]),
                ("k", Dtype::BF16, [1, 2, 1, 2]),
                ("v", Dtype::BF16, [1, 2, 1, 2]),
            ],
            Some("false"),
        ),
        (
            "bad-causal",
            vec![
                ("q", f, [1, 1, 1, 1]),
                ("k", f, [1, 1, 1, 1]),
                ("v", f, [1, 1, 1, 1]),
            ],
            Some("yes"),
        ),
        (
            "mismatch",
            vec![
                ("q", f, [1, 3, 2, 2]),
                ("k", f, [1, 2, 2, 2]),
                ("v", f, [1, 2, 2, 2]),
            ],
            None,
        ),
        (
            "dtype",
            vec![
                ("q", Dtype::F64, [1, 1, 1, 1]),
                ("k", f, [1, 1, 1, 1]),
                ("v", f, [1, 1, 1, 1]),
            ],
            None,
        ),
        (
            "missing",
            vec![("q", f, [1, 1, 1, 1]), ("k", f, [1, 1, 1, 1])],
            None,
        ),
    ];
    cases
        .into_iter()
        .filter_map(|(name, tensors, causal)| Some((name.to_string(), file(&tensors, causal)?)))
        .collect()
}
