//! Kernel records: a kernel loaded from its record (no kernel at hand) is the same kernel.

use kvq_codegen::cache::CompileCache;
use kvq_codegen::host::{self, load_records, HostArg, HostKernel, KernelRecord};
use kvq_ir::ir::Signature;

use crate::control::scale_kernel;

fn temp_cache(name: &str) -> (std::path::PathBuf, CompileCache) {
    let dir = std::env::temp_dir().join(format!("kvq-records-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (dir.clone(), CompileCache::new(dir))
}

/// `dst = src * 0.5` through `kernel`, over 100 elements.
fn halve(kernel: &HostKernel) -> Vec<f32> {
    let src: Vec<f32> = (0..100).map(|k| k as f32 - 50.0).collect();
    let mut dst = vec![0.0f32; 100];
    let mut args = [
        HostArg::from(&src[..]),
        HostArg::from(&mut dst[..]),
        HostArg::from(0.5f32),
        HostArg::from(100u32),
    ];
    // SAFETY: both buffers hold the 100 elements the kernel addresses over 4 blocks of 32.
    unsafe { kernel.launch(&mut args, 4) }.expect("runs");
    dst
}

#[test]
fn a_kernel_loads_from_its_record_with_the_same_signature_and_code() {
    let (dir, cache) = temp_cache("same");
    let kernel = scale_kernel();
    let built = host::compile_with(&kernel, Some(&cache)).expect("compiles");
    let record = built.record().expect("a cached kernel has a record");
    assert_eq!(record.name, "scale");
    assert_eq!(record.params, kernel.params);
    assert_eq!(record.max_grid, kernel.max_grid);
    // The record survives its text form.
    let text = serde_json::to_string(&record).unwrap();
    let back: KernelRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back, record);
    let loaded = load_records(&[back], &cache).expect("loads");
    let loaded = &loaded[0];
    assert_eq!(loaded.record().as_ref(), Some(&record));
    assert_eq!(loaded.library_path(), built.library_path());
    assert_eq!(
        (loaded.name(), loaded.params()),
        ("scale", &kernel.params[..])
    );
    let want: Vec<f32> = (0..100).map(|k| (k as f32 - 50.0) * 0.5).collect();
    assert_eq!(halve(loaded), want);
    assert_eq!(halve(&built), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kernels_without_a_cache_have_no_record() {
    let built = host::compile_with(&scale_kernel(), None).expect("compiles");
    assert!(built.record().is_none());
}

#[test]
fn malformed_records_and_missing_libraries_load_nothing() {
    let (dir, cache) = temp_cache("bad");
    let built = host::compile_with(&scale_kernel(), Some(&cache)).expect("compiles");
    let good = built.record().unwrap();
    assert!(load_records(std::slice::from_ref(&good), &cache).is_some());
    let broken: Vec<KernelRecord> = vec![
        KernelRecord {
            library: "../../etc/passwd".into(),
            ..good.clone()
        },
        KernelRecord {
            library: good.library.to_uppercase(),
            ..good.clone()
        },
        KernelRecord {
            name: "scale; rm".into(),
            ..good.clone()
        },
        KernelRecord {
            name: "other".into(),
            ..good.clone()
        },
        KernelRecord {
            align: vec![],
            ..good.clone()
        },
        KernelRecord {
            cluster_size: 0,
            ..good.clone()
        },
    ];
    for record in broken {
        let both = [good.clone(), record.clone()];
        assert!(load_records(&both, &cache).is_none(), "{record:?}");
    }
    // The library's entry removed: the record names nothing.
    std::fs::remove_file(built.library_path()).unwrap();
    assert!(load_records(&[good], &cache).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
