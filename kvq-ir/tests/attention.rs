//! The generated attention kernels, run by the interpreter, match the reference decode attention
//! (f64, dequantized) for every catalogue scheme as key and as value, with and without
//! calibration, on a batch of sequences with different fp and span lengths, over several
//! schedules (chunks and tiles that cut spans and parameter rows, several threads per block).

use kvq_ir::ir::{interp, verify};
use kvq_ir::lower::attention::{
    attention, plan, seq_field, AttentionArgs, AttentionLayout, AttentionSchedule, AttentionShape,
    SeqData, SeqExtent,
};
use kvq_ir::metrics::max_head_deviation;
use kvq_ir::reference::{decode_attention, quantize, PackedSpan, Segment};
use kvq_ir::scheme::catalogue::catalogue;
use kvq_ir::{CacheScheme, Calibration, Scheme, Tensor3};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, heads: usize, tokens: usize, dim: usize, a: f32) -> Tensor3 {
        let data = (0..heads * tokens * dim).map(|_| a * self.next()).collect();
        Tensor3::new([heads, tokens, dim], data).unwrap()
    }
}

const KV: usize = 2;
const G: usize = 3;
const D: usize = 64;

struct Seq {
    q: Vec<f32>,
    fp: Option<(Tensor3, Tensor3)>,
    span: Option<(Tensor3, Tensor3)>,
}

fn batch(rng: &mut Rng) -> Vec<Seq> {
    batch_of(rng, D)
}

fn batch_of(rng: &mut Rng, d: usize) -> Vec<Seq> {
    [(5, 35), (17, 20), (9, 0), (0, 30), (13, 37)]
        .into_iter()
        .map(|(fp, span)| Seq {
            q: rng.tensor(KV * G, 1, d, 2.0).data().to_vec(),
            fp: (fp > 0).then(|| (rng.tensor(KV, fp, d, 2.0), rng.tensor(KV, fp, d, 1.0))),
            span: (span > 0).then(|| (rng.tensor(KV, span, d, 2.0), rng.tensor(KV, span, d, 1.0))),
        })
        .collect()
}

fn run(
    kernel: &kvq_ir::ir::Kernel,
    args: &mut [interp::Arg],
    grid: u32,
) -> Result<(), interp::InterpError> {
    verify(kernel).unwrap_or_else(|e| panic!("{e}"));
    interp::run(kernel, args, grid)
}

/// Runs one scheme pair and schedule through the interpreter; returns the worst deviation.
fn check(scheme: &CacheScheme, schedule: &AttentionSchedule, seqs: &[Seq]) -> f64 {
    check_d(scheme, schedule, seqs, D)
}

/// [`check`] at head_dim `d`.
fn check_d(scheme: &CacheScheme, schedule: &AttentionSchedule, seqs: &[Seq], d: usize) -> f64 {
    check_dg(scheme, schedule, seqs, d, G)
}

/// [`check`] at head_dim `d` with `g` query heads per kv head (the sequences' queries have
/// `KV * g` heads).
fn check_dg(
    scheme: &CacheScheme,
    schedule: &AttentionSchedule,
    seqs: &[Seq],
    d: usize,
    g: usize,
) -> f64 {
    let spans: Vec<Option<(PackedSpan, PackedSpan)>> = seqs
        .iter()
        .map(|s| {
            s.span.as_ref().map(|(k, v)| {
                (
                    quantize(k, &scheme.key).unwrap(),
                    quantize(v, &scheme.value).unwrap(),
                )
            })
        })
        .collect();
    let data: Vec<SeqData<'_>> = seqs
        .iter()
        .zip(&spans)
        .map(|(s, span)| SeqData {
            q: &s.q,
            fp: s.fp.as_ref().map(|(k, v)| (k, v)),
            span: span.as_ref().map(|(k, v)| (k, v)),
        })
        .collect();
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: d as u32,
        group: g as u32,
    };
    let kernels = attention(scheme, shape, schedule).unwrap();
    let mut args = AttentionArgs::new(scheme, shape, schedule, KV, &data).unwrap();
    args.launch(&kernels, run).unwrap();
    let mut worst = 0.0f64;
    for (i, (got, s)) in args.outputs().iter().zip(&data).enumerate() {
        let mut segments = Vec::new();
        if let Some((k, v)) = s.fp {
            segments.push(Segment::Full { k, v });
        }
        if let Some((k, v)) = s.span {
            segments.push(Segment::Quantized { k, v });
        }
        let want = decode_attention(s.q, KV * g, &segments, scheme.calibrate).unwrap();
        let dev = max_head_deviation(got, &want, d);
        assert!(
            dev <= 1e-4,
            "sequence {i}, {scheme}, {schedule:?}: deviation {dev:e}"
        );
        worst = worst.max(dev);
    }
    worst
}

#[test]
fn every_catalogue_scheme_as_key_and_value_matches_the_reference() {
    let mut rng = Rng(11);
    let seqs = batch(&mut rng);
    let schemes: Vec<_> = catalogue().into_iter().map(|(_, s)| s).collect();
    let schedules = [
        AttentionSchedule {
            block_size: 1,
            chunk: 16,
            tile: 8,
            tables: true,
            layout: AttentionLayout::ThreadPerItem,
        },
        AttentionSchedule {
            block_size: 4,
            chunk: 64,
            tile: 32,
            tables: false,
            layout: AttentionLayout::ThreadPerItem,
        },
    ];
    let mut worst = 0.0f64;
    for (i, &key) in schemes.iter().enumerate() {
        let value = schemes[(i * 4 + 3) % schemes.len()];
        let calibrate = if i % 2 == 0 {
            Calibration::new(3.0)
        } else {
            None
        };
        for (key, value) in [(key, value), (value, key)] {
            let scheme = CacheScheme {
                key,
                value,
                calibrate,
            };
            worst = worst.max(check(&scheme, &schedules[i % 2], &seqs));
        }
    }
    println!("max relative deviation: {worst:e}");
}

#[test]
fn calibquant_with_calibration_over_many_chunks() {
    let mut rng = Rng(5);
    let seqs = batch(&mut rng);
    let s = catalogue();
    let scheme = CacheScheme {
        key: s[0].1,
        value: s[1].1,
        calibrate: Calibration::new(3.0),
    };
    for (chunk, tables) in [(8, true), (24, false), (4096, true), (4096, false)] {
        let schedule = AttentionSchedule {
            block_size: 2,
            chunk,
            tile: 8,
            tables,
            layout: AttentionLayout::ThreadPerItem,
        };
        check(&scheme, &schedule, &seqs);
    }
}

#[test]
fn schedules_that_cut_parameter_rows_are_rejected() {
    let s = catalogue();
    let scheme = CacheScheme {
        key: s[4].1,
        value: s[5].1,
        calibrate: None,
    };
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 64,
        group: 2,
    };
    for bad in [
        AttentionSchedule {
            block_size: 1,
            chunk: 64,
            tile: 48,
            tables: true,
            layout: AttentionLayout::ThreadPerItem,
        },
        AttentionSchedule {
            block_size: 1,
            chunk: 20,
            tile: 8,
            tables: true,
            layout: AttentionLayout::ThreadPerItem,
        },
        AttentionSchedule {
            block_size: 0,
            chunk: 64,
            tile: 8,
            tables: true,
            layout: AttentionLayout::ThreadPerItem,
        },
    ] {
        assert!(attention(&scheme, shape, &bad).is_err(), "{bad:?}");
    }
}

/// The block-per-item (GPU) layout on every catalogue pair it supports, with and without
/// calibration, under chunks shorter than a block's step, equal to it, and of several steps;
/// plus a long span cut into many chunks.
#[test]
fn block_per_item_layout_matches_the_reference() {
    let mut rng = Rng(23);
    let mut seqs = batch(&mut rng);
    seqs.push(Seq {
        q: rng.tensor(KV * G, 1, D, 2.0).data().to_vec(),
        fp: Some((rng.tensor(KV, 7, D, 2.0), rng.tensor(KV, 7, D, 1.0))),
        span: Some((rng.tensor(KV, 300, D, 2.0), rng.tensor(KV, 300, D, 1.0))),
    });
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: D as u32,
        group: G as u32,
    };
    let schemes: Vec<_> = catalogue().into_iter().map(|(_, s)| s).collect();
    let mut pairs = 0;
    for (i, &key) in schemes.iter().enumerate() {
        // Each key with the next two schemes as values.
        for &value in schemes.iter().cycle().skip(i + 1).take(2) {
            for calibrate in [None, Calibration::new(3.0)] {
                let scheme = CacheScheme {
                    key,
                    value,
                    calibrate,
                };
                if kvq_ir::lower::attention::block_per_item_supports(&scheme, shape).is_err() {
                    continue;
                }
                pairs += 1;
                for (block_size, chunk) in [(64, 32), (64, 64), (128, 256)] {
                    let schedule = AttentionSchedule {
                        block_size,
                        chunk,
                        tile: 16,
                        tables: false,
                        layout: AttentionLayout::BlockPerItem,
                    };
                    check(&scheme, &schedule, &seqs);
                }
            }
        }
    }
    assert!(pairs >= 4, "{pairs} pairs");
}

/// The block-per-item layout at head_dim 128, where 1-bit values go through tensor cores (MMA,
/// at this group of 3; quad tables and warp shuffles at groups over 4:
/// [`block_per_item_gqa_groups_1_to_8`]), for both bit orders, with and without calibration,
/// and one chunk of several steps of the tile loop (the accumulators rescaled as the running
/// maximum moves).
#[test]
fn block_per_item_mma_values_at_head_dim_128() {
    let mut rng = Rng(29);
    let d = 128;
    let mut seqs = batch_of(&mut rng, d);
    seqs.push(Seq {
        q: rng.tensor(KV * G, 1, d, 2.0).data().to_vec(),
        fp: None,
        span: Some((rng.tensor(KV, 290, d, 2.0), rng.tensor(KV, 290, d, 1.0))),
    });
    let cat = catalogue();
    for (key, value) in [(0, 1), (2, 2)] {
        for calibrate in [None, Calibration::new(3.0)] {
            let scheme = CacheScheme {
                key: cat[key].1,
                value: cat[value].1,
                calibrate,
            };
            for (block_size, chunk) in [(128, 256), (64, 32)] {
                let schedule = AttentionSchedule {
                    block_size,
                    chunk,
                    tile: 16,
                    tables: false,
                    layout: AttentionLayout::BlockPerItem,
                };
                check_d(&scheme, &schedule, &seqs, d);
            }
        }
    }
}

/// The catalogue scheme named `name`.
fn named(name: &str) -> Scheme {
    catalogue()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

/// Every pair of `keys` x `values` (calibrated for every other pair) on the block-per-item
/// layout at head_dim 64 and 128, under each `(block size, chunk)` of `schedules`, on the
/// ragged batch plus a sequence of `span` span and `fp` full-precision tokens.
fn check_block_pairs(
    seed: u64,
    keys: &[Scheme],
    values: &[Scheme],
    (span, fp): (usize, usize),
    schedules: &[(u32, u32)],
) {
    for d in [64usize, 128] {
        let mut rng = Rng(seed + d as u64);
        let mut seqs = batch_of(&mut rng, d);
        seqs.push(Seq {
            q: rng.tensor(KV * G, 1, d, 2.0).data().to_vec(),
            fp: Some((rng.tensor(KV, fp, d, 2.0), rng.tensor(KV, fp, d, 1.0))),
            span: Some((rng.tensor(KV, span, d, 2.0), rng.tensor(KV, span, d, 1.0))),
        });
        let shape = AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: d as u32,
            group: G as u32,
        };
        for (i, &key) in keys.iter().enumerate() {
            for (j, &value) in values.iter().enumerate() {
                let calibrate = [None, Calibration::new(3.0)][(i + j) % 2];
                let scheme = CacheScheme {
                    key,
                    value,
                    calibrate,
                };
                kvq_ir::lower::attention::block_per_item_supports(&scheme, shape)
                    .unwrap_or_else(|e| panic!("{key} / {value}: {e}"));
                for &(block_size, chunk) in schedules {
                    let schedule = AttentionSchedule {
                        block_size,
                        chunk,
                        tile: 16,
                        tables: false,
                        layout: AttentionLayout::BlockPerItem,
                    };
                    check_d(&scheme, &schedule, &seqs, d);
                }
            }
        }
    }
}

/// Token-axis values (KIVI's, and 4- and 8-bit rows) on the block-per-item layout: each value
/// row dequantized per token with its own parameters, at head_dim 64 (two channels a lane) and
/// 128 (four), beside the channel-axis keys it takes.
#[test]
fn block_per_item_token_axis_values() {
    let keys = ["calibquant_k", "quantile1", "calibquant_mid_lsb", "mse1"].map(named);
    let values = ["kivi2_v", "tok4", "tok8"].map(named);
    check_block_pairs(31, &keys, &values, (150, 5), &[(64, 64)]);
}

/// Keys of group = N (a parameter row per 32 or 64 tokens: KIVI's keys, 2-bit in both orders
/// with f16 or f32 parameters, and 4- and 8-bit rows), beside channel- and token-axis values;
/// ragged spans end inside a group.
#[test]
fn block_per_item_group_keys() {
    let keys = [
        named("kivi2_k"),
        named("kivi2_k_lsb_f32"),
        Scheme::parse("bits = 4, axis = channel, group = 64, rule = minmax").unwrap(),
        Scheme::parse("bits = 8, axis = channel, group = 32, rule = minmax, params = f32").unwrap(),
    ];
    let values = ["calibquant_v", "kivi2_v", "tok8"].map(named);
    check_block_pairs(37, &keys, &values, (170, 3), &[(64, 64), (128, 256)]);
}

/// Keys of axis = channel, group = all with 2- and 4-bit codes (several channels or several
/// levels per nibble of the key tables), in both bit orders, beside channel- and token-axis
/// values.
#[test]
fn block_per_item_multi_bit_table_keys() {
    let keys = [
        "bits = 2, axis = channel, group = all, rule = minmax",
        "bits = 2, axis = channel, group = all, rule = shrink(0.5), order = lsb",
        "bits = 4, axis = channel, group = all, rule = minmax, params = f32",
        "bits = 4, axis = channel, group = all, rule = minmax, order = lsb",
    ]
    .map(|s| Scheme::parse(s).unwrap());
    let values = ["calibquant_v", "kivi2_v"].map(named);
    check_block_pairs(53, &keys, &values, (150, 5), &[(64, 64)]);
}

/// Token-axis keys (a parameter per token and channel group: 1-, 2-, 4- and 8-bit rows, groups
/// of 8, 32, 64 channels or the whole row), beside channel- and token-axis values.
#[test]
fn block_per_item_token_axis_keys() {
    let keys = [
        named("kivi2_v"),
        named("tok4"),
        named("tok8"),
        Scheme::parse("bits = 1, axis = token, group = 8, rule = minmax, order = lsb").unwrap(),
    ];
    let values = ["calibquant_v", "kivi2_v", "tok4"].map(named);
    check_block_pairs(41, &keys, &values, (140, 4), &[(64, 64)]);
}

/// Values of axis = channel, group = N (a parameter row per 32 or 64 tokens), beside keys of
/// every layout.
#[test]
fn block_per_item_channel_group_values() {
    let keys = ["calibquant_k", "kivi2_k", "tok4"].map(named);
    let values = [
        named("kivi2_k"),
        named("kivi2_k_lsb_f32"),
        Scheme::parse("bits = 4, axis = channel, group = 64, rule = minmax").unwrap(),
    ];
    check_block_pairs(43, &keys, &values, (160, 6), &[(64, 64), (128, 256)]);
}

/// Every pair of catalogue schemes (as keys and as values) takes the block-per-item layout at
/// head_dim 64 and 128, so the GPU default is never the thread layout for them; a head_dim that
/// is not whole warps is refused with a reason.
#[test]
fn every_catalogue_pair_takes_the_block_layout() {
    let schemes: Vec<_> = catalogue().into_iter().map(|(_, s)| s).collect();
    for d in [64, 128] {
        let shape = AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: d,
            group: 4,
        };
        for &key in &schemes {
            for &value in &schemes {
                let scheme = CacheScheme {
                    key,
                    value,
                    calibrate: Calibration::new(3.0),
                };
                kvq_ir::lower::attention::block_per_item_supports(&scheme, shape)
                    .unwrap_or_else(|e| panic!("{key} / {value} at {d}: {e}"));
                let schedule = AttentionSchedule::gpu_default(&scheme, shape);
                assert_eq!(schedule.layout, AttentionLayout::BlockPerItem);
                schedule
                    .check(&scheme)
                    .expect("the default schedule is valid");
            }
        }
    }
    let scheme = CacheScheme {
        key: schemes[0],
        value: schemes[1],
        calibrate: None,
    };
    let odd = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 48,
        group: 4,
    };
    let why = kvq_ir::lower::attention::block_per_item_supports(&scheme, odd).unwrap_err();
    assert!(why.contains("multiple of 32"), "{why}");
}

/// GQA groups 1 to 8 on the block-per-item layout (heads padded to whole vectors of the tables
/// and weights: 1, 2, 4 per load), for CalibQuant with calibration (key tables; at head_dim 128
/// values on tensor cores up to 4 heads, quad values past them) and KIVI (group keys,
/// token-axis values), at head_dim 64 and 128.
#[test]
fn block_per_item_gqa_groups_1_to_8() {
    let pairs = [
        CacheScheme {
            key: named("calibquant_k"),
            value: named("calibquant_v"),
            calibrate: Calibration::new(3.0),
        },
        CacheScheme {
            key: named("kivi2_k"),
            value: named("kivi2_v"),
            calibrate: None,
        },
    ];
    for d in [64usize, 128] {
        for g in [1usize, 2, 4, 5, 8] {
            let mut rng = Rng(47 + (d * g) as u64);
            let seqs = vec![
                Seq {
                    q: rng.tensor(KV * g, 1, d, 2.0).data().to_vec(),
                    fp: Some((rng.tensor(KV, 7, d, 2.0), rng.tensor(KV, 7, d, 1.0))),
                    span: Some((rng.tensor(KV, 130, d, 2.0), rng.tensor(KV, 130, d, 1.0))),
                },
                Seq {
                    q: rng.tensor(KV * g, 1, d, 2.0).data().to_vec(),
                    fp: None,
                    span: Some((rng.tensor(KV, 40, d, 2.0), rng.tensor(KV, 40, d, 1.0))),
                },
            ];
            let shape = AttentionShape {
                fp: kvq_ir::lower::InputType::F32,
                head_dim: d as u32,
                group: g as u32,
            };
            for scheme in &pairs {
                let schedule = AttentionSchedule::gpu_default(scheme, shape);
                assert_eq!(schedule.layout, AttentionLayout::BlockPerItem);
                check_dg(scheme, &schedule, &seqs, d, g);
            }
        }
    }
}

/// The block layout's kernels take a span chunk's length from the launch (`span_chunk`), not
/// from the schedule: schedules that differ only in `chunk` lower to the same kernels, so the
/// tests above (chunks of 32, 64 and 256 tokens) run the kernels any planned chunk runs.
#[test]
fn block_layout_kernels_do_not_depend_on_the_schedule_chunk() {
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 128,
        group: 4,
    };
    for (key, value, calibrate) in [
        ("calibquant_k", "calibquant_v", Calibration::new(3.0)),
        ("kivi2_k", "kivi2_v", None),
    ] {
        let scheme = CacheScheme {
            key: named(key),
            value: named(value),
            calibrate,
        };
        let with_chunk = |chunk| {
            let schedule = AttentionSchedule {
                chunk,
                ..AttentionSchedule::gpu_default(&scheme, shape)
            };
            attention(&scheme, shape, &schedule).unwrap()
        };
        assert_eq!(with_chunk(64), with_chunk(1024), "{key} / {value}");
    }
}

/// The planned span chunk: the schedule's on the host; with the block layout, doubled (at
/// most to 4 times it) while the span keeps at least 1,024 blocks; the plan's chunk counts
/// follow it.
#[test]
fn span_chunk_grows_with_the_span_on_the_block_layout() {
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 128,
        group: 4,
    };
    let scheme = CacheScheme {
        key: named("calibquant_k"),
        value: named("calibquant_v"),
        calibrate: Calibration::new(3.0),
    };
    let gpu = AttentionSchedule::gpu_default(&scheme, shape);
    assert_eq!(
        (gpu.layout, gpu.chunk),
        (AttentionLayout::BlockPerItem, 256)
    );
    let host = AttentionSchedule::host_default(&scheme);
    let kv = 8;
    // (span tokens of each sequence, planned chunk): blocks at 256 tokens are span / 256 x 8.
    for (spans, chunk) in [
        (vec![4096], 256),            // 128 blocks
        (vec![16384], 256),           // 512: doubling would leave 256
        (vec![32768], 256),           // 1,024: doubling would leave 512
        (vec![65536], 512),           // 2,048 -> 1,024 at 512
        (vec![65536; 4], 1024),       // 8,192 -> 2,048 at 1,024, the cap
        (vec![16384, 1, 16384], 256), // 1,032: doubling would leave 520
        (vec![32768, 32768], 512),    // 2,048 -> 1,024 at 512
    ] {
        let extents: Vec<SeqExtent> = spans
            .iter()
            .map(|&span_tokens| SeqExtent {
                fp_tokens: 3,
                span_tokens,
            })
            .collect();
        let p = plan(&scheme, kv, 128, &extents, &gpu).unwrap();
        assert_eq!(p.span_chunk, chunk, "{spans:?}");
        for (i, &span) in spans.iter().enumerate() {
            let want = span.div_ceil(chunk as usize) as u32;
            assert_eq!(p.field(i, seq_field::SPAN_CHUNKS), want, "{spans:?}");
        }
        let p = plan(&scheme, kv, 128, &extents, &host).unwrap();
        assert_eq!(p.span_chunk, host.chunk, "{spans:?}");
    }
}
