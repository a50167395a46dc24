//! Launch argument checks: typed errors, never a panic, nothing run.

use half::f16;
use kvq_codegen::host::{self, BufferMut, BufferRef, HostArg};
use kvq_codegen::{ArgKind, CodegenError};
use kvq_ir::ir::ScalarType;

use crate::common::info;
use crate::control::scale_kernel;

#[test]
fn good_arguments_run() {
    let kernel = scale_kernel();
    let compiled = host::compile(&kernel, &info(&kernel)).expect("compiles");
    assert_eq!(compiled.name(), "scale");
    let src: Vec<f32> = (0..100).map(|k| k as f32).collect();
    let mut dst = vec![0.0f32; 100];
    let mut args = [
        HostArg::from(&src[..]),
        HostArg::from(&mut dst[..]),
        HostArg::from(0.5f32),
        HostArg::from(100u32),
    ];
    compiled.launch(&mut args, 4).expect("runs");
    assert!(dst.iter().zip(&src).all(|(d, s)| *d == s * 0.5));
    // A grid of zero blocks runs nothing.
    let mut dst = vec![9.0f32; 100];
    let mut args = [
        HostArg::ReadOnly(BufferRef::F32(&src)),
        HostArg::Buffer(BufferMut::F32(&mut dst)),
        HostArg::F32(2.0),
        HostArg::U32(100),
    ];
    compiled.launch(&mut args, 0).expect("runs");
    assert!(dst.iter().all(|&d| d == 9.0));
}

#[test]
fn bad_arguments_give_typed_errors() {
    let kernel = scale_kernel();
    let compiled = host::compile(&kernel, &info(&kernel)).expect("compiles");
    let src = [1.0f32; 8];
    let mut dst = [0.0f32; 8];
    let mut halves = [f16::ZERO; 8];

    let err = compiled
        .launch(
            &mut [HostArg::from(&src[..]), HostArg::from(&mut dst[..])],
            1,
        )
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
    let err = compiled
        .launch(
            &mut [
                HostArg::from(&src[..]),
                HostArg::from(&dst[..]),
                HostArg::F32(1.0),
                HostArg::U32(8),
            ],
            1,
        )
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
    let err = compiled
        .launch(
            &mut [
                HostArg::from(&mut halves[..]),
                HostArg::from(&mut dst[..]),
                HostArg::F32(1.0),
                HostArg::U32(8),
            ],
            1,
        )
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
    let err = compiled
        .launch(
            &mut [
                HostArg::from(&src[..]),
                HostArg::from(&mut dst[..]),
                HostArg::U32(8),
                HostArg::F32(1.0),
            ],
            1,
        )
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
    let err = compiled
        .launch(
            &mut [
                HostArg::U32(0),
                HostArg::from(&mut dst[..]),
                HostArg::F32(1.0),
                HostArg::U32(8),
            ],
            1,
        )
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
fn compiled_library_is_removed_on_drop() {
    let kernel = scale_kernel();
    let compiled = host::compile(&kernel, &info(&kernel)).expect("compiles");
    let text = format!("{compiled:?}");
    let dir = text
        .split("library: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the debug form names the library directory")
        .to_string();
    assert!(std::path::Path::new(&dir).join("kernel.so").exists());
    assert!(!std::path::Path::new(&dir).join("kernel.o").exists());
    drop(compiled);
    assert!(!std::path::Path::new(&dir).exists());
}
