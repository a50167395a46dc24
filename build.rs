//! Fingerprints the sources that lower and select kvq's kernels (this crate's and kvq-ir's, and
//! the dependency versions), for the compile cache's index of lowered attention kernels
//! (`kvq::attention`): an index written by other sources is never taken for this one's.

include!("kvq-codegen/fingerprint.rs");

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    println!(
        "cargo:rustc-env=KVQ_SOURCES={}",
        fingerprint(root, &["src", "kvq-ir/src", "Cargo.lock"])
    );
}
