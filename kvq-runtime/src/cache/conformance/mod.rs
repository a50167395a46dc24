//! A conformance suite for a [`VisualKvCache`] on any [`Device`], against kvq-ir's reference
//! (SPEC.md sections 3-4) computed independently of the cache: this crate's tests run it on the
//! host for many scheme pairs, and `kvq-gpu-check --cache` runs it on a GPU for the pair of a
//! bundle. Every check returns a one-line error naming what failed instead of panicking.
//!
//! Scenarios, each on a fresh cache from `make`:
//! 1. ragged batches at every layer (a prompt with prefix, span and suffix plus appends; a span
//!    without prefix plus appends; a text-only prompt; a long span after a short prefix), attended
//!    as one batch: every output within [`TOLERANCE`] of the reference, every exported span equal
//!    to the reference quantizer's bit for bit;
//! 2. refused calls (unknown sequence, layer out of range, wrong shapes, non-finite values, bad
//!    visual ranges, a second prefill, a wrong query, a span of another scheme) return their
//!    typed error and leave tokens, memory, exported spans and attention outputs unchanged;
//! 3. export then import (after a new prefix) is lossless and attends like the reference;
//! 4. 200 single-token appends grow the suffix geometrically (capacity at most twice the tokens
//!    plus the minimum) with exact memory accounting, and attention still matches;
//! 5. prompts and appends given in device buffers ([`VisualKvCache::prefill_from_device`]) store
//!    what host tensors store (same spans, tokens, capacities and memory, the same outputs bit
//!    for bit) and attend like the reference;
//!    their refused calls return typed errors and change nothing (module `device_prompt`).

mod device_prompt;

use std::ops::Range;

use kvq_ir::metrics::max_head_deviation;
use kvq_ir::reference::{decode_attention, quantize, PackedSpan, Segment};
use kvq_ir::{Scheme, Tensor3};

use super::fp_segment::round_to;
use super::{CacheError, Device, KvPart, QueryRef, SeqId, VisualKvCache};
use kvq_ir::lower::InputType;

/// Largest accepted attention deviation: over query heads, max |got - want| / max |want|.
pub const TOLERANCE: f64 = 1e-4;

/// What a passing run checked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    /// Largest attention deviation from the reference.
    pub deviation: f64,
    /// Exported spans compared bit for bit.
    pub spans: usize,
    /// Checks that passed in all.
    pub checks: usize,
}

/// A failed check.
pub type Failure = String;

/// splitmix64 values in [-a, a), rounded to the cache's full-precision type (so that the
/// reference sees exactly the values the cache stores and quantizes).
struct Rng(u64, InputType);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn tensor(
        &mut self,
        heads: usize,
        tokens: usize,
        dim: usize,
        a: f32,
    ) -> Result<Tensor3, Failure> {
        let data = (0..heads * tokens * dim)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * a)
            .collect();
        let x = Tensor3::new([heads, tokens, dim], data).map_err(|e| e.to_string())?;
        Ok(round_to(&x, self.1).into_owned())
    }
}

/// One sequence's prompt, visual range, appended tokens and query.
struct Case {
    k: Tensor3,
    v: Tensor3,
    visual: Range<usize>,
    appended: Vec<(Tensor3, Tensor3)>,
    q: Vec<f32>,
}

/// Tokens `r` of `x`, `None` when empty.
fn slice(x: &Tensor3, r: Range<usize>) -> Result<Option<Tensor3>, Failure> {
    if r.is_empty() {
        return Ok(None);
    }
    x.slice_tokens(r).map(Some).map_err(|e| e.to_string())
}

impl Case {
    /// The reference spans (keys, values) of the visual range, if any.
    fn spans(
        &self,
        key: &Scheme,
        value: &Scheme,
    ) -> Result<Option<(PackedSpan, PackedSpan)>, Failure> {
        let (Some(k), Some(v)) = (
            slice(&self.k, self.visual.clone())?,
            slice(&self.v, self.visual.clone())?,
        ) else {
            return Ok(None);
        };
        let q = |x: &Tensor3, s: &Scheme| quantize(x, s).map_err(|e| e.to_string());
        Ok(Some((q(&k, key)?, q(&v, value)?)))
    }

    /// The reference output, from segments built without the cache.
    fn reference<D: Device>(&self, cache: &VisualKvCache<D>) -> Result<Vec<f32>, Failure> {
        let scheme = cache.scheme();
        let tokens = self.k.shape().tokens;
        let prefix = (
            slice(&self.k, 0..self.visual.start)?,
            slice(&self.v, 0..self.visual.start)?,
        );
        let span = self.spans(&scheme.key, &scheme.value)?;
        let mut suffix = (
            slice(&self.k, self.visual.end..tokens)?,
            slice(&self.v, self.visual.end..tokens)?,
        );
        for (k, v) in &self.appended {
            let join = |a: Option<Tensor3>, b: &Tensor3| match a {
                Some(a) => a.concat_tokens(b).map_err(|e| e.to_string()),
                None => Ok(b.clone()),
            };
            suffix = (Some(join(suffix.0, k)?), Some(join(suffix.1, v)?));
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
        decode_attention(&self.q, cache.shape().q_heads, &segments, scheme.calibrate)
            .map_err(|e| e.to_string())
    }

    fn fill<D: Device>(
        &self,
        cache: &mut VisualKvCache<D>,
        layer: usize,
        seq: SeqId,
    ) -> Result<(), Failure> {
        let fail = |e: CacheError| format!("filling layer {layer}: {e}");
        cache
            .prefill(layer, seq, &self.k, &self.v, self.visual.clone())
            .map_err(fail)?;
        for (k, v) in &self.appended {
            cache.append(layer, seq, k, v).map_err(fail)?;
        }
        Ok(())
    }
}

/// The scenario's sequences for the cache's shape.
fn cases<D: Device>(rng: &mut Rng, cache: &VisualKvCache<D>) -> Result<Vec<Case>, Failure> {
    let shape = cache.shape();
    let (kv, dim, q_heads) = (shape.kv_heads, shape.head_dim, shape.q_heads);
    let mut case =
        |tokens: usize, visual: Range<usize>, appends: &[usize]| -> Result<Case, Failure> {
            let mut appended = Vec::new();
            for &n in appends {
                appended.push((rng.tensor(kv, n, dim, 2.0)?, rng.tensor(kv, n, dim, 1.0)?));
            }
            Ok(Case {
                k: rng.tensor(kv, tokens, dim, 2.0)?,
                v: rng.tensor(kv, tokens, dim, 1.0)?,
                visual,
                appended,
                q: rng.tensor(q_heads, 1, dim, 2.0)?.data().to_vec(),
            })
        };
    Ok(vec![
        case(40, 5..33, &[1, 1, 3, 1])?,
        case(50, 0..37, &[2])?,
        case(30, 12..12, &[1])?,
        case(707, 3..707, &[1])?,
    ])
}

/// Attends `cases` (sequence `seqs[i]` holds case i) at `layer` and compares with the reference.
fn check_attention<D: Device>(
    cache: &VisualKvCache<D>,
    layer: usize,
    seqs: &[SeqId],
    cases: &[Case],
    report: &mut Report,
) -> Result<Vec<Vec<f32>>, Failure> {
    let queries: Vec<QueryRef<'_>> = seqs
        .iter()
        .zip(cases)
        .map(|(&seq, c)| QueryRef { seq, q: &c.q })
        .collect();
    let got = cache
        .attend(layer, &queries)
        .map_err(|e| format!("attend at layer {layer}: {e}"))?;
    let dim = cache.shape().head_dim;
    for (i, (g, c)) in got.iter().zip(cases).enumerate() {
        let d = max_head_deviation(g, &c.reference(cache)?, dim);
        if d.is_nan() || d > TOLERANCE {
            return Err(format!(
                "layer {layer}, sequence {i}: attention deviates {d:e} from the reference"
            ));
        }
        report.deviation = report.deviation.max(d);
        report.checks += 1;
    }
    Ok(got)
}

/// Each case's exported span equals the reference quantizer's.
fn check_spans<D: Device>(
    cache: &VisualKvCache<D>,
    layer: usize,
    seqs: &[SeqId],
    cases: &[Case],
    report: &mut Report,
) -> Result<(), Failure> {
    let scheme = cache.scheme();
    for (i, (&seq, c)) in seqs.iter().zip(cases).enumerate() {
        let want = c.spans(&scheme.key, &scheme.value)?;
        match (cache.export_span(layer, seq), want) {
            (Ok(got), Some(want)) => {
                for (part, g, w) in [("key", &got.0, &want.0), ("value", &got.1, &want.1)] {
                    if g != w {
                        return Err(format!(
                            "layer {layer}, sequence {i}: the exported {part} span differs from the reference quantizer's"
                        ));
                    }
                    report.spans += 1;
                }
            }
            (Err(CacheError::NoQuantizedSpan { .. }), None) => {}
            (got, want) => {
                return Err(format!(
                    "layer {layer}, sequence {i}: export gave {:?}, the reference {} span",
                    got.err(),
                    if want.is_some() { "a" } else { "no" }
                ))
            }
        }
        report.checks += 1;
    }
    Ok(())
}

/// Everything observable of `seqs` at layer 0: tokens, memory, exported spans, outputs.
type Snapshot = (
    Vec<Result<usize, CacheError>>,
    super::MemoryReport,
    Vec<Result<(PackedSpan, PackedSpan), CacheError>>,
    Result<Vec<Vec<f32>>, CacheError>,
);

fn snapshot<D: Device>(cache: &VisualKvCache<D>, seqs: &[SeqId], cases: &[Case]) -> Snapshot {
    let queries: Vec<QueryRef<'_>> = seqs
        .iter()
        .zip(cases)
        .map(|(&seq, c)| QueryRef { seq, q: &c.q })
        .collect();
    (
        seqs.iter().map(|&s| cache.tokens(0, s)).collect(),
        cache.memory(),
        seqs.iter().map(|&s| cache.export_span(0, s)).collect(),
        cache.attend(0, &queries),
    )
}

/// Runs the suite on caches from `make` (each call an empty cache of one shape and scheme).
pub fn run<D: Device>(
    make: &dyn Fn() -> Result<VisualKvCache<D>, CacheError>,
) -> Result<Report, Failure> {
    let mut report = Report::default();
    let fresh = || make().map_err(|e| format!("making a cache: {e}"));
    // 1. Ragged batches at every layer.
    let mut cache = fresh()?;
    let mut rng = Rng(0x00c0_ffee, cache.fp_storage());
    let cases = cases(&mut rng, &cache)?;
    let seqs: Vec<SeqId> = cases.iter().map(|_| cache.add_sequence()).collect();
    for layer in 0..cache.shape().layers {
        for (c, &seq) in cases.iter().zip(&seqs) {
            c.fill(&mut cache, layer, seq)?;
        }
        check_attention(&cache, layer, &seqs, &cases, &mut report)?;
        check_spans(&cache, layer, &seqs, &cases, &mut report)?;
    }

    // 2. Refused calls change nothing.
    refusals(&mut cache, &seqs, &cases, &mut report)?;

    // 3. Export, then import after a new prefix.
    let (keys, values) = cache
        .export_span(0, seqs[0])
        .map_err(|e| format!("export: {e}"))?;
    let shape = cache.shape();
    let prefix = (
        rng.tensor(shape.kv_heads, 9, shape.head_dim, 2.0)?,
        rng.tensor(shape.kv_heads, 9, shape.head_dim, 1.0)?,
    );
    let imported = cache.add_sequence();
    cache
        .import_span(
            0,
            imported,
            Some((&prefix.0, &prefix.1)),
            keys.clone(),
            values.clone(),
        )
        .map_err(|e| format!("import: {e}"))?;
    let again = cache
        .export_span(0, imported)
        .map_err(|e| format!("export after import: {e}"))?;
    if again != (keys.clone(), values.clone()) {
        return Err("export after import differs from the imported span".into());
    }
    let q = rng
        .tensor(shape.q_heads, 1, shape.head_dim, 2.0)?
        .data()
        .to_vec();
    let got = cache
        .attend(
            0,
            &[QueryRef {
                seq: imported,
                q: &q,
            }],
        )
        .map_err(|e| format!("attend after import: {e}"))?;
    let segments = [
        Segment::Full {
            k: &prefix.0,
            v: &prefix.1,
        },
        Segment::Quantized {
            k: &keys,
            v: &values,
        },
    ];
    let want = decode_attention(&q, shape.q_heads, &segments, cache.scheme().calibrate)
        .map_err(|e| e.to_string())?;
    let d = max_head_deviation(&got.concat(), &want, shape.head_dim);
    if d.is_nan() || d > TOLERANCE {
        return Err(format!("attention after import deviates {d:e}"));
    }
    report.deviation = report.deviation.max(d);
    report.checks += 3;

    // 4. Growth by doubling under 200 single-token appends.
    let mut cache = fresh()?;
    let seq = cache.add_sequence();
    let mut case = Case {
        k: rng.tensor(shape.kv_heads, 20, shape.head_dim, 2.0)?,
        v: rng.tensor(shape.kv_heads, 20, shape.head_dim, 1.0)?,
        visual: 2..20,
        appended: Vec::new(),
        q: q.clone(),
    };
    case.fill(&mut cache, 0, seq)?;
    let row_bytes = 2 * shape.kv_heads * shape.head_dim * cache.fp_storage().scalar().size();
    let mut reallocations = 0;
    let mut last = 0;
    for n in 1..=200 {
        let k = rng.tensor(shape.kv_heads, 1, shape.head_dim, 2.0)?;
        let v = rng.tensor(shape.kv_heads, 1, shape.head_dim, 1.0)?;
        cache
            .append(0, seq, &k, &v)
            .map_err(|e| format!("append {n}: {e}"))?;
        case.appended.push((k, v));
        let capacity = cache.suffix_capacity(0, seq).map_err(|e| e.to_string())?;
        if capacity < n || capacity > 2 * n + 8 {
            return Err(format!("{n} appended tokens: suffix capacity {capacity}"));
        }
        reallocations += usize::from(capacity != last);
        last = capacity;
        let mem = cache.memory().total;
        if mem.suffix_bytes != n * row_bytes || mem.suffix_reserved_bytes != capacity * row_bytes {
            return Err(format!(
                "{n} appended tokens: memory reports {} live and {} reserved suffix bytes",
                mem.suffix_bytes, mem.suffix_reserved_bytes
            ));
        }
    }
    if reallocations > 8 {
        return Err(format!("200 appends reallocated {reallocations} times"));
    }
    check_attention(&cache, 0, &[seq], std::slice::from_ref(&case), &mut report)?;
    report.checks += 200;

    // 5. Prompts already in device memory.
    device_prompt::run(&mut rng, fresh()?, fresh()?, &mut report)?;
    Ok(report)
}

/// Scenario 2: every refused call returns its error and changes nothing observable.
fn refusals<D: Device>(
    cache: &mut VisualKvCache<D>,
    seqs: &[SeqId],
    cases: &[Case],
    report: &mut Report,
) -> Result<(), Failure> {
    let before = snapshot(cache, seqs, cases);
    let shape = cache.shape();
    let (kv, dim, layers) = (shape.kv_heads, shape.head_dim, shape.layers);
    let t = |heads: usize, tokens: usize, dim: usize| {
        Tensor3::new([heads, tokens, dim], vec![0.5; heads * tokens * dim])
            .map_err(|e| e.to_string())
    };
    let good = t(kv, 4, dim)?;
    let (more_heads, wider) = (t(kv + 1, 4, dim)?, t(kv, 1, dim + 8)?);
    let one = t(kv, 1, dim)?;
    let fresh = cache.add_sequence();
    let gone = cache.add_sequence();
    cache
        .remove_sequence(gone)
        .map_err(|e| format!("remove: {e}"))?;
    let mut nan = good.data().to_vec();
    nan[dim + 1] = f32::NAN;
    let nan = Tensor3::new([kv, 4, dim], nan).map_err(|e| e.to_string())?;
    let (keys, values) = cache
        .export_span(0, seqs[0])
        .map_err(|e| format!("export: {e}"))?;
    let mut other = keys.clone();
    other.scheme.order = match other.scheme.order {
        kvq_ir::BitOrder::Msb => kvq_ir::BitOrder::Lsb,
        kvq_ir::BitOrder::Lsb => kvq_ir::BitOrder::Msb,
    };
    let short = vec![0.0; dim];
    let mut inf_q = cases[0].q.clone();
    inf_q[0] = f32::INFINITY;
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 3..1;
    type Expect = fn(&CacheError) -> bool;
    let calls: Vec<(&str, Result<(), CacheError>, Expect)> = vec![
        (
            "prefill of a removed sequence",
            cache.prefill(0, gone, &good, &good, 0..2),
            |e| matches!(e, CacheError::UnknownSequence { .. }),
        ),
        (
            "append to a removed sequence",
            cache.append(0, gone, &good, &good),
            |e| matches!(e, CacheError::UnknownSequence { .. }),
        ),
        (
            "prefill past the last layer",
            cache.prefill(layers, fresh, &good, &good, 0..2),
            |e| matches!(e, CacheError::LayerOutOfRange { .. }),
        ),
        (
            "attend past the last layer",
            cache.attend(layers, &[]).map(drop),
            |e| matches!(e, CacheError::LayerOutOfRange { .. }),
        ),
        (
            "keys with a head too many",
            cache.prefill(0, fresh, &more_heads, &good, 0..2),
            |e| {
                matches!(
                    e,
                    CacheError::Shape {
                        what: "key heads",
                        ..
                    }
                )
            },
        ),
        (
            "values of another head_dim",
            cache.append(0, seqs[0], &one, &wider),
            |e| {
                matches!(
                    e,
                    CacheError::Shape {
                        what: "value head_dim",
                        ..
                    }
                )
            },
        ),
        (
            "a NaN value",
            cache.prefill(0, fresh, &good, &nan, 1..3),
            |e| {
                matches!(
                    e,
                    CacheError::NonFinite {
                        part: KvPart::Values,
                        head: 0,
                        token: 1,
                        channel: 1,
                        ..
                    }
                )
            },
        ),
        (
            "a NaN key appended",
            cache.append(0, seqs[1], &nan, &good),
            |e| {
                matches!(
                    e,
                    CacheError::NonFinite {
                        part: KvPart::Keys,
                        ..
                    }
                )
            },
        ),
        (
            "a visual range past the tokens",
            cache.prefill(0, fresh, &good, &good, 2..5),
            |e| matches!(e, CacheError::VisualRange { .. }),
        ),
        (
            "a reversed visual range",
            cache.prefill(0, fresh, &good, &good, reversed),
            |e| matches!(e, CacheError::VisualRange { .. }),
        ),
        (
            "a second prefill",
            cache.prefill(0, seqs[0], &good, &good, 0..2),
            |e| matches!(e, CacheError::AlreadyPrefilled { .. }),
        ),
        (
            "a short query",
            cache
                .attend(
                    0,
                    &[QueryRef {
                        seq: seqs[0],
                        q: &short,
                    }],
                )
                .map(drop),
            |e| {
                matches!(
                    e,
                    CacheError::Shape {
                        what: "query length",
                        ..
                    }
                )
            },
        ),
        (
            "an infinite query",
            cache
                .attend(
                    0,
                    &[QueryRef {
                        seq: seqs[0],
                        q: &inf_q,
                    }],
                )
                .map(drop),
            |e| matches!(e, CacheError::NonFiniteQuery { .. }),
        ),
        (
            "a span of another bit order",
            cache.import_span(0, fresh, None, other, values),
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
            "attend before prefill",
            cache
                .attend(
                    0,
                    &[QueryRef {
                        seq: fresh,
                        q: &cases[0].q,
                    }],
                )
                .map(drop),
            |e| matches!(e, CacheError::NotPrefilled { .. }),
        ),
    ];
    for (what, result, expect) in calls {
        match result {
            Err(e) if expect(&e) => report.checks += 1,
            other => return Err(format!("{what}: got {other:?}")),
        }
    }
    if cache.tokens(0, fresh) != Ok(0) {
        return Err("a refused prefill left tokens behind".into());
    }
    if snapshot(cache, seqs, cases) != before {
        return Err("a refused call changed the cache".into());
    }
    report.checks += 1;
    Ok(())
}
