//! The tuned host quantize schedule against the default one, timed in the same run, on an
//! `[8, 16384, 128]` f16 span of one scheme. The tuned schedule comes from the committed table
//! (`tuning/host.json`, or `$KVQ_TUNING`); without an entry for this CPU it is tuned here first.
//! Prints the tuned kernel's time as a multiple of the default's.

mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kvq::bench::quantize::{span, HostQuantizer};
use kvq::tune;
use kvq_ir::lower::{InputType, Schedule, ShapeClass};
use kvq_ir::{Scheme, Shape3};

const GROUP: &str = "tune_quantize_8x16384x128_f16";
const SHAPE: [usize; 3] = [8, 16384, 128];
const SCHEME: &str = "bits = 1, axis = channel, group = all, rule = shrink(0.5)";

/// The span's shape.
fn shape3() -> Shape3 {
    let [heads, tokens, dim] = SHAPE;
    Shape3 { heads, tokens, dim }
}

fn bench(c: &mut Criterion) {
    let scheme = Scheme::parse(SCHEME).unwrap();
    let class = ShapeClass {
        head_dim: SHAPE[2] as u32,
        input: InputType::F16,
    };
    let default = Schedule::host_default(&scheme, class);
    let mut tuned = tune::schedule_for(tune::default_table(), &scheme, class, SHAPE[0], SHAPE[1]);
    if tuned == default {
        tuned = tune::tune(&scheme, class, SHAPE[0], SHAPE[1], 5)
            .unwrap()
            .best;
    }
    println!("{GROUP}: default {default:?}, tuned {tuned:?}");

    let x = span(shape3());
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    group.throughput(Throughput::Bytes((x.len() * 2) as u64));
    for (id, schedule) in [("default", default), ("tuned", tuned)] {
        let mut quantizer = HostQuantizer::new(&scheme, &schedule, shape3()).unwrap();
        group.bench_function(id, |b| b.iter(|| quantizer.run(black_box(&x)).unwrap()));
    }
    group.finish();
    common::print_ratios(GROUP, "default", &["tuned"]);
}

criterion_group!(benches, bench);
criterion_main!(benches);
