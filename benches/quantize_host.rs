//! Generated host-code quantize throughput on an `[8, 16384, 128]` f16 span, against a plain
//! multi-threaded copy of the same bytes and the reference implementation, timed in the same run.
//! Prints each kernel's bandwidth as a fraction of the copy's. (`kvq bench quantize` makes the
//! same comparison from the release binary.)

mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use half::f16;
use kvq::bench::quantize::{parallel_copy, span, HostQuantizer};
use kvq_ir::lower::{InputType, Schedule, ShapeClass};
use kvq_ir::{Scheme, Shape3, Tensor3};

const GROUP: &str = "host_quantize_8x16384x128_f16";
const SHAPE: [usize; 3] = [8, 16384, 128];
const SCHEMES: [(&str, &str); 4] = [
    (
        "calibquant_k_shrink_1bit",
        "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
    ),
    (
        "minmax_2bit_channel_g32",
        "bits = 2, axis = channel, group = 32, rule = minmax",
    ),
    (
        "minmax_2bit_token_g32",
        "bits = 2, axis = token, group = 32, rule = minmax",
    ),
    (
        "minmax_4bit_token",
        "bits = 4, axis = token, group = all, rule = minmax",
    ),
];

fn bench(c: &mut Criterion) {
    let [heads, tokens, dim] = SHAPE;
    let shape = Shape3 { heads, tokens, dim };
    let x = span(shape);
    let bytes = (x.len() * 2) as u64;
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    let mut copy = vec![f16::ZERO; x.len()];
    group.bench_function("copy", |b| {
        b.iter(|| parallel_copy(black_box(&x), &mut copy))
    });

    let tensor = Tensor3::new(SHAPE, x.iter().map(|v| v.to_f32()).collect()).unwrap();
    let reference_scheme = Scheme::parse(SCHEMES[0].1).unwrap();
    group.bench_function("reference_calibquant_k", |b| {
        b.iter(|| kvq::reference::quantize(black_box(&tensor), &reference_scheme).unwrap())
    });

    let mut ids = vec!["reference_calibquant_k".to_string()];
    for (id, text) in SCHEMES {
        let scheme = Scheme::parse(text).unwrap();
        let class = ShapeClass {
            head_dim: SHAPE[2] as u32,
            input: InputType::F16,
        };
        let default = Schedule::host_default(&scheme, class);
        let tuned = kvq::tune::schedule_for(
            kvq::tune::default_table(),
            &scheme,
            class,
            SHAPE[0],
            SHAPE[1],
        );
        let mut variants = vec![(id.to_string(), default)];
        if tuned != default {
            variants.push((format!("{id}_tuned"), tuned));
        }
        for (bench_id, schedule) in variants {
            ids.push(bench_id.clone());
            let mut quantizer = HostQuantizer::new(&scheme, &schedule, shape).unwrap();
            group.bench_function(bench_id.as_str(), |b| {
                b.iter(|| quantizer.run(black_box(&x)).unwrap())
            });
        }
    }
    group.finish();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    common::print_bandwidth_fractions(GROUP, "copy", &ids);
}

criterion_group!(benches, bench);
criterion_main!(benches);
