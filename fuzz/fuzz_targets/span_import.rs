#![no_main]
//! libFuzzer target `span_import`: see [`kvq::fuzzing::span_import`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvq::fuzzing::span_import::run(data));
