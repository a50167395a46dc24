#![no_main]
//! libFuzzer target `gguf_metadata`: see [`kvq::fuzzing::gguf_metadata`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvq::fuzzing::gguf_metadata::run(data));
