//! Compile latency of one kernel (CalibQuant's key quantizer, head_dim 128, f16 input): cold
//! (no cache: LLVM, and for the host the linker and the loader) and warm (a compile-cache hit),
//! for PTX (sm_90) and host code. Aims: under 30 ms cold, under 1 ms warm.

use criterion::{criterion_group, criterion_main, Criterion};
use kvq_codegen::cache::CompileCache;
use kvq_codegen::{host, ptx, Arch};
use kvq_ir::ir::verify;
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_ir::Scheme;

fn bench(c: &mut Criterion) {
    let scheme =
        Scheme::parse("bits = 1, axis = channel, group = all, rule = shrink(0.5)").unwrap();
    let class = ShapeClass {
        head_dim: 128,
        input: InputType::F16,
    };
    let gpu = lower::quantize(&scheme, class, &Schedule::gpu_default(&scheme, class))
        .unwrap()
        .kernel;
    let cpu = lower::quantize(&scheme, class, &Schedule::host_default(&scheme, class))
        .unwrap()
        .kernel;
    let gpu_info = verify(&gpu).unwrap();
    let dir = std::env::temp_dir().join(format!("kvq-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = CompileCache::new(&dir);

    let mut group = c.benchmark_group("compile_calibquant_k_d128");
    group.sample_size(20);
    group.bench_function("ptx_sm90_cold", |b| {
        b.iter(|| ptx::emit_with(&gpu, &gpu_info, Arch::Sm90, None).unwrap())
    });
    ptx::emit_with(&gpu, &gpu_info, Arch::Sm90, Some(&cache)).unwrap();
    group.bench_function("ptx_sm90_warm", |b| {
        b.iter(|| ptx::emit_with(&gpu, &gpu_info, Arch::Sm90, Some(&cache)).unwrap())
    });
    group.bench_function("host_cold", |b| {
        b.iter(|| host::compile_with(&cpu, None).unwrap())
    });
    drop(host::compile_with(&cpu, Some(&cache)).unwrap());
    group.bench_function("host_warm", |b| {
        b.iter(|| host::compile_with(&cpu, Some(&cache)).unwrap())
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
