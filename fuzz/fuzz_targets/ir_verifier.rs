#![no_main]
//! libFuzzer target `ir_verifier`: see [`kvq::fuzzing::ir_verifier`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvq::fuzzing::ir_verifier::run(data));
