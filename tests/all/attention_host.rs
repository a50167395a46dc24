//! Generated fused decode attention on the host CPU against the reference decode attention
//! (f64, dequantized): every catalogue scheme as key and as value, with and without calibration,
//! on a random batch and on the real DINOv2 and SmolLM2 captures.

use kvq::attention::{HostAttention, SeqData};
use kvq::lower::attention::{plan, AttentionLayout, AttentionSchedule, AttentionShape, SeqExtent};
use kvq::lower::InputType;
use kvq::metrics::max_head_deviation as deviation;
use kvq::reference::{decode_attention, quantize, PackedSpan, Segment};
use kvq::{CacheScheme, Calibration, Scheme, Tensor3};
use kvq_ir::scheme::catalogue::catalogue;
use kvq_runtime::KvFile;

use crate::fixtures::{dinov2, smollm2};

const TOL: f64 = 1e-4;

/// One sequence: query, fp tokens, unquantized span.
struct Seq {
    q: Vec<f32>,
    fp: Option<(Tensor3, Tensor3)>,
    span: (Tensor3, Tensor3),
}

/// Runs the batch on the host and checks each output against the reference.
fn check(scheme: &CacheScheme, g: usize, schedule: Option<AttentionSchedule>, seqs: &[Seq]) -> f64 {
    check_fp(scheme, g, schedule, seqs, InputType::F32)
}

/// [`check`] with full-precision rows of type `fp`: the reference reads them rounded to it.
fn check_fp(
    scheme: &CacheScheme,
    g: usize,
    schedule: Option<AttentionSchedule>,
    seqs: &[Seq],
    fp: InputType,
) -> f64 {
    let s0 = seqs[0].span.0.shape();
    let (kv, d) = (s0.heads, s0.dim);
    let spans: Vec<(PackedSpan, PackedSpan)> = seqs
        .iter()
        .map(|s| {
            (
                quantize(&s.span.0, &scheme.key).unwrap(),
                quantize(&s.span.1, &scheme.value).unwrap(),
            )
        })
        .collect();
    let data: Vec<SeqData<'_>> = seqs
        .iter()
        .zip(&spans)
        .map(|(s, (k, v))| SeqData {
            q: &s.q,
            fp: s.fp.as_ref().map(|(k, v)| (k, v)),
            span: Some((k, v)),
        })
        .collect();
    let shape = AttentionShape {
        fp,
        head_dim: d as u32,
        group: g as u32,
    };
    let attn = HostAttention::new(scheme, shape, schedule).unwrap();
    let got = attn.attend(kv, &data).unwrap();
    let mut worst = 0.0f64;
    for (i, (out, s)) in got.iter().zip(&data).enumerate() {
        let mut segments = Vec::new();
        let fp_rows =
            s.fp.map(|(k, v)| (k.map(|x| fp.round(x)), v.map(|x| fp.round(x))));
        if let Some((k, v)) = &fp_rows {
            segments.push(Segment::Full { k, v });
        }
        let (k, v) = s.span.unwrap();
        segments.push(Segment::Quantized { k, v });
        let want = decode_attention(s.q, kv * g, &segments, scheme.calibrate).unwrap();
        let dev = deviation(out, &want, d);
        assert!(dev <= TOL, "sequence {i}, {scheme}: deviation {dev:e}");
        worst = worst.max(dev);
    }
    worst
}

struct Rng(u64);

impl Rng {
    fn tensor(&mut self, heads: usize, tokens: usize, dim: usize, a: f32) -> Tensor3 {
        let data = (0..heads * tokens * dim)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                a * (((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect();
        Tensor3::new([heads, tokens, dim], data).unwrap()
    }
}

#[test]
fn every_catalogue_scheme_as_key_and_as_value_on_a_random_batch() {
    let (kv, g, d) = (2, 4, 64);
    let seqs = random_batch(&mut Rng(3), [kv, g, d], &[(7, 300), (0, 97), (70, 1000)]);
    let cat: Vec<Scheme> = catalogue().into_iter().map(|(_, s)| s).collect();
    let small = AttentionSchedule {
        block_size: 1,
        chunk: 128,
        tile: 32,
        tables: true,
        layout: AttentionLayout::ThreadPerItem,
    };
    let mut worst = 0.0f64;
    for &s in &cat {
        let as_key = CacheScheme {
            key: s,
            value: cat[1],
            calibrate: Calibration::new(3.0),
        };
        let as_value = CacheScheme {
            key: cat[0],
            value: s,
            calibrate: None,
        };
        worst = worst.max(check(&as_key, g, None, &seqs));
        worst = worst.max(check(&as_value, g, Some(small), &seqs));
    }
    println!("max relative deviation (host, random): {worst:e}");
}

/// Full-precision rows stored as f16 or bf16 (a cache built so): the generated host code of the
/// host and GPU schedules reads them narrow and matches the reference over the rounded rows.
#[test]
fn narrow_full_precision_rows_on_the_host_and_gpu_schedules() {
    let (kv, g, d) = (2, 4, 64);
    let seqs = random_batch(&mut Rng(11), [kv, g, d], &[(7, 300), (70, 200)]);
    let scheme = CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
    )
    .unwrap();
    let shape = AttentionShape {
        fp: InputType::F32,
        head_dim: d as u32,
        group: g as u32,
    };
    for fp in [InputType::F16, InputType::BF16] {
        let host = AttentionSchedule::host_default(&scheme);
        let gpu = AttentionSchedule::gpu_default(&scheme, shape);
        assert_eq!(gpu.layout, AttentionLayout::BlockPerItem);
        for schedule in [host, gpu] {
            check_fp(&scheme, g, Some(schedule), &seqs, fp);
        }
    }
}

/// The GPU schedule (block per work item: warps, shuffles and shared memory, run as host code)
/// for every catalogue scheme as keys beside the next as values (every layout of keys and
/// values), with and without calibration: the reference's outputs within 1e-4.
#[test]
fn gpu_schedule_as_host_code_on_a_random_batch() {
    let (kv, g, d) = (2, 4, 64);
    let seqs = random_batch(&mut Rng(17), [kv, g, d], &[(7, 300), (0, 97), (40, 1000)]);
    let shape = AttentionShape {
        fp: InputType::F32,
        head_dim: d as u32,
        group: g as u32,
    };
    let cat: Vec<Scheme> = catalogue().into_iter().map(|(_, s)| s).collect();
    let mut pairs = 0;
    for (i, &key) in cat.iter().enumerate() {
        for calibrate in [None, Calibration::new(3.0)] {
            let scheme = CacheScheme {
                key,
                value: cat[(i + 1) % cat.len()],
                calibrate,
            };
            let schedule = AttentionSchedule::gpu_default(&scheme, shape);
            assert_eq!(schedule.layout, AttentionLayout::BlockPerItem, "{scheme}");
            pairs += 1;
            check(&scheme, g, Some(schedule), &seqs);
        }
    }
    // Every key of the catalogue, each beside the next scheme as values, calibrated or not.
    assert_eq!(pairs, 2 * cat.len());
}

/// The GPU schedule as host code on spans long enough that the batch plan lengthens the span
/// chunk (`AttentionSchedule::span_chunk`: here 32 -> 64 tokens, with ragged last chunks), so
/// the kernels run on a `span_chunk` other than the schedule's; 1-bit CalibQuant (values on
/// tensor cores at head_dim 128, group 2) with calibration and the KIVI-like pair.
#[test]
fn gpu_schedule_with_a_lengthened_span_chunk_as_host_code() {
    let (kv, g, d) = (4, 2, 128);
    let lens = [(5, 9000), (0, 8000)];
    let seqs = random_batch(&mut Rng(61), [kv, g, d], &lens);
    let shape = AttentionShape {
        fp: InputType::F32,
        head_dim: d as u32,
        group: g as u32,
    };
    let named = |n: &str| catalogue().into_iter().find(|(m, _)| *m == n).unwrap().1;
    for (key, value, calibrate) in [
        ("calibquant_k", "calibquant_v", Calibration::new(3.0)),
        ("kivi2_k", "kivi2_v", None),
    ] {
        let scheme = CacheScheme {
            key: named(key),
            value: named(value),
            calibrate,
        };
        let schedule = AttentionSchedule {
            chunk: 32,
            ..AttentionSchedule::gpu_default(&scheme, shape)
        };
        let extents: Vec<SeqExtent> = lens
            .iter()
            .map(|&(fp_tokens, span_tokens)| SeqExtent {
                fp_tokens,
                span_tokens,
            })
            .collect();
        let plan = plan(&scheme, kv, d, &extents, &schedule).unwrap();
        // 282 + 250 chunks of 32 per head; 141 + 125 of 64 keep 1,064 blocks; 128 would not.
        assert_eq!(plan.span_chunk, 64, "{scheme}");
        check(&scheme, g, Some(schedule), &seqs);
    }
}

/// Sequences of `(fp tokens, span tokens)` with random queries and K/V, for `[kv heads, group,
/// head_dim]`.
fn random_batch(rng: &mut Rng, [kv, g, d]: [usize; 3], lens: &[(usize, usize)]) -> Vec<Seq> {
    lens.iter()
        .map(|&(fp, span)| Seq {
            q: rng.tensor(kv * g, 1, d, 2.0).data().to_vec(),
            fp: (fp > 0).then(|| (rng.tensor(kv, fp, d, 2.0), rng.tensor(kv, fp, d, 1.0))),
            span: (rng.tensor(kv, span, d, 2.0), rng.tensor(kv, span, d, 1.0)),
        })
        .collect()
}

/// `[heads, tokens, dim]` rows `range` of `x`.
fn rows(x: &Tensor3, range: std::ops::Range<usize>) -> Tensor3 {
    x.slice_tokens(range).unwrap()
}

/// Decode query of the last token, `[q_heads * dim]`.
fn last_query(q: &Tensor3) -> Vec<f32> {
    let s = q.shape();
    (0..s.heads)
        .flat_map(|h| q.row(h, s.tokens - 1).to_vec())
        .collect()
}

#[test]
fn real_captures_with_calibquant_and_kivi() {
    let calibquant = CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
    )
    .unwrap();
    let kivi = CacheScheme::parse(
        "key(bits = 2, axis = channel, group = 32, rule = minmax), \
         value(bits = 2, axis = token, group = 32, rule = minmax)",
    )
    .unwrap();
    let mut worst = 0.0f64;
    // DINOv2: the CLS token full precision, the 256 patch tokens quantized.
    let file = KvFile::load(&dinov2()).unwrap();
    for layer in &file.layers {
        let n = layer.k.shape().tokens;
        let g = layer.q.shape().heads / layer.k.shape().heads;
        let seq = Seq {
            q: last_query(&layer.q),
            fp: Some((rows(&layer.k, 0..1), rows(&layer.v, 0..1))),
            span: (rows(&layer.k, 1..n), rows(&layer.v, 1..n)),
        };
        for scheme in [&calibquant, &kivi] {
            worst = worst.max(check(scheme, g, None, std::slice::from_ref(&seq)));
        }
    }
    // SmolLM2: a text prefix and suffix around a quantized middle.
    let file = KvFile::load(&smollm2()).unwrap();
    for layer in &file.layers {
        let n = layer.k.shape().tokens;
        let g = layer.q.shape().heads / layer.k.shape().heads;
        let (a, b) = (5, n - 40);
        let fp_k = cat(&rows(&layer.k, 0..a), &rows(&layer.k, b..n));
        let fp_v = cat(&rows(&layer.v, 0..a), &rows(&layer.v, b..n));
        let seq = Seq {
            q: last_query(&layer.q),
            fp: Some((fp_k, fp_v)),
            span: (rows(&layer.k, a..b), rows(&layer.v, a..b)),
        };
        for scheme in [&calibquant, &kivi] {
            worst = worst.max(check(scheme, g, None, std::slice::from_ref(&seq)));
        }
    }
    println!("max relative deviation (host, captures): {worst:e}");
}

/// Tokens of `a` then `b`, per head.
fn cat(a: &Tensor3, b: &Tensor3) -> Tensor3 {
    a.concat_tokens(b).unwrap()
}

#[test]
fn host_span_quantizer_fills_a_cache_with_the_reference_codes() {
    use kvq::backend::HostSpanQuantizer;
    use kvq_runtime::{ModelShape, ReferenceQuantizer, VisualKvCache};
    let file = KvFile::load(&dinov2()).unwrap();
    let layer = &file.layers[2];
    let s = layer.k.shape();
    let shape = ModelShape {
        layers: 1,
        kv_heads: s.heads,
        q_heads: layer.q.shape().heads,
        head_dim: s.dim,
    };
    for (_, key) in catalogue() {
        let scheme = CacheScheme {
            key,
            value: catalogue()[1].1,
            calibrate: None,
        };
        let mut host = VisualKvCache::new(shape, scheme, HostSpanQuantizer).unwrap();
        let mut reference = VisualKvCache::new(shape, scheme, ReferenceQuantizer).unwrap();
        let (a, b) = (host.add_sequence(), reference.add_sequence());
        host.prefill(0, a, &layer.k, &layer.v, 1..s.tokens).unwrap();
        reference
            .prefill(0, b, &layer.k, &layer.v, 1..s.tokens)
            .unwrap();
        assert_eq!(
            host.export_span(0, a).unwrap(),
            reference.export_span(0, b).unwrap(),
            "{key}"
        );
    }
}

#[test]
fn the_cache_attends_through_the_generated_kernels() {
    use kvq::backend::HostSpanQuantizer;
    use kvq_runtime::{CacheError, ModelShape, QueryRef, VisualKvCache};
    let shape = ModelShape {
        layers: 2,
        kv_heads: 2,
        q_heads: 6,
        head_dim: 64,
    };
    let schemes: Vec<Scheme> = catalogue().into_iter().map(|(_, s)| s).collect();
    let mut rng = Rng(17);
    // (prompt tokens, visual range, appended tokens): a prefix and suffix, a span at the start
    // with decode tokens, a text-only prompt.
    let layout: [(usize, std::ops::Range<usize>, usize); 3] =
        [(300, 5..280, 0), (120, 0..100, 3), (40, 0..0, 2)];
    let data: Vec<_> = layout
        .iter()
        .map(|(n, _, extra)| {
            let k = rng.tensor(2, *n, 64, 2.0);
            let v = rng.tensor(2, *n, 64, 1.0);
            let appended: Vec<_> = (0..*extra)
                .map(|_| (rng.tensor(2, 1, 64, 2.0), rng.tensor(2, 1, 64, 1.0)))
                .collect();
            let q = rng.tensor(6, 1, 64, 2.0).data().to_vec();
            (k, v, appended, q)
        })
        .collect();
    for (i, &key) in schemes.iter().enumerate() {
        let scheme = CacheScheme {
            key,
            value: schemes[(i + 5) % schemes.len()],
            calibrate: if i % 2 == 0 {
                Calibration::new(3.0)
            } else {
                None
            },
        };
        let attn = HostAttention::new(
            &scheme,
            AttentionShape {
                fp: InputType::F32,
                head_dim: 64,
                group: 3,
            },
            None,
        )
        .unwrap();
        let mut cache = VisualKvCache::new(shape, scheme, HostSpanQuantizer).unwrap();
        let seqs: Vec<_> = layout
            .iter()
            .zip(&data)
            .map(|((_, visual, _), (k, v, appended, _))| {
                let seq = cache.add_sequence();
                cache.prefill(1, seq, k, v, visual.clone()).unwrap();
                for (ak, av) in appended {
                    cache.append(1, seq, ak, av).unwrap();
                }
                seq
            })
            .collect();
        let queries: Vec<QueryRef<'_>> = seqs
            .iter()
            .zip(&data)
            .map(|(&seq, d)| QueryRef { seq, q: &d.3 })
            .collect();
        let generated = cache.attend_with(1, &queries, &attn).unwrap();
        let hand_written = cache.attend(1, &queries).unwrap();
        for (((g, h), ((_, visual, _), (k, v, appended, q))), seq) in generated
            .iter()
            .zip(&hand_written)
            .zip(layout.iter().zip(&data))
            .zip(&seqs)
        {
            // The reference over the same segments: prefix, quantized span, suffix + appended.
            let n = k.shape().tokens;
            let some_rows =
                |x: &Tensor3, r: std::ops::Range<usize>| (!r.is_empty()).then(|| rows(x, r));
            let prefix = some_rows(k, 0..visual.start).zip(some_rows(v, 0..visual.start));
            let mut suffix = some_rows(k, visual.end..n).zip(some_rows(v, visual.end..n));
            for (ak, av) in appended {
                suffix = Some(match suffix {
                    Some((sk, sv)) => (cat(&sk, ak), cat(&sv, av)),
                    None => (ak.clone(), av.clone()),
                });
            }
            let span = cache.export_span(1, *seq).ok();
            let mut segments = Vec::new();
            if let Some((k, v)) = &prefix {
                segments.push(Segment::Full { k, v });
            }
            if let Some((k, v)) = &span {
                segments.push(Segment::Quantized { k, v });
            }
            if let Some((k, v)) = &suffix {
                segments.push(Segment::Full { k, v });
            }
            let want = decode_attention(q, 6, &segments, scheme.calibrate).unwrap();
            let dev = deviation(g, &want, 64);
            assert!(
                dev <= TOL,
                "{scheme}: generated deviates {dev:e} from the reference"
            );
            assert!(deviation(h, &want, 64) <= TOL, "{scheme}: hand-written");
        }
        // The same checks as `attend`, before any kernel runs.
        let bad = [QueryRef {
            seq: seqs[0],
            q: &data[0].3[..10],
        }];
        assert!(matches!(
            cache.attend_with(1, &bad, &attn),
            Err(CacheError::Shape { .. })
        ));
        assert!(matches!(
            cache.attend_with(0, &queries, &attn),
            Err(CacheError::NotPrefilled { .. })
        ));
    }
}

/// The cache path keeps its launch buffers from call to call (`HostAttention`'s scratch): a
/// sequence's output must not depend on what the calls before it left there. The batch runs in
/// two orders, each sequence then following different ones (a longer span, a shorter one, none),
/// and once more in the first order: every sequence's output is the same bits each time, and
/// within the tolerance of the hand-written attention.
#[test]
fn the_cache_paths_reused_buffers_leave_no_trace() {
    use kvq::backend::HostSpanQuantizer;
    use kvq_runtime::{ModelShape, QueryRef, VisualKvCache};
    let shape = ModelShape {
        layers: 1,
        kv_heads: 2,
        q_heads: 8,
        head_dim: 64,
    };
    let mut rng = Rng(29);
    // (prompt tokens, visual range): a long span, a short one, a text-only prompt.
    let layout: [(usize, std::ops::Range<usize>); 3] = [(700, 10..690), (90, 0..80), (30, 0..0)];
    for text in [
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 2, axis = token, group = 64, rule = minmax)",
    ] {
        let scheme = CacheScheme::parse(text).unwrap();
        let attn = HostAttention::new(
            &scheme,
            AttentionShape {
                fp: InputType::F32,
                head_dim: 64,
                group: 4,
            },
            None,
        )
        .unwrap();
        let mut cache = VisualKvCache::new(shape, scheme, HostSpanQuantizer).unwrap();
        let mut queries = Vec::new();
        for (n, visual) in &layout {
            let (k, v) = (rng.tensor(2, *n, 64, 2.0), rng.tensor(2, *n, 64, 1.0));
            let seq = cache.add_sequence();
            cache.prefill(0, seq, &k, &v, visual.clone()).unwrap();
            queries.push((seq, rng.tensor(8, 1, 64, 2.0).data().to_vec()));
        }
        let refs: Vec<QueryRef<'_>> = queries
            .iter()
            .map(|(seq, q)| QueryRef { seq: *seq, q })
            .collect();
        let reversed: Vec<QueryRef<'_>> = refs.iter().rev().copied().collect();
        let first = cache.attend_with(0, &refs, &attn).unwrap();
        let mut backwards = cache.attend_with(0, &reversed, &attn).unwrap();
        backwards.reverse();
        let hand_written = cache.attend(0, &refs).unwrap();
        for again in [backwards, cache.attend_with(0, &refs, &attn).unwrap()] {
            for (i, (a, b)) in first.iter().zip(&again).enumerate() {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{scheme}: sequence {i} changed with the calls before it"
                );
            }
        }
        for (g, h) in first.iter().zip(&hand_written) {
            let dev = deviation(g, h, 64);
            assert!(
                dev <= TOL,
                "{scheme}: {dev:e} from the hand-written attention"
            );
        }
    }
}
