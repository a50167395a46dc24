#![no_main]
//! libFuzzer target `differential`: see [`kvq::fuzzing::differential`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvq::fuzzing::differential::run(data));
