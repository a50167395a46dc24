//! Target `gguf_metadata`: any bytes as a GGUF model file through [`Model::load`] (written to a
//! temporary file, since the loader reads a path), then, when it loads, a one-token prefill and
//! a decode step through a [`VisualKvCache`].
//!
//! Property: loading and running a loaded model never panic, whatever the metadata says
//! (zero heads, a hidden size no head count divides, counts near `u32::MAX`, ...).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use kvq_runtime::VisualKvCache;

use crate::model::Model;
use crate::CacheScheme;

/// A temporary file holding one input, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(bytes: &[u8]) -> Option<TempFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("kvq-fuzz-gguf-{}-{n}.gguf", std::process::id()));
        std::fs::write(&path, bytes).ok()?;
        Some(TempFile(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some(file) = TempFile::new(data) else {
        return;
    };
    let model = match Model::load(&file.0) {
        Ok(model) => model,
        Err(e) => return drop(e.to_string()),
    };
    drop(file);
    exercise(&model);
}

/// Runs a loaded model: a one-token prefill, the cache it fills, one decode step, and the
/// tokenizer. Errors are fine; panics are not.
fn exercise(model: &Model) {
    let _ = model.tokenizer.encode("ab a b");
    let _ = model.tokenizer.decode(&[0, 1, u32::MAX]);
    let _ = model.config.attention_shape();
    let Ok((kv, logits)) = model.prefill(&[0]) else {
        return;
    };
    drop(logits);
    let Ok(scheme) = CacheScheme::parse(
        "key(bits=8, axis=channel, group=all, rule=minmax), \
         value(bits=8, axis=channel, group=all, rule=minmax)",
    ) else {
        return;
    };
    let Ok(mut cache) = VisualKvCache::with_reference(model.config.cache_shape(), scheme) else {
        return;
    };
    let seq = cache.add_sequence();
    for (layer, (k, v)) in kv.iter().enumerate() {
        if cache.prefill(layer, seq, k, v, 0..1).is_err() {
            return;
        }
    }
    let _ = model.decode(&mut cache, seq, 0, 1);
}

fn tensor(dims: &[usize], salt: usize) -> Option<QTensor> {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7 + salt * 3) % 11) as f32 / 11.0 - 0.45)
        .collect();
    let t = Tensor::from_vec(data, dims, &Device::Cpu).ok()?;
    QTensor::quantize(&t, GgmlDType::F32).ok()
}

/// A tiny Llama GGUF (1 layer, hidden 16, 2 query heads of 8 channels, 1 kv head, 4 tokens), with `patch`
/// replacing or adding metadata entries.
fn tiny_model(patch: &[(&str, Value)]) -> Option<Vec<u8>> {
    let (hidden, q_heads, kv_heads, ff, vocab) = (16usize, 2usize, 1usize, 16usize, 4usize);
    let head_dim = hidden / q_heads;
    let strings =
        |xs: &[&str]| Value::Array(xs.iter().map(|s| Value::String(s.to_string())).collect());
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.embedding_length".into(), Value::U32(hidden as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(q_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(kv_heads as u32),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            strings(&["a", "b", "ab", "<s>"]),
        ),
        ("tokenizer.ggml.merges".into(), strings(&["a b"])),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vec![
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(3),
            ]),
        ),
    ];
    for (key, value) in patch {
        metadata.retain(|(k, _)| k != key);
        metadata.push((key.to_string(), value.clone()));
    }
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(&[vocab, hidden], 0)?),
        ("output_norm.weight".into(), tensor(&[hidden], 1)?),
    ];
    let layer = [
        ("attn_q", vec![q_heads * head_dim, hidden]),
        ("attn_k", vec![kv_heads * head_dim, hidden]),
        ("attn_v", vec![kv_heads * head_dim, hidden]),
        ("attn_output", vec![hidden, q_heads * head_dim]),
        ("ffn_gate", vec![ff, hidden]),
        ("ffn_up", vec![ff, hidden]),
        ("ffn_down", vec![hidden, ff]),
        ("attn_norm", vec![hidden]),
        ("ffn_norm", vec![hidden]),
    ];
    for (i, (name, dims)) in layer.iter().enumerate() {
        tensors.push((format!("blk.0.{name}.weight"), tensor(dims, i + 2)?));
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &ts).ok()?;
    Some(out.into_inner())
}

/// A loadable tiny model, and the same model with metadata that once made the loader or the
/// forward pass panic.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let cases: Vec<(&str, Vec<(&str, Value)>)> = vec![
        ("tiny", vec![]),
        (
            "kv-heads-0",
            vec![("llama.attention.head_count_kv", Value::U32(0))],
        ),
        (
            "embedding-7",
            vec![("llama.embedding_length", Value::U32(7))],
        ),
        (
            "heads-max",
            vec![("llama.attention.head_count", Value::U32(u32::MAX))],
        ),
        (
            "heads-0",
            vec![("llama.attention.head_count", Value::U32(0))],
        ),
        ("layers-2", vec![("llama.block_count", Value::U32(2))]),
        (
            "kv-heads-3",
            vec![("llama.attention.head_count_kv", Value::U32(3))],
        ),
        (
            "tokens-empty",
            vec![("tokenizer.ggml.tokens", Value::Array(vec![]))],
        ),
        (
            "bad-merge",
            vec![(
                "tokenizer.ggml.merges",
                Value::Array(vec![Value::String("ab".into())]),
            )],
        ),
        ("rope-f64", vec![("llama.rope.freq_base", Value::F64(1.0))]),
    ];
    cases
        .into_iter()
        .filter_map(|(name, patch)| Some((name.to_string(), tiny_model(&patch)?)))
        .collect()
}
