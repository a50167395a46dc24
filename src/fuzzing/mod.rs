//! The bodies of kvq's fuzz targets, in stable Rust, so that the libFuzzer targets of `fuzz/`
//! (thin wrappers) and the test suite's replay of the committed corpora (`tests/all/
//! fuzz_corpora.rs`) run the same code.
//!
//! Each target is a function `fn(&[u8])` that must not panic on any input, apart from the
//! assertions of the properties it checks (round trips, agreement between backends); a panic
//! is a bug found. Structured targets decode their bytes with [`arbitrary::Unstructured`], so
//! every byte string is a valid input.
//!
//! `scripts/fuzz.sh` runs every target briefly from its committed corpus.

pub mod differential;
pub mod gguf_metadata;
pub mod ir_verifier;
pub mod kv_safetensors;
pub mod scheme_builder;
pub mod scheme_text;
pub mod span_import;

mod gen;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its libFuzzer target and corpus directory (`fuzz/corpus/NAME`).
pub const TARGETS: &[(&str, Target)] = &[
    ("scheme_text", scheme_text::run),
    ("scheme_builder", scheme_builder::run),
    ("kv_safetensors", kv_safetensors::run),
    ("gguf_metadata", gguf_metadata::run),
    ("span_import", span_import::run),
    ("ir_verifier", ir_verifier::run),
    ("differential", differential::run),
];

/// Named inputs of one target: (file name, bytes).
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Small hand-made inputs per target (valid files and texts the fuzzer starts from), by target
/// name; the test suite replays them and can write them into the corpus directories.
pub fn seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("scheme_text", scheme_text::seeds()),
        ("kv_safetensors", kv_safetensors::seeds()),
        ("gguf_metadata", gguf_metadata::seeds()),
    ]
}
