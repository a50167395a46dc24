//! Compile-time behaviour of `#[kv_quant]`: the forms it accepts, and one diagnostic per mistake
//! (`tests/ui/fail/*.stderr`, regenerated with `TRYBUILD=overwrite` and reviewed by hand).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
