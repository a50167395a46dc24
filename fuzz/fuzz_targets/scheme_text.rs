#![no_main]
//! libFuzzer target `scheme_text`: see [`kvq::fuzzing::scheme_text`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvq::fuzzing::scheme_text::run(data));
