//! Launch argument checks: typed errors, never a panic, nothing run.

use kvq_codegen::cache::CompileCache;

use half::f16;
use kvq_codegen::host::{self, BufferMut, BufferRef, HostArg};
use kvq_codegen::{ArgKind, CodegenError};
use kvq_ir::ir::ScalarType;

use crate::control::scale_kernel;

#[test]
fn good_arguments_run() {
    let kernel = scale_kernel();
    let compiled = host::compile(&kernel).expect("compiles");
    assert_eq!(compiled.name(), "scale");
    let src: Vec<f32> = (0..100).map(|k| k as f32).collect();
    let mut dst = vec![0.0f32; 100];
    let mut args = [
        HostArg::from(&src[..]),
        HostArg::from(&mut dst[..]),
        HostArg::from(0.5f32),
        HostArg::from(100u32),
    ];
    // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled.launch(&mut args, 4) }.expect("runs");
    assert!(dst.iter().zip(&src).all(|(d, s)| *d == s * 0.5));
    // A grid of zero blocks runs nothing.
    let mut dst = vec![9.0f32; 100];
    let mut args = [
        HostArg::ReadOnly(BufferRef::F32(&src)),
        HostArg::Buffer(BufferMut::F32(&mut dst)),
        HostArg::F32(2.0),
        HostArg::U32(100),
    ];
    // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled.launch(&mut args, 0) }.expect("runs");
    assert!(dst.iter().all(|&d| d == 9.0));
}

#[test]
fn bad_arguments_give_typed_errors() {
    let kernel = scale_kernel();
    let compiled = host::compile(&kernel).expect("compiles");
    let src = [1.0f32; 8];
    let mut dst = [0.0f32; 8];
    let mut halves = [f16::ZERO; 8];

    let err = // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled
        .launch(
            &mut [HostArg::from(&src[..]), HostArg::from(&mut dst[..])],
            1,
        ) }
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodegenError::ArgCount {
                expected: 4,
                found: 2,
                ..
            }
        ),
        "{err}"
    );

    // The output passed read-only.
    let err = // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled
        .launch(
            &mut [
                HostArg::from(&src[..]),
                HostArg::from(&dst[..]),
                HostArg::F32(1.0),
                HostArg::U32(8),
            ],
            1,
        ) }
        .unwrap_err();
    let want = CodegenError::ArgMismatch {
        kernel: "scale".into(),
        index: 1,
        expected: ArgKind::Buffer {
            elem: ScalarType::F32,
            writable: true,
        },
        found: ArgKind::Buffer {
            elem: ScalarType::F32,
            writable: false,
        },
    };
    assert_eq!(err.to_string(), want.to_string());
    assert_eq!(
        err.to_string(),
        "kernel `scale` argument 1: expected a mutable f32 buffer, found a read-only f32 buffer"
    );

    // The wrong element type.
    let err = // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled
        .launch(
            &mut [
                HostArg::from(&mut halves[..]),
                HostArg::from(&mut dst[..]),
                HostArg::F32(1.0),
                HostArg::U32(8),
            ],
            1,
        ) }
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodegenError::ArgMismatch {
                index: 0,
                expected: ArgKind::Buffer {
                    elem: ScalarType::F32,
                    writable: false
                },
                found: ArgKind::Buffer {
                    elem: ScalarType::F16,
                    writable: true
                },
                ..
            }
        ),
        "{err}"
    );

    // Scalars swapped; a scalar for a buffer.
    let err = // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled
        .launch(
            &mut [
                HostArg::from(&src[..]),
                HostArg::from(&mut dst[..]),
                HostArg::U32(8),
                HostArg::F32(1.0),
            ],
            1,
        ) }
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodegenError::ArgMismatch {
                index: 2,
                expected: ArgKind::F32,
                found: ArgKind::U32,
                ..
            }
        ),
        "{err}"
    );
    let err = // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled
        .launch(
            &mut [
                HostArg::U32(0),
                HostArg::from(&mut dst[..]),
                HostArg::F32(1.0),
                HostArg::U32(8),
            ],
            1,
        ) }
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodegenError::ArgMismatch {
                index: 0,
                found: ArgKind::U32,
                ..
            }
        ),
        "{err}"
    );
    assert!(dst.iter().all(|&d| d == 0.0), "nothing ran");
}

#[test]
fn uncached_library_is_removed_on_drop() {
    let kernel = scale_kernel();
    let compiled = host::compile_with(&kernel, None).expect("compiles");
    let lib = compiled.library_path().to_path_buf();
    assert!(lib.exists());
    assert!(!lib.with_file_name("kernel.o").exists());
    drop(compiled);
    assert!(!lib.exists());
}

#[test]
fn an_invalid_kernel_is_refused_before_it_is_built_or_stored() {
    let dir = std::env::temp_dir().join(format!("kvq-invalid-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = CompileCache::new(&dir);
    let mut kernel = scale_kernel();
    kernel.shared.push(kvq_ir::ir::SharedArray {
        name: "empty".into(),
        elem: ScalarType::F32,
        len: 0,
    });
    match host::compile_with(&kernel, Some(&cache)) {
        Err(CodegenError::Invalid(e)) => assert!(
            e.errors
                .iter()
                .any(|f| matches!(f.kind, kvq_ir::ir::FindingKind::EmptyShared { shared: 0 })),
            "{e}"
        ),
        other => panic!("expected the verifier's error, got {other:?}"),
    }
    let stored = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(stored, 0, "nothing is stored for an invalid kernel");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cache_hit_loads_the_stored_library_and_corrupt_entries_are_rebuilt() {
    let dir = std::env::temp_dir().join(format!("kvq-host-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = CompileCache::new(&dir);
    let kernel = scale_kernel();
    let cold = host::compile_with(&kernel, Some(&cache)).expect("compiles");
    let path = cold.library_path().to_path_buf();
    assert!(path.starts_with(&dir), "{}", path.display());
    drop(cold);
    assert!(path.exists(), "a cached library outlives its kernel");
    let stored = std::fs::read(&path).unwrap();
    let warm = host::compile_with(&kernel, Some(&cache)).expect("loads");
    assert_eq!(warm.library_path(), path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        stored,
        "a hit does not rewrite the entry"
    );
    drop(warm);
    // Corrupt the entry: it is detected by its checksum, never loaded, and rebuilt.
    std::fs::write(&path, b"not a shared object").unwrap();
    let rebuilt = host::compile_with(&kernel, Some(&cache)).expect("rebuilds");
    assert_eq!(std::fs::read(rebuilt.library_path()).unwrap(), stored);
    let src = vec![2.0f32; 10];
    let mut dst = vec![0.0f32; 10];
    let mut args = [
        HostArg::ReadOnly(BufferRef::F32(&src)),
        HostArg::Buffer(BufferMut::F32(&mut dst)),
        HostArg::F32(0.5),
        HostArg::U32(10),
    ];
    // SAFETY: both buffers hold the 10 elements the kernel addresses.
    unsafe { rebuilt.launch(&mut args, 1) }.expect("runs");
    assert!(dst.iter().all(|&d| d == 1.0));
    drop(rebuilt);
    // An entry whose checksum matches but which is no shared object (a foreign or damaged file
    // stored with its own sum) fails to load: that is a miss too, rebuilt and stored again.
    let garbage = b"\x7fELF but not really".to_vec();
    std::fs::write(&path, &garbage).unwrap();
    let sum = sha2_hex(&garbage);
    std::fs::write(path.with_extension("so.sha256"), sum).unwrap();
    let reloaded = host::compile_with(&kernel, Some(&cache)).expect("rebuilds");
    assert_eq!(std::fs::read(reloaded.library_path()).unwrap(), stored);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SHA-256 of `bytes` in hex, as the cache's checksum files hold it (computed by `sha256sum`,
/// independently of the cache's own code).
fn sha2_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn a_relative_cache_directory_still_loads() {
    // Integration tests run in the package directory; the cache lies in the workspace target.
    let rel = format!("../target/kvq-relative-cache-{}", std::process::id());
    let _ = std::fs::remove_dir_all(&rel);
    let cache = CompileCache::new(&rel);
    let kernel = scale_kernel();
    let cold = host::compile_with(&kernel, Some(&cache)).expect("compiles");
    assert!(cold.library_path().is_absolute());
    drop(cold);
    let warm = host::compile_with(&kernel, Some(&cache)).expect("loads");
    assert!(warm.library_path().is_absolute());
    drop(warm);
    let _ = std::fs::remove_dir_all(&rel);
}

#[test]
fn compile_all_builds_the_misses_at_once_and_keys_entries_by_passes() {
    use kvq_codegen::host::Job;
    use kvq_codegen::Passes;
    use kvq_ir::ir::interp::{self, Arg, Buffer};

    let dir = std::env::temp_dir().join(format!("kvq-compile-all-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = CompileCache::new(&dir);
    let (scale, loops) = (scale_kernel(), crate::control::loops_kernel());
    let (scale_ir, loops_ir) = (kvq_ir::ir::print(&scale), kvq_ir::ir::print(&loops));
    let jobs = [
        Job {
            kernel: &scale,
            ir: &scale_ir,
        },
        Job {
            kernel: &loops,
            ir: &loops_ir,
        },
    ];
    let no_unroll = Passes {
        unroll_loops: false,
    };
    // The loops kernel's outputs, from the interpreter.
    let args = vec![
        Arg::Buffer(Buffer::U32(vec![7; 40 * 6])),
        Arg::Buffer(Buffer::F32(vec![0.0; 40])),
        Arg::U32(50),
        Arg::F32(0.1),
    ];
    let mut expected = args.clone();
    interp::run(&loops, &mut expected, 5).expect("interpreter runs");
    let run = |compiled: &host::HostKernel| {
        let mut got = args.clone();
        let mut host_args: Vec<HostArg<'_>> = loops
            .params
            .iter()
            .zip(got.iter_mut())
            .map(|(p, a)| crate::common::host_arg(p, a))
            .collect();
        // SAFETY: the buffers hold what the kernel indexes for 5 blocks (as in `control`).
        unsafe { compiled.launch(&mut host_args, 5) }.expect("runs");
        drop(host_args);
        got
    };

    let mut by_passes = Vec::new();
    // The cache's libraries.
    let libraries = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let files = std::fs::read_dir(dir).into_iter().flatten().flatten();
        files
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .collect()
    };
    for passes in [Passes::default(), no_unroll] {
        let before = libraries(&dir);
        let cold = host::compile_all(&jobs, Some(&cache), passes).expect("compiles");
        assert_eq!(
            cold.iter().map(|k| k.name()).collect::<Vec<_>>(),
            ["scale", "loops"],
            "in the jobs' order"
        );
        assert_eq!(run(&cold[1]), expected, "{passes:?}");
        // Built together: one library, stored under each kernel's key, and both kernels
        // loaded from the first one's (their records name it).
        let cold_paths: Vec<_> = cold
            .iter()
            .map(|k| k.library_path().to_path_buf())
            .collect();
        assert!(cold_paths.iter().all(|p| p.starts_with(&dir) && p.exists()));
        assert_eq!(
            cold_paths[0], cold_paths[1],
            "one library for the kernels built at once"
        );
        let records: Vec<_> = cold.iter().map(|k| k.record().unwrap()).collect();
        assert_eq!(records[0].library, records[1].library);
        let reloaded = host::load_records(&records, &cache).expect("loads");
        assert_eq!(run(&reloaded[1]), expected);
        let library = std::fs::read(&cold_paths[0]).unwrap();
        drop((cold, reloaded));
        let warm = host::compile_all(&jobs, Some(&cache), passes).expect("loads");
        let warm_paths: Vec<_> = warm
            .iter()
            .map(|k| k.library_path().to_path_buf())
            .collect();
        assert_eq!(warm_paths[0], cold_paths[0], "loaded from the cache");
        // Each kernel's entry holds the library: the second one's is not opened again, and
        // both records name the first.
        assert_eq!(warm_paths[1], warm_paths[0], "one library opened");
        let warm_records: Vec<_> = warm.iter().map(|k| k.record().unwrap()).collect();
        assert_eq!(warm_records, records);
        assert_eq!(run(&warm[1]), expected);
        let stored: Vec<_> = libraries(&dir)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert_eq!(stored.len(), 2, "an entry per kernel: {stored:?}");
        assert!(stored.contains(&warm_paths[0]));
        let second = stored.into_iter().find(|p| *p != warm_paths[0]).unwrap();
        assert_eq!(std::fs::read(&second).unwrap(), library);
        by_passes.push(vec![warm_paths[0].clone(), second]);
    }
    // Other passes, other entries: four libraries in all.
    let mut paths = by_passes.concat();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 4, "{paths:?}");

    // One entry gone: it is rebuilt into its place, and the other one is loaded.
    let defaults = &by_passes[0];
    let kept = std::fs::read(&defaults[1]).unwrap();
    std::fs::remove_file(&defaults[0]).unwrap();
    let mixed = host::compile_all(&jobs, Some(&cache), Passes::default()).expect("compiles");
    let mixed_paths: Vec<_> = mixed
        .iter()
        .map(|k| k.library_path().to_path_buf())
        .collect();
    assert_eq!(&mixed_paths, defaults);
    assert!(defaults[0].exists());
    assert_eq!(std::fs::read(&defaults[1]).unwrap(), kept);
    assert_eq!(run(&mixed[1]), expected);
    // Without a cache: temporary libraries, both built.
    let uncached = host::compile_all(&jobs, None, no_unroll).expect("compiles");
    assert!(uncached.iter().all(|k| !k.library_path().starts_with(&dir)));
    assert_eq!(run(&uncached[1]), expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn launches_from_a_pool_worker_run_all_their_blocks() {
    let kernel = scale_kernel();
    let compiled = host::compile(&kernel).expect("compiles");
    let src: Vec<f32> = (0..1000).map(|k| k as f32).collect();
    let (name, dst) = host::on_workers(|| {
        let mut dst = vec![0.0f32; 1000];
        for scale in [3.0f32, 0.5] {
            let mut args = [
                HostArg::from(&src[..]),
                HostArg::from(&mut dst[..]),
                HostArg::from(scale),
                HostArg::from(1000u32),
            ];
            // SAFETY: both buffers hold the 1000 elements the kernel addresses in 40 blocks.
            unsafe { compiled.launch(&mut args, 40) }.expect("runs");
        }
        (std::thread::current().name().map(String::from), dst)
    });
    assert!(
        name.as_deref().is_some_and(|n| n.starts_with("kvq-host-")),
        "{name:?}"
    );
    assert!(dst.iter().zip(&src).all(|(d, s)| *d == s * 0.5));
}
