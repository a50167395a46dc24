#![no_main]
//! libFuzzer target `scheme_builder`: see [`kvq::fuzzing::scheme_builder`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvq::fuzzing::scheme_builder::run(data));
