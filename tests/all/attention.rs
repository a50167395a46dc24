//! The reference decode attention over segments, against an f64 attention over the same tokens
//! written independently (kvq::metrics::attention_f64 on a spliced tensor) and hand-computed cases.

use kvq::metrics::attention_f64;
use kvq::reference::{decode_attention, quantize, Segment};
use kvq::{CacheScheme, Tensor3};
use kvq_runtime::KvFile;

use crate::fixtures::smollm2;

/// Replaces tokens `range` of `x` with those of `span`.
fn splice(x: &Tensor3, range: std::ops::Range<usize>, span: &Tensor3) -> Tensor3 {
    let s = x.shape();
    let mut data = x.data().to_vec();
    for h in 0..s.heads {
        for (i, t) in range.clone().enumerate() {
            let at = s.index(h, t, 0);
            data[at..at + s.dim].copy_from_slice(span.row(h, i));
        }
    }
    Tensor3::new(s.dims(), data).unwrap()
}

#[test]
fn prefix_span_suffix_matches_full_attention_on_dequantized_tokens() {
    let file = KvFile::load(&smollm2()).unwrap();
    let layer = &file.layers[1];
    let scheme = CacheScheme::parse(
        "key(bits = 2, axis = channel, group = 32, rule = minmax), value(bits = 2, axis = token, group = 32, rule = minmax)",
    )
    .unwrap();
    let (span, last) = (20..200, layer.k.shape().tokens - 1);
    let kq = quantize(&layer.k.slice_tokens(span.clone()).unwrap(), &scheme.key).unwrap();
    let vq = quantize(&layer.v.slice_tokens(span.clone()).unwrap(), &scheme.value).unwrap();
    let (kp, vp) = (
        layer.k.slice_tokens(0..20).unwrap(),
        layer.v.slice_tokens(0..20).unwrap(),
    );
    let (ks, vs) = (
        layer.k.slice_tokens(200..last + 1).unwrap(),
        layer.v.slice_tokens(200..last + 1).unwrap(),
    );
    let segments = [
        Segment::Full { k: &kp, v: &vp },
        Segment::Quantized { k: &kq, v: &vq },
        Segment::Full { k: &ks, v: &vs },
    ];
    let qs = layer.q.shape();
    let q: Vec<f32> = (0..qs.heads)
        .flat_map(|h| layer.q.row(h, last).to_vec())
        .collect();
    let got = decode_attention(&q, qs.heads, &segments, None).unwrap();

    let k_full = splice(&layer.k, span.clone(), &kq.dequantize().unwrap());
    let v_full = splice(&layer.v, span, &vq.dequantize().unwrap());
    let want = attention_f64(&layer.q, &k_full, &v_full, true);
    for h in 0..qs.heads {
        for c in 0..qs.dim {
            let w = want[qs.index(h, last, c)];
            let g = got[h * qs.dim + c] as f64;
            assert!(
                (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "head {h} channel {c}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn calibration_applies_per_quantized_segment_only() {
    // One fp token with logit 0 and a quantized span of two tokens with logits 0 and 8 (d = 3):
    // the span's logits become 0 and 5; the fp logit stays 0.
    let fp_k = Tensor3::new([1, 1, 8], vec![0.0; 8]).unwrap();
    let fp_v = Tensor3::new([1, 1, 8], vec![1.0; 8]).unwrap();
    let mut k = vec![0.0f32; 16];
    k[8] = 8.0; // token 1, channel 0
    let k = Tensor3::new([1, 2, 8], k).unwrap();
    let v = Tensor3::new([1, 2, 8], [vec![2.0; 8], vec![4.0; 8]].concat()).unwrap();
    let scheme = CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = minmax, params = f32), \
         value(bits = 1, axis = token, group = all, rule = minmax, params = f32), calibrate = 3",
    )
    .unwrap();
    let (kq, vq) = (
        quantize(&k, &scheme.key).unwrap(),
        quantize(&v, &scheme.value).unwrap(),
    );
    assert_eq!(kq.dequantize().unwrap(), k);
    assert_eq!(vq.dequantize().unwrap(), v);
    let mut q = vec![0.0f32; 8];
    q[0] = 8f32.sqrt(); // q . k / sqrt(8) = k[0]
    let segments = [
        Segment::Full { k: &fp_k, v: &fp_v },
        Segment::Quantized { k: &kq, v: &vq },
    ];
    let o = decode_attention(&q, 1, &segments, scheme.calibrate).unwrap();
    let w = [1.0f64, 1.0, 5f64.exp()];
    let want = (w[0] * 1.0 + w[1] * 2.0 + w[2] * 4.0) / w.iter().sum::<f64>();
    assert!((o[0] as f64 - want).abs() < 1e-6, "{} vs {want}", o[0]);
    let uncalibrated = decode_attention(&q, 1, &segments, None).unwrap();
    let w = [1.0f64, 1.0, 8f64.exp()];
    let want = (w[0] * 1.0 + w[1] * 2.0 + w[2] * 4.0) / w.iter().sum::<f64>();
    assert!((uncalibrated[0] as f64 - want).abs() < 1e-6);
}
