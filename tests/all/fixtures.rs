//! Paths of the vendored test data.

use std::path::PathBuf;

/// `tests/data/<name>`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The DINOv2 visual-token capture.
pub fn dinov2() -> PathBuf {
    data("dinov2s_astronaut_qkv_f16.safetensors")
}

/// The SmolLM2 decoder capture.
pub fn smollm2() -> PathBuf {
    data("smollm2_zen_qkv_f16.safetensors")
}
