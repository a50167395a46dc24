//! The reference quantizer's throughput on an `[8, 4096, 128]` span against a plain copy of the
//! same f16 bytes, timed in the same run. The reference is written to be obviously correct, not
//! fast: this is the baseline generated kernels will be measured against.

mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kvq::reference::quantize;
use kvq::{Scheme, Tensor3};

const GROUP: &str = "quantize_8x4096x128";

fn span() -> Tensor3 {
    let shape = [8, 4096, 128];
    let n = shape.iter().product::<usize>();
    let data = (0..n)
        .map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 / 500.0 - 1.0).to_f32())
        .collect();
    Tensor3::new(shape, data).unwrap()
}

fn bench(c: &mut Criterion) {
    let x = span();
    let f16_bytes: Vec<u8> = x
        .data()
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    group.throughput(Throughput::Bytes(f16_bytes.len() as u64));
    group.bench_function("copy", |b| b.iter(|| black_box(f16_bytes.clone())));
    for (id, text) in [
        (
            "reference_shrink_1bit",
            "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
        ),
        (
            "reference_minmax_4bit_token",
            "bits = 4, axis = token, group = 32, rule = minmax",
        ),
    ] {
        let scheme = Scheme::parse(text).unwrap();
        group.bench_function(id, |b| b.iter(|| quantize(black_box(&x), &scheme).unwrap()));
    }
    group.finish();
    common::print_ratios(
        GROUP,
        "copy",
        &["reference_shrink_1bit", "reference_minmax_4bit_token"],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
