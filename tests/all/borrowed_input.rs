//! Quantizing borrowed input (`backend::quantize_borrowed`, what kvq-py passes numpy and torch
//! memory to without a copy) against the reference, bit for bit: every input type, an aligned
//! and a misaligned slice (the latter copied first), every backend, and the reference's errors
//! for non-finite values and wrong lengths.

use half::{bf16, f16};
use kvq::backend::{quantize_borrowed, Backend, BackendError, InputSlice};
use kvq::reference::{quantize, QuantError};
use kvq::{Scheme, Shape3, Tensor3};
use kvq_ir::scheme::catalogue::catalogue;

const SHAPE: Shape3 = Shape3 {
    heads: 2,
    tokens: 37,
    dim: 64,
};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `x` rounded to each input type, as a borrowed slice starting `skip` elements into an owned
/// buffer (to test a base that is not 16-byte aligned), with the f32 values it holds.
fn check_all(scheme: &Scheme, x: &[f32], skip: usize) {
    let f16s: Vec<f16> = std::iter::repeat_n(f16::ZERO, skip)
        .chain(x.iter().map(|&v| f16::from_f32(v)))
        .collect();
    let bf16s: Vec<bf16> = std::iter::repeat_n(bf16::ZERO, skip)
        .chain(x.iter().map(|&v| bf16::from_f32(v)))
        .collect();
    let f32s: Vec<f32> = std::iter::repeat_n(0.0, skip)
        .chain(x.iter().copied())
        .collect();
    for slice in [
        InputSlice::F16(&f16s[skip..]),
        InputSlice::BF16(&bf16s[skip..]),
        InputSlice::F32(&f32s[skip..]),
    ] {
        let exact = Tensor3::new(SHAPE.dims(), slice.to_f32()).unwrap();
        let want = quantize(&exact, scheme).unwrap();
        for backend in [Backend::Host, Backend::Interp, Backend::Reference] {
            let got = quantize_borrowed(slice, SHAPE, scheme, backend).unwrap();
            let what = format!(
                "{scheme}, {:?}, skip {skip}, {backend:?}",
                slice.input_type()
            );
            assert_eq!(got.codes, want.codes, "{what}");
            assert_eq!(bits(&got.zero), bits(&want.zero), "{what}");
            assert_eq!(bits(&got.scale), bits(&want.scale), "{what}");
        }
    }
}

#[test]
fn borrowed_input_gives_the_references_bits() {
    let x = values(SHAPE.len(), 11);
    for (_, scheme) in catalogue() {
        for skip in [0, 1] {
            check_all(&scheme, &x, skip);
        }
    }
}

#[test]
fn borrowed_input_errors_are_the_references() {
    let scheme =
        Scheme::parse("bits = 1, axis = channel, group = all, rule = shrink(0.5)").unwrap();
    let mut x: Vec<f16> = values(SHAPE.len(), 5)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    x[SHAPE.index(1, 20, 3)] = f16::INFINITY;
    let got = quantize_borrowed(InputSlice::F16(&x), SHAPE, &scheme, Backend::Host).unwrap_err();
    let exact = Tensor3::new(SHAPE.dims(), x.iter().map(|v| v.to_f32()).collect()).unwrap();
    let want = quantize(&exact, &scheme).unwrap_err();
    assert!(
        matches!(&got, BackendError::Quant(q) if *q == want),
        "{got} vs {want}"
    );
    let short = quantize_borrowed(InputSlice::F16(&x[1..]), SHAPE, &scheme, Backend::Host);
    assert!(matches!(
        short,
        Err(BackendError::Quant(QuantError::Tensor(_)))
    ));
}
