#![no_main]
//! libFuzzer target `kv_safetensors`: see [`kvq::fuzzing::kv_safetensors`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvq::fuzzing::kv_safetensors::run(data));
