//! Attention kernels whose full-precision rows are f16 or bf16 (`AttentionShape::fp`), run by
//! the interpreter in both layouts, match the reference decode attention over the rows rounded
//! to that type (f64, SPEC.md section 4), and not the unrounded rows (bf16): the kernels read
//! the narrow rows, widened exactly.

use kvq_ir::ir::{interp, verify};
use kvq_ir::lower::attention::{
    attention, AttentionArgs, AttentionLayout, AttentionSchedule, AttentionShape, SeqData,
};
use kvq_ir::lower::InputType;
use kvq_ir::metrics::max_head_deviation;
use kvq_ir::reference::{decode_attention, quantize, Segment};
use kvq_ir::{CacheScheme, Tensor3};

const KV: usize = 2;
const G: usize = 2;
const D: usize = 64;

struct Rng(u64);

impl Rng {
    fn tensor(&mut self, tokens: usize, a: f32) -> Tensor3 {
        let data = (0..KV * tokens * D)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                a * (((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect();
        Tensor3::new([KV, tokens, D], data).unwrap()
    }
}

/// A query, its full-precision keys and values, and its unquantized span (if any).
type Seq = (Vec<f32>, (Tensor3, Tensor3), Option<(Tensor3, Tensor3)>);

/// `x` rounded to `fp` and widened back.
fn rounded(x: &Tensor3, fp: InputType) -> Tensor3 {
    x.map(|v| fp.round(v))
}

/// The largest deviation of the kernels' outputs from the reference over `fp_of(rows)`.
fn deviation(
    scheme: &CacheScheme,
    schedule: &AttentionSchedule,
    fp: InputType,
    fp_of: impl Fn(&Tensor3) -> Tensor3,
) -> f64 {
    let mut rng = Rng(41);
    // (fp tokens, span tokens): fp rows alone, fp rows beside a span, fp rows over chunks.
    let seqs: Vec<Seq> = [(9, 0), (21, 40), (70, 33)]
        .into_iter()
        .map(|(n, span)| {
            let q = rng.tensor(G, 2.0).data().to_vec();
            let fp_kv = (rng.tensor(n, 2.0), rng.tensor(n, 1.0));
            let span = (span > 0).then(|| (rng.tensor(span, 2.0), rng.tensor(span, 1.0)));
            (q, fp_kv, span)
        })
        .collect();
    let spans: Vec<_> = seqs
        .iter()
        .map(|(_, _, s)| {
            s.as_ref().map(|(k, v)| {
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
        .map(|((q, (k, v), _), span)| SeqData {
            q,
            fp: Some((k, v)),
            span: span.as_ref().map(|(k, v)| (k, v)),
        })
        .collect();
    let shape = AttentionShape {
        head_dim: D as u32,
        group: G as u32,
        fp,
    };
    let kernels = attention(scheme, shape, schedule).unwrap();
    let mut args = AttentionArgs::new(scheme, shape, schedule, KV, &data).unwrap();
    args.launch(&kernels, |kernel, a, grid| {
        verify(kernel).unwrap_or_else(|e| panic!("{e}"));
        interp::run(kernel, a, grid)
    })
    .unwrap();
    let mut worst = 0.0f64;
    for (got, s) in args.outputs().iter().zip(&data) {
        let (k, v) = s.fp.unwrap();
        let (k, v) = (fp_of(k), fp_of(v));
        let mut segments = vec![Segment::Full { k: &k, v: &v }];
        if let Some((k, v)) = s.span {
            segments.push(Segment::Quantized { k, v });
        }
        let want = decode_attention(s.q, KV * G, &segments, scheme.calibrate).unwrap();
        worst = worst.max(max_head_deviation(got, &want, D));
    }
    worst
}

/// The rounding every narrow path shares, against values worked out by hand: ties to even,
/// f16's overflow to infinity beyond 65504 + half an ulp, bf16's 8-bit significand.
#[test]
fn rounding_to_a_narrow_type_is_to_nearest_even() {
    let cases = [
        (InputType::F16, 1.0 + 2f32.powi(-11), 1.0),
        (
            InputType::F16,
            1.0 + 3.0 * 2f32.powi(-11),
            1.0 + 2f32.powi(-9),
        ),
        (InputType::F16, 65519.0, 65504.0),
        (InputType::F16, 65520.0, f32::INFINITY),
        (InputType::F16, 1e6, f32::INFINITY),
        (InputType::BF16, 1.0 + 2f32.powi(-8), 1.0),
        (
            InputType::BF16,
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-6),
        ),
        (InputType::BF16, 1e6, 999424.0),
        (InputType::F32, 0.1, 0.1),
    ];
    for (fp, x, want) in cases {
        assert_eq!(fp.round(x), want, "{fp:?} {x}");
        assert_eq!(fp.round(-x), -want, "{fp:?} -{x}");
    }
}

#[test]
fn narrow_fp_rows_match_the_reference_over_the_rounded_rows() {
    let pairs = [
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
        "key(bits = 2, axis = channel, group = 32, rule = minmax), \
         value(bits = 2, axis = token, group = 32, rule = minmax)",
    ];
    let layouts = [
        (AttentionLayout::ThreadPerItem, true, 64),
        (AttentionLayout::ThreadPerItem, false, 1),
        (AttentionLayout::BlockPerItem, false, 128),
    ];
    let mut runs = 0;
    for text in pairs {
        let scheme = CacheScheme::parse(text).unwrap();
        for (layout, tables, block_size) in layouts {
            let schedule = AttentionSchedule {
                block_size,
                chunk: 32,
                tile: 16,
                tables: tables && scheme.key.group == kvq_ir::Group::All,
                layout,
            };
            for fp in [InputType::F16, InputType::BF16] {
                let dev = deviation(&scheme, &schedule, fp, |x| rounded(x, fp));
                assert!(dev <= 1e-4, "{scheme}, {schedule:?}, {fp:?}: {dev:e}");
                if fp == InputType::BF16 {
                    // The unrounded rows are not what the kernels read.
                    let off = deviation(&scheme, &schedule, fp, Tensor3::clone);
                    assert!(off > 1e-3, "{scheme}, {schedule:?}: only {off:e} off");
                }
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 12);
}
