//! The visual KV cache against the reference decode attention of kvq-ir (an f64 oracle that
//! dequantizes), on random data and on a real capture; its errors, memory report, export/import
//! and growth.

use std::ops::Range;
use std::path::PathBuf;

use kvq_ir::reference::quantize::check_shape;
use kvq_ir::reference::{decode_attention, quantize, PackedSpan, QuantError, Segment};
use kvq_ir::scheme::catalogue::catalogue;
use kvq_ir::{CacheScheme, Calibration, Scheme, Shape3, Tensor3};
use kvq_runtime::{
    CacheError, Device, Host, KvFile, KvPart, MemoryReport, ModelShape, QueryRef,
    ReferenceQuantizer, SeqId, SpanQuantizer, VisualKvCache,
};
use proptest::prelude::*;

/// The tolerance of SPEC.md section 4's post-scaled attention against the f64 reference: max abs
/// difference over max abs of the reference, per query head.
const TOL: f64 = 1e-4;

/// splitmix64: reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }

    /// `[heads, tokens, dim]` with per-channel offsets (as real keys have) plus noise.
    fn tensor(&mut self, heads: usize, tokens: usize, dim: usize, a: f32) -> Tensor3 {
        let offsets: Vec<f32> = (0..heads * dim).map(|_| self.uniform(a)).collect();
        let mut data = Vec::with_capacity(heads * tokens * dim);
        for h in 0..heads {
            for _ in 0..tokens {
                for c in 0..dim {
                    data.push(offsets[h * dim + c] + self.uniform(a));
                }
            }
        }
        Tensor3::new([heads, tokens, dim], data).unwrap()
    }
}

fn smollm2() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/smollm2_zen_qkv_f16.safetensors")
}

fn slice(x: &Tensor3, r: Range<usize>) -> Option<Tensor3> {
    (!r.is_empty()).then(|| x.slice_tokens(r).unwrap())
}

/// `a` and `b` joined along tokens.
fn cat(a: Option<Tensor3>, b: &Tensor3) -> Tensor3 {
    let Some(a) = a else { return b.clone() };
    let (sa, sb) = (a.shape(), b.shape());
    let mut data = Vec::new();
    for h in 0..sa.heads {
        for t in 0..sa.tokens {
            data.extend_from_slice(a.row(h, t));
        }
        for t in 0..sb.tokens {
            data.extend_from_slice(b.row(h, t));
        }
    }
    Tensor3::new([sa.heads, sa.tokens + sb.tokens, sa.dim], data).unwrap()
}

/// What one sequence's cache should hold: the prompt, its visual range, and appended tokens.
struct Case {
    k: Tensor3,
    v: Tensor3,
    visual: Range<usize>,
    appended: Vec<(Tensor3, Tensor3)>,
    q: Vec<f32>,
}

impl Case {
    /// The reference output: segments built independently of the cache.
    fn reference(&self, q_heads: usize, scheme: &CacheScheme) -> Vec<f32> {
        let tokens = self.k.shape().tokens;
        let prefix = (
            slice(&self.k, 0..self.visual.start),
            slice(&self.v, 0..self.visual.start),
        );
        let span = slice(&self.k, self.visual.clone()).map(|k| {
            let v = slice(&self.v, self.visual.clone()).unwrap();
            (
                quantize(&k, &scheme.key).unwrap(),
                quantize(&v, &scheme.value).unwrap(),
            )
        });
        let mut suffix = (
            slice(&self.k, self.visual.end..tokens),
            slice(&self.v, self.visual.end..tokens),
        );
        for (k, v) in &self.appended {
            suffix = (Some(cat(suffix.0, k)), Some(cat(suffix.1, v)));
        }
        let mut segments = Vec::new();
        if let (Some(k), Some(v)) = (&prefix.0, &prefix.1) {
            segments.push(Segment::Full { k, v });
        }
        if let Some((k, v)) = &span {
            segments.push(Segment::Quantized { k, v });
        }
        if let (Some(k), Some(v)) = (&suffix.0, &suffix.1) {
            segments.push(Segment::Full { k, v });
        }
        decode_attention(&self.q, q_heads, &segments, scheme.calibrate).unwrap()
    }

    fn fill<D: Device>(&self, cache: &mut VisualKvCache<D>, layer: usize, seq: SeqId) {
        cache
            .prefill(layer, seq, &self.k, &self.v, self.visual.clone())
            .unwrap();
        for (k, v) in &self.appended {
            cache.append(layer, seq, k, v).unwrap();
        }
    }
}

/// Max over query heads of max |got - want| / max |want|.
fn deviation(got: &[f32], want: &[f32], dim: usize) -> f64 {
    got.chunks(dim)
        .zip(want.chunks(dim))
        .map(|(g, w)| {
            let scale = w.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
            let diff = g
                .iter()
                .zip(w)
                .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            diff / scale
        })
        .fold(0.0, f64::max)
}

/// Fills one sequence per case at `layer`, attends the batch and compares with the reference;
/// returns the outputs and the largest deviation.
fn check_batch(
    shape: ModelShape,
    scheme: CacheScheme,
    layer: usize,
    cases: &[Case],
) -> (Vec<Vec<f32>>, f64) {
    let mut cache = VisualKvCache::new(shape, scheme, ReferenceQuantizer).unwrap();
    let seqs: Vec<SeqId> = cases
        .iter()
        .map(|c| {
            let seq = cache.add_sequence();
            c.fill(&mut cache, layer, seq);
            seq
        })
        .collect();
    let queries: Vec<QueryRef<'_>> = seqs
        .iter()
        .zip(cases)
        .map(|(&seq, c)| QueryRef { seq, q: &c.q })
        .collect();
    let got = cache.attend(layer, &queries).unwrap();
    let mut worst = 0.0f64;
    for (i, (g, c)) in got.iter().zip(cases).enumerate() {
        let want = c.reference(shape.q_heads, &scheme);
        let d = deviation(g, &want, shape.head_dim);
        assert!(d <= TOL, "sequence {i}, scheme {scheme}: deviation {d:e}");
        worst = worst.max(d);
    }
    (got, worst)
}

fn cache_schemes(dim: usize) -> Vec<CacheScheme> {
    let fits: Vec<Scheme> = catalogue()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| {
            let shape = Shape3 {
                heads: 1,
                tokens: 1,
                dim,
            };
            check_shape(s, shape).is_ok()
        })
        .collect();
    let mut out = Vec::new();
    for &key in &fits {
        for &value in &fits {
            for calibrate in [None, Calibration::new(3.0)] {
                out.push(CacheScheme {
                    key,
                    value,
                    calibrate,
                });
            }
        }
    }
    out
}

const SHAPE: ModelShape = ModelShape {
    layers: 2,
    kv_heads: 2,
    q_heads: 6,
    head_dim: 64,
};

/// Three sequences of different lengths and spans: one without a suffix, one with a prompt
/// suffix and appended tokens, one without a prefix and with appended tokens.
fn random_cases(rng: &mut Rng, shape: ModelShape) -> Vec<Case> {
    let (kv, dim) = (shape.kv_heads, shape.head_dim);
    let mut case = |tokens: usize, visual: Range<usize>, appends: &[usize]| Case {
        k: rng.tensor(kv, tokens, dim, 2.0),
        v: rng.tensor(kv, tokens, dim, 1.0),
        visual,
        appended: appends
            .iter()
            .map(|&n| (rng.tensor(kv, n, dim, 2.0), rng.tensor(kv, n, dim, 1.0)))
            .collect(),
        q: rng.tensor(shape.q_heads, 1, dim, 2.0).data().to_vec(),
    };
    vec![
        case(40, 5..40, &[]),
        case(30, 3..23, &[1, 1, 3, 1]),
        case(50, 0..37, &[2]),
    ]
}

#[test]
fn attend_matches_reference_for_every_catalogue_pair_on_random_data() {
    let mut rng = Rng(7);
    let cases = random_cases(&mut rng, SHAPE);
    let (mut calibration_mattered, mut worst) = (false, 0.0f64);
    for scheme in cache_schemes(SHAPE.head_dim) {
        let (got, d) = check_batch(SHAPE, scheme, 1, &cases);
        worst = worst.max(d);
        if scheme.calibrate.is_some() {
            let plain = CacheScheme {
                calibrate: None,
                ..scheme
            };
            let (uncalibrated, _) = check_batch(SHAPE, plain, 1, &cases);
            calibration_mattered |= deviation(&got[0], &uncalibrated[0], SHAPE.head_dim) > 1e-3;
        }
    }
    assert!(calibration_mattered, "calibration never changed an output");
    println!("max relative deviation (random, 162 scheme pairs): {worst:e}");
}

#[test]
fn attend_matches_reference_on_smollm2_capture() {
    let file = KvFile::load(&smollm2()).unwrap();
    let layer = &file.layers[1];
    let (qs, ks) = (layer.q.shape(), layer.k.shape());
    let shape = ModelShape {
        layers: file.layers.len(),
        kv_heads: ks.heads,
        q_heads: qs.heads,
        head_dim: ks.dim,
    };
    assert_eq!(shape.q_heads, 3 * shape.kv_heads);
    let query = |t: usize| -> Vec<f32> {
        (0..qs.heads)
            .flat_map(|h| layer.q.row(h, t).to_vec())
            .collect()
    };
    // Causal capture: the query at token `last` attends tokens 0..=last. The last token arrives
    // by `append` in two of the three sequences.
    let case = |prompt: usize, visual: Range<usize>, last: usize| Case {
        k: layer.k.slice_tokens(0..prompt).unwrap(),
        v: layer.v.slice_tokens(0..prompt).unwrap(),
        visual,
        appended: (prompt..=last)
            .map(|t| {
                (
                    layer.k.slice_tokens(t..t + 1).unwrap(),
                    layer.v.slice_tokens(t..t + 1).unwrap(),
                )
            })
            .collect(),
        q: query(last),
    };
    let last = ks.tokens - 1;
    let cases = [
        case(last, 20..200, last),
        case(ks.tokens, 0..ks.tokens, last),
        case(100, 10..90, 130),
    ];
    let mut worst = 0.0f64;
    for scheme in cache_schemes(shape.head_dim) {
        worst = worst.max(check_batch(shape, scheme, 1, &cases).1);
    }
    println!("max relative deviation (smollm2 layer 1, 162 scheme pairs): {worst:e}");
}

/// A prefilled cache with three sequences (one with no span) and its observable state.
fn populated() -> (VisualKvCache, Vec<SeqId>, Vec<Case>) {
    let scheme = CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 2, axis = token, group = 32, rule = minmax), calibrate = 3",
    )
    .unwrap();
    let mut cache = VisualKvCache::with_reference(SHAPE, scheme).unwrap();
    let mut rng = Rng(11);
    let mut cases = random_cases(&mut rng, SHAPE);
    cases[2].visual = 10..10;
    let seqs = cases
        .iter()
        .map(|c| {
            let seq = cache.add_sequence();
            c.fill(&mut cache, 0, seq);
            seq
        })
        .collect();
    (cache, seqs, cases)
}

type Snapshot = (
    MemoryReport,
    Vec<Vec<f32>>,
    Vec<Option<(PackedSpan, PackedSpan)>>,
);

fn snapshot<Q: SpanQuantizer>(
    cache: &VisualKvCache<Host<Q>>,
    seqs: &[SeqId],
    cases: &[Case],
) -> Snapshot {
    let queries: Vec<QueryRef<'_>> = seqs
        .iter()
        .zip(cases)
        .map(|(&seq, c)| QueryRef { seq, q: &c.q })
        .collect();
    let spans = seqs.iter().map(|&s| cache.export_span(0, s).ok()).collect();
    (cache.memory(), cache.attend(0, &queries).unwrap(), spans)
}

fn t(heads: usize, tokens: usize, dim: usize) -> Tensor3 {
    Tensor3::new([heads, tokens, dim], vec![0.5; heads * tokens * dim]).unwrap()
}

#[test]
fn every_error_is_typed_and_leaves_the_cache_unchanged() {
    let (mut cache, seqs, cases) = populated();
    let before = snapshot(&cache, &seqs, &cases);
    let (s0, s2) = (seqs[0], seqs[2]);
    let fresh = cache.add_sequence();
    let gone = cache.add_sequence();
    cache.remove_sequence(gone).unwrap();
    let good = t(2, 4, 64);

    // Unknown sequence and bad layer, on every entry point.
    assert_eq!(
        cache.remove_sequence(gone),
        Err(CacheError::UnknownSequence { seq: gone })
    );
    assert_eq!(
        cache.prefill(0, gone, &good, &good, 0..2),
        Err(CacheError::UnknownSequence { seq: gone })
    );
    assert_eq!(
        cache.append(0, gone, &good, &good),
        Err(CacheError::UnknownSequence { seq: gone })
    );
    assert!(matches!(
        cache.export_span(0, gone),
        Err(CacheError::UnknownSequence { .. })
    ));
    let bad_layer = CacheError::LayerOutOfRange {
        layer: 2,
        layers: 2,
    };
    assert_eq!(
        cache.prefill(2, fresh, &good, &good, 0..2),
        Err(bad_layer.clone())
    );
    assert_eq!(cache.append(2, s0, &good, &good), Err(bad_layer.clone()));
    assert_eq!(cache.attend(2, &[]), Err(bad_layer.clone()));
    assert!(matches!(
        cache.export_span(2, s0),
        Err(CacheError::LayerOutOfRange { .. })
    ));
    assert!(matches!(
        cache.tokens(2, s0),
        Err(CacheError::LayerOutOfRange { .. })
    ));

    // Shapes: heads, head_dim, k/v token mismatch.
    let shape_err = |what, expected, found| {
        Err(CacheError::Shape {
            what,
            expected,
            found,
        })
    };
    assert_eq!(
        cache.prefill(0, fresh, &t(3, 4, 64), &good, 0..2),
        shape_err("key heads", 2, 3)
    );
    assert_eq!(
        cache.prefill(0, fresh, &good, &t(2, 4, 32), 0..2),
        shape_err("value head_dim", 64, 32)
    );
    assert_eq!(
        cache.prefill(0, fresh, &good, &t(2, 5, 64), 0..2),
        shape_err("value tokens", 4, 5)
    );
    assert_eq!(
        cache.append(0, s0, &t(2, 1, 32), &t(2, 1, 32)),
        shape_err("key head_dim", 64, 32)
    );
    assert_eq!(
        cache.append(0, s0, &t(2, 1, 64), &t(1, 1, 64)),
        shape_err("value heads", 2, 1)
    );

    // Non-finite keys or values name layer, head, token, channel.
    let mut data = vec![0.25f32; 2 * 4 * 64];
    data[(4 + 3) * 64 + 17] = f32::NAN; // head 1, token 3, channel 17
    let nan = Tensor3::new([2, 4, 64], data).unwrap();
    match cache.prefill(0, fresh, &good, &nan, 1..3) {
        Err(CacheError::NonFinite {
            layer: 0,
            part: KvPart::Values,
            head: 1,
            token: 3,
            channel: 17,
            value,
        }) => {
            assert!(value.is_nan())
        }
        other => panic!("{other:?}"),
    }
    let mut data = vec![0.25f32; 2 * 64];
    data[64 + 5] = f32::INFINITY; // head 1, token 0, channel 5
    let inf = Tensor3::new([2, 1, 64], data).unwrap();
    assert_eq!(
        cache.append(0, s0, &inf, &t(2, 1, 64)),
        Err(CacheError::NonFinite {
            layer: 0,
            part: KvPart::Keys,
            head: 1,
            token: 0,
            channel: 5,
            value: f32::INFINITY
        })
    );

    // Visual range out of bounds or reversed.
    assert_eq!(
        cache.prefill(0, fresh, &good, &good, 2..5),
        Err(CacheError::VisualRange {
            start: 2,
            end: 5,
            tokens: 4
        })
    );
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 3..1;
    assert_eq!(
        cache.prefill(0, fresh, &good, &good, reversed),
        Err(CacheError::VisualRange {
            start: 3,
            end: 1,
            tokens: 4
        })
    );

    // Prefill twice; append, attend or export before prefill; export without a span.
    assert_eq!(
        cache.prefill(0, s0, &good, &good, 0..2),
        Err(CacheError::AlreadyPrefilled { layer: 0, seq: s0 })
    );
    assert_eq!(
        cache.append(1, s0, &good, &good),
        Err(CacheError::NotPrefilled { layer: 1, seq: s0 })
    );
    assert_eq!(
        cache.attend(
            1,
            &[QueryRef {
                seq: s0,
                q: &cases[0].q
            }]
        ),
        Err(CacheError::NotPrefilled { layer: 1, seq: s0 })
    );
    assert_eq!(
        cache.export_span(0, s2),
        Err(CacheError::NoQuantizedSpan { layer: 0, seq: s2 })
    );
    assert_eq!(
        cache.suffix_capacity(0, fresh),
        Err(CacheError::NotPrefilled {
            layer: 0,
            seq: fresh
        })
    );

    // Queries: length, non-finite, and a bad query after good ones in the batch.
    let short = vec![0.0f32; 6 * 64 - 1];
    assert_eq!(
        cache
            .attend(0, &[QueryRef { seq: s0, q: &short }])
            .map(drop),
        shape_err("query length", 384, 383)
    );
    let mut bad_q = cases[1].q.clone();
    bad_q[4 * 64 + 9] = f32::NEG_INFINITY;
    assert_eq!(
        cache.attend(
            0,
            &[
                QueryRef {
                    seq: s0,
                    q: &cases[0].q
                },
                QueryRef { seq: s2, q: &bad_q }
            ]
        ),
        Err(CacheError::NonFiniteQuery {
            seq: s2,
            head: 4,
            channel: 9,
            value: f32::NEG_INFINITY
        })
    );

    // Quantizer failure: parameters beyond f16 go through the quantizer's own error.
    let huge = Tensor3::new([2, 4, 64], (0..512).map(|i| i as f32 * 1e3).collect()).unwrap();
    match cache.prefill(0, fresh, &huge, &good, 0..4) {
        Err(CacheError::Quant {
            layer: 0,
            part: KvPart::Keys,
            source: QuantError::ParamOverflow { .. },
        }) => {}
        other => panic!("{other:?}"),
    }

    // Import: wrong scheme, wrong shape, malformed lengths, parameters not representable.
    let (k, v) = cache.export_span(0, s0).unwrap();
    let mut other_scheme = v.clone();
    other_scheme.scheme = k.scheme;
    assert!(matches!(
        cache.import_span(0, fresh, None, k.clone(), other_scheme),
        Err(CacheError::SchemeMismatch {
            part: KvPart::Values,
            ..
        })
    ));
    let short_v = quantize(&t(2, 3, 64), &v.scheme).unwrap();
    assert_eq!(
        cache.import_span(0, fresh, None, k.clone(), short_v),
        shape_err("value span tokens", 35, 3)
    );
    let mut truncated = k.clone();
    truncated.codes.pop();
    assert!(matches!(
        cache.import_span(0, fresh, None, truncated, v.clone()),
        Err(CacheError::Quant {
            part: KvPart::Keys,
            source: QuantError::Malformed(_),
            ..
        })
    ));
    let mut inexact = k.clone();
    inexact.scale[0] = 0.1 + f32::EPSILON; // not an f16 value
    assert!(matches!(
        cache.import_span(0, fresh, None, inexact, v.clone()),
        Err(CacheError::Quant {
            part: KvPart::Keys,
            source: QuantError::Malformed(_),
            ..
        })
    ));
    assert!(matches!(
        cache.import_span(
            0,
            fresh,
            Some((&t(2, 2, 64), &t(2, 3, 64))),
            k.clone(),
            v.clone()
        ),
        Err(CacheError::Shape {
            what: "value tokens",
            ..
        })
    ));
    assert_eq!(
        cache.import_span(0, s0, None, k, v),
        Err(CacheError::AlreadyPrefilled { layer: 0, seq: s0 })
    );

    // Nothing changed, and the untouched fresh sequence still accepts a prefill.
    assert_eq!(snapshot(&cache, &seqs, &cases), before);
    assert_eq!(cache.tokens(0, fresh), Ok(0));
    cache.prefill(0, fresh, &good, &good, 1..3).unwrap();
    assert_eq!(cache.tokens(0, fresh), Ok(4));
}

#[test]
fn construction_errors() {
    let scheme = CacheScheme::parse("key(bits = 1, axis = channel, group = all, rule = minmax), value(bits = 4, axis = token, group = 16, rule = minmax)").unwrap();
    let with = |layers, kv_heads, q_heads, head_dim| {
        VisualKvCache::with_reference(
            ModelShape {
                layers,
                kv_heads,
                q_heads,
                head_dim,
            },
            scheme,
        )
        .map(drop)
    };
    assert_eq!(
        with(0, 1, 1, 64),
        Err(CacheError::ZeroSize { what: "layers" })
    );
    assert_eq!(
        with(1, 0, 1, 64),
        Err(CacheError::ZeroSize { what: "kv_heads" })
    );
    assert_eq!(
        with(1, 2, 3, 64),
        Err(CacheError::GqaRatio {
            q_heads: 3,
            kv_heads: 2
        })
    );
    assert!(matches!(
        with(1, 1, 1, 12),
        Err(CacheError::SchemeDoesNotFit {
            part: KvPart::Keys,
            head_dim: 12,
            source: QuantError::RowNotByteAligned { .. }
        })
    ));
    assert!(matches!(
        with(1, 1, 1, 24),
        Err(CacheError::SchemeDoesNotFit {
            part: KvPart::Values,
            source: QuantError::GroupDoesNotDivide { .. },
            ..
        })
    ));
    assert!(with(3, 2, 6, 32).is_ok());
}

/// A quantizer that breaks its contract, to check the cache validates what it returns.
#[derive(Debug)]
struct Liar(fn(PackedSpan) -> PackedSpan);

impl SpanQuantizer for Liar {
    fn quantize(&self, x: &Tensor3, scheme: &Scheme) -> Result<PackedSpan, QuantError> {
        quantize(x, scheme).map(self.0)
    }
}

#[test]
fn quantizer_output_is_validated() {
    let scheme = cache_schemes(64)[0];
    let shape = ModelShape {
        layers: 1,
        kv_heads: 2,
        q_heads: 2,
        head_dim: 64,
    };
    let x = Rng(3).tensor(2, 10, 64, 1.0);
    type Lie = fn(PackedSpan) -> PackedSpan;
    type Expect = fn(&CacheError) -> bool;
    let lies: [(Lie, Expect); 3] = [
        (
            |mut s| {
                s.shape.tokens -= 1;
                s
            },
            |e| {
                matches!(
                    e,
                    CacheError::Shape {
                        what: "key span tokens",
                        expected: 8,
                        found: 7
                    }
                )
            },
        ),
        (
            |mut s| {
                s.scheme.order = kvq_ir::BitOrder::Lsb;
                s
            },
            |e| {
                matches!(
                    e,
                    CacheError::SchemeMismatch {
                        part: KvPart::Keys,
                        ..
                    }
                )
            },
        ),
        (
            |mut s| {
                s.zero[0] = f32::NAN;
                s
            },
            |e| {
                matches!(
                    e,
                    CacheError::Quant {
                        source: QuantError::Malformed(_),
                        ..
                    }
                )
            },
        ),
    ];
    for (lie, expect) in lies {
        let mut cache = VisualKvCache::new(shape, scheme, Liar(lie)).unwrap();
        let seq = cache.add_sequence();
        let err = cache.prefill(0, seq, &x, &x, 1..9).unwrap_err();
        assert!(expect(&err), "{err:?}");
        assert_eq!(
            cache.memory(),
            VisualKvCache::new(shape, scheme, ReferenceQuantizer)
                .unwrap()
                .memory()
        );
        assert_eq!(cache.tokens(0, seq), Ok(0));
    }
}

#[test]
fn memory_report_by_hand() {
    let (kv, dim) = (2, 64);
    let shape = ModelShape {
        layers: 2,
        kv_heads: kv,
        q_heads: 4,
        head_dim: dim,
    };
    let (prefix, visual, suffix) = (3, 16, 5);
    let tokens = prefix + visual + suffix;
    let x = Rng(5).tensor(kv, tokens, dim, 1.0);
    let elems = |n: usize| kv * n * dim;
    // (scheme text, K+V code bytes, K+V parameter bytes)
    let cases = [
        // 1 bit, channel/all, f16: codes kv*visual*dim/8 per tensor; params 2 * kv*dim * 2 bytes.
        (
            "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
            2 * elems(visual) / 8,
            2 * (2 * kv * dim * 2),
        ),
        // 2 bits, channel/32, f32: one token group of 16 tokens.
        (
            "bits = 2, axis = channel, group = 32, rule = minmax, params = f32, order = lsb",
            2 * elems(visual) * 2 / 8,
            2 * (2 * kv * dim * 4),
        ),
        // 2 bits, channel/8, f16: two token groups.
        (
            "bits = 2, axis = channel, group = 8, rule = minmax",
            2 * elems(visual) / 4,
            2 * (2 * kv * 2 * dim * 2),
        ),
        // 4 bits, token/all, f32: one (zero, scale) per (head, token).
        (
            "bits = 4, axis = token, group = all, rule = minmax, params = f32",
            2 * elems(visual) / 2,
            2 * (2 * kv * visual * 4),
        ),
        // 8 bits, token/16, f16: four groups per (head, token).
        (
            "bits = 8, axis = token, group = 16, rule = minmax",
            2 * elems(visual),
            2 * (2 * kv * visual * 4 * 2),
        ),
    ];
    for (text, codes, params) in cases {
        let s = Scheme::parse(text).unwrap();
        let mut cache = VisualKvCache::with_reference(
            shape,
            CacheScheme {
                key: s,
                value: s,
                calibrate: None,
            },
        )
        .unwrap();
        let seq = cache.add_sequence();
        cache
            .prefill(1, seq, &x, &x, prefix..prefix + visual)
            .unwrap();
        let m = cache.memory();
        assert_eq!(m.layers[0], Default::default());
        let l = m.layers[1];
        assert_eq!(l.tokens, tokens);
        assert_eq!(l.prefix_bytes, 2 * elems(prefix) * 4, "{text}");
        assert_eq!(l.span_code_bytes, codes, "{text}");
        assert_eq!(l.span_param_bytes, params, "{text}");
        assert_eq!(l.suffix_bytes, 2 * elems(suffix) * 4, "{text}");
        assert_eq!(l.suffix_reserved_bytes, l.suffix_bytes, "{text}");
        assert_eq!(l.f16_equivalent_bytes, 2 * elems(tokens) * 2, "{text}");
        assert_eq!(
            l.allocated_bytes(),
            l.prefix_bytes + codes + params + l.suffix_bytes
        );
        assert_eq!(m.total, l);
        // Two more sequences on layer 0 only, without a span: an empty visual range splits the
        // prompt into prefix and suffix at its position. Totals add up per layer.
        let (other, third) = (cache.add_sequence(), cache.add_sequence());
        cache.prefill(0, other, &x, &x, 0..0).unwrap();
        cache.prefill(0, third, &x, &x, tokens..tokens).unwrap();
        let m = cache.memory();
        assert_eq!(m.layers[0].suffix_bytes, 2 * elems(tokens) * 4);
        assert_eq!(m.layers[0].prefix_bytes, 2 * elems(tokens) * 4);
        assert_eq!(
            m.layers[0].span_code_bytes + m.layers[0].span_param_bytes,
            0
        );
        assert_eq!(m.total.tokens, 3 * tokens);
        assert_eq!(m.total.f16_equivalent_bytes, 3 * (2 * elems(tokens) * 2));
        cache.remove_sequence(seq).unwrap();
        assert_eq!(cache.memory().layers[1], Default::default());
    }
}

#[test]
fn export_import_round_trip_is_lossless() {
    let mut rng = Rng(13);
    for scheme in cache_schemes(SHAPE.head_dim).into_iter().step_by(2) {
        let case = &random_cases(&mut rng, SHAPE)[1];
        let mut cache = VisualKvCache::with_reference(SHAPE, scheme).unwrap();
        let (a, b) = (cache.add_sequence(), cache.add_sequence());
        case.fill(&mut cache, 0, a);
        let (keys, values) = cache.export_span(0, a).unwrap();
        let span_k = case.k.slice_tokens(case.visual.clone()).unwrap();
        let span_v = case.v.slice_tokens(case.visual.clone()).unwrap();
        assert_eq!(keys, quantize(&span_k, &scheme.key).unwrap());
        assert_eq!(values, quantize(&span_v, &scheme.value).unwrap());

        let pre = 0..case.visual.start;
        let (pk, pv) = (
            case.k.slice_tokens(pre.clone()).unwrap(),
            case.v.slice_tokens(pre).unwrap(),
        );
        cache
            .import_span(0, b, Some((&pk, &pv)), keys.clone(), values.clone())
            .unwrap();
        let rest = case.visual.end..case.k.shape().tokens;
        let (sk, sv) = (
            case.k.slice_tokens(rest.clone()).unwrap(),
            case.v.slice_tokens(rest).unwrap(),
        );
        cache.append(0, b, &sk, &sv).unwrap();
        for (k, v) in &case.appended {
            cache.append(0, b, k, v).unwrap();
        }
        assert_eq!(cache.export_span(0, b).unwrap(), (keys, values));
        assert_eq!(cache.tokens(0, a), cache.tokens(0, b));
        let out = cache
            .attend(
                0,
                &[
                    QueryRef { seq: a, q: &case.q },
                    QueryRef { seq: b, q: &case.q },
                ],
            )
            .unwrap();
        assert_eq!(out[0], out[1], "{scheme}");
        let m = cache.memory().layers[0];
        assert_eq!(m.span_code_bytes % 2, 0);
    }
}

#[test]
fn thousand_appends_grow_geometrically() {
    let scheme = cache_schemes(SHAPE.head_dim)[1];
    let mut cache = VisualKvCache::with_reference(SHAPE, scheme).unwrap();
    let mut rng = Rng(17);
    let mut case = Case {
        k: rng.tensor(2, 24, 64, 2.0),
        v: rng.tensor(2, 24, 64, 1.0),
        visual: 4..24,
        appended: Vec::new(),
        q: rng.tensor(6, 1, 64, 2.0).data().to_vec(),
    };
    let seq = cache.add_sequence();
    case.fill(&mut cache, 0, seq);
    assert_eq!(
        cache.suffix_capacity(0, seq),
        Ok(0),
        "no suffix, nothing reserved"
    );
    let mut capacities = vec![0];
    for i in 0..1000 {
        let (k, v) = (rng.tensor(2, 1, 64, 2.0), rng.tensor(2, 1, 64, 1.0));
        cache.append(0, seq, &k, &v).unwrap();
        case.appended.push((k, v));
        let cap = cache.suffix_capacity(0, seq).unwrap();
        let live = i + 1;
        assert!(
            cap >= live && cap <= (2 * live).max(8),
            "capacity {cap} for {live} tokens"
        );
        if cap != *capacities.last().unwrap() {
            capacities.push(cap);
        }
        let m = cache.memory().total;
        assert_eq!(m.suffix_reserved_bytes, 2 * 2 * cap * 64 * 4);
        assert_eq!(m.suffix_bytes, 2 * 2 * live * 64 * 4);
    }
    for w in capacities.windows(2).skip(1) {
        assert!(w[1] >= 2 * w[0], "capacities {capacities:?}");
    }
    assert!(
        capacities.len() <= 12,
        "{} reallocations: {capacities:?}",
        capacities.len() - 1
    );
    assert_eq!(cache.tokens(0, seq), Ok(1024));
    let got = cache.attend(0, &[QueryRef { seq, q: &case.q }]).unwrap();
    let d = deviation(&got[0], &case.reference(SHAPE.q_heads, &scheme), 64);
    assert!(d <= TOL, "deviation {d:e}");
    println!("max relative deviation (1024 tokens): {d:e}");
}

proptest! {
    // A single-file test has no lib.rs for proptest's regression files; failures print the
    // minimal case instead.
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn attend_matches_reference_on_random_shapes(
        kv_heads in 1usize..4,
        group in 1usize..4,
        dim in prop::sample::select(vec![8usize, 16, 32, 64]),
        pick in 0usize..1000,
        tokens in 1usize..70,
        a in 0usize..70,
        b in 0usize..70,
        appends in prop::collection::vec(1usize..4, 0..4),
        seed in any::<u64>(),
    ) {
        let schemes = cache_schemes(dim);
        let scheme = schemes[pick % schemes.len()];
        let shape = ModelShape { layers: 1, kv_heads, q_heads: kv_heads * group, head_dim: dim };
        let (lo, hi) = (a.min(b).min(tokens), a.max(b).min(tokens));
        let mut rng = Rng(seed);
        let case = Case {
            k: rng.tensor(kv_heads, tokens, dim, 2.0),
            v: rng.tensor(kv_heads, tokens, dim, 1.0),
            visual: lo..hi,
            appended: appends
                .iter()
                .map(|&n| (rng.tensor(kv_heads, n, dim, 2.0), rng.tensor(kv_heads, n, dim, 1.0)))
                .collect(),
            q: rng.tensor(shape.q_heads, 1, dim, 2.0).data().to_vec(),
        };
        check_batch(shape, scheme, 0, std::slice::from_ref(&case));
    }
}

/// The conformance suite that `kvq-gpu-check --cache` runs on a GPU, here on the host for every
/// catalogue key scheme beside two value schemes, with and without calibration, at two shapes.
#[test]
fn conformance_suite_passes_on_the_host() {
    use kvq_runtime::cache::conformance;
    let values = [
        Scheme::parse("bits = 1, axis = channel, group = all, rule = shrink(0.3)").unwrap(),
        Scheme::parse("bits = 2, axis = token, group = 32, rule = minmax").unwrap(),
    ];
    let gpu_shape = ModelShape {
        layers: 2,
        kv_heads: 2,
        q_heads: 8,
        head_dim: 128,
    };
    let mut runs = 0;
    for shape in [SHAPE, gpu_shape] {
        for (name, key) in catalogue() {
            if check_shape(
                &key,
                Shape3 {
                    heads: 1,
                    tokens: 1,
                    dim: shape.head_dim,
                },
            )
            .is_err()
            {
                continue;
            }
            for value in values {
                for calibrate in [None, Calibration::new(3.0)] {
                    let scheme = CacheScheme {
                        key,
                        value,
                        calibrate,
                    };
                    let make = || VisualKvCache::with_reference(shape, scheme);
                    let report =
                        conformance::run(&make).unwrap_or_else(|e| panic!("{name} / {value}: {e}"));
                    assert!(report.spans >= 12 && report.checks > 200, "{report:?}");
                    runs += 1;
                }
            }
        }
    }
    assert!(runs >= 40, "{runs}");
}

/// The conformance suite on host caches that store their full-precision rows as f16 or bf16
/// (every reference computed over the rounded values), for three key schemes beside a value
/// scheme of each axis, with and without calibration.
#[test]
fn conformance_suite_passes_with_narrow_rows() {
    use kvq_ir::lower::InputType;
    use kvq_runtime::cache::conformance;
    let schemes = [
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3))",
        "key(bits = 2, axis = channel, group = 32, rule = minmax), \
         value(bits = 2, axis = token, group = 32, rule = minmax)",
        "key(bits = 4, axis = token, group = all, rule = minmax, params = f32), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3))",
    ];
    for fp in [InputType::F16, InputType::BF16] {
        for text in schemes {
            for calibrate in [None, Calibration::new(3.0)] {
                let scheme = CacheScheme {
                    calibrate,
                    ..CacheScheme::parse(text).unwrap()
                };
                let make = || {
                    VisualKvCache::on_device_storing(
                        SHAPE,
                        scheme,
                        fp,
                        Host::<ReferenceQuantizer>::default(),
                    )
                };
                let report = conformance::run(&make)
                    .unwrap_or_else(|e| panic!("{fp:?} rows, {scheme}: {e}"));
                assert!(report.spans >= 12 && report.checks > 200, "{report:?}");
            }
        }
    }
}

/// A cache of narrow rows: half the full-precision memory of an f32 cache, the rows rounded to
/// the type (attention equals the reference over the rounded rows, not the given ones), and a
/// finite f32 beyond f16's range refused as the infinity it would store.
#[test]
fn narrow_rows_halve_the_full_precision_memory_and_round_the_prompt() {
    use kvq_ir::lower::InputType;
    let scheme = cache_schemes(64)[0];
    let mut rng = Rng(77);
    let (k, v) = (rng.tensor(2, 40, 64, 2.0), rng.tensor(2, 40, 64, 1.0));
    let q = rng.tensor(6, 1, 64, 2.0).data().to_vec();
    let mut caches = Vec::new();
    for fp in [InputType::F32, InputType::F16, InputType::BF16] {
        let mut cache = VisualKvCache::on_device_storing(
            SHAPE,
            scheme,
            fp,
            Host::<ReferenceQuantizer>::default(),
        )
        .unwrap();
        assert_eq!(cache.fp_storage(), fp);
        let seq = cache.add_sequence();
        cache.prefill(0, seq, &k, &v, 5..30).unwrap();
        let out = cache
            .attend(0, &[QueryRef { seq, q: &q }])
            .unwrap()
            .concat();
        caches.push((fp, cache.memory().total, out));
    }
    let (f32_mem, f16_mem, bf16_mem) = (caches[0].1, caches[1].1, caches[2].1);
    assert_eq!(f32_mem.prefix_bytes, 2 * 2 * 5 * 64 * 4);
    for mem in [f16_mem, bf16_mem] {
        assert_eq!(mem.prefix_bytes * 2, f32_mem.prefix_bytes);
        assert_eq!(mem.suffix_bytes * 2, f32_mem.suffix_bytes);
        assert_eq!(mem.span_code_bytes, f32_mem.span_code_bytes);
    }
    // Against the reference over rows rounded to each type.
    for (fp, _, out) in &caches {
        let round = |x: &Tensor3| x.map(|a| fp.round(a));
        let (rk, rv) = (round(&k), round(&v));
        let slice = |x: &Tensor3, r: Range<usize>| x.slice_tokens(r).unwrap();
        let span = (
            quantize(&slice(&rk, 5..30), &scheme.key).unwrap(),
            quantize(&slice(&rv, 5..30), &scheme.value).unwrap(),
        );
        let (pk, pv, sk, sv) = (
            slice(&rk, 0..5),
            slice(&rv, 0..5),
            slice(&rk, 30..40),
            slice(&rv, 30..40),
        );
        let segments = [
            Segment::Full { k: &pk, v: &pv },
            Segment::Quantized {
                k: &span.0,
                v: &span.1,
            },
            Segment::Full { k: &sk, v: &sv },
        ];
        let want = decode_attention(&q, 6, &segments, scheme.calibrate).unwrap();
        let dev = kvq_ir::metrics::max_head_deviation(out, &want, 64);
        assert!(dev <= TOL, "{fp:?}: {dev:e}");
    }
    // bf16 rows are not the f32 rows: its output moved away from the f32 cache's.
    let moved = kvq_ir::metrics::max_head_deviation(&caches[2].2, &caches[0].2, 64);
    assert!(
        moved > 1e-4,
        "bf16 rows changed the output by only {moved:e}"
    );
    // 1e6 is a finite f32 and infinite as f16.
    let mut cache = VisualKvCache::on_device_storing(
        SHAPE,
        scheme,
        InputType::F16,
        Host::<ReferenceQuantizer>::default(),
    )
    .unwrap();
    let seq = cache.add_sequence();
    let mut big = k.data().to_vec();
    big[3 * 64 + 2] = 1e6;
    let big = Tensor3::new([2, 40, 64], big).unwrap();
    let err = cache.prefill(0, seq, &big, &v, 5..30).unwrap_err();
    assert!(
        matches!(err, CacheError::NonFinite { part: KvPart::Keys, head: 0, token: 3, channel: 2, value, .. } if value.is_infinite()),
        "{err:?}"
    );
    assert_eq!(cache.tokens(0, seq), Ok(0));
}

/// The suite finds a cache that is wrong: a quantizer whose codes are off by one bit.
#[test]
fn conformance_suite_catches_a_wrong_quantizer() {
    use kvq_runtime::cache::conformance;
    let scheme = cache_schemes(64)[0];
    let flip: fn(PackedSpan) -> PackedSpan = |mut s| {
        s.codes[0] ^= 1;
        s
    };
    let make = || VisualKvCache::new(SHAPE, scheme, Liar(flip));
    let err = conformance::run(&make).unwrap_err();
    // One flipped bit moves the first sequence's attention by far more than 1e-4.
    assert!(
        err.starts_with("layer 0, sequence 0: attention deviates"),
        "{err}"
    );
}
