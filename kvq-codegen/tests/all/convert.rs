//! Conversions, including the double-rounding traps: host code == interpreter == hand values.

use half::{bf16, f16};
use kvq_ir::ir::interp::Buffer;
use kvq_ir::ir::{CmpOp, Kernel, ScalarType, Type};
use ScalarType::{BF16, F16, F32, F64, U16, U32, U8};

use crate::common::{elementwise, lcg, run_elementwise, special_f32};

/// Converts the one input of type `from` to every type in `to`.
fn convert_all(from: ScalarType, input: Buffer, to: &[ScalarType]) -> Vec<Buffer> {
    run_elementwise(&convert_kernel(from, to), vec![input], to)
}

/// The kernel of [`convert_all`].
pub fn convert_kernel(from: ScalarType, to: &[ScalarType]) -> Kernel {
    let name = format!("convert_{}", from.name());
    elementwise(&name, &[from], to, |b, xs| {
        to.iter().map(|&t| b.convert(t, xs[0])).collect()
    })
}

#[test]
fn f32_to_narrow_floats_rounds_to_nearest_even() {
    let mut x = special_f32();
    x.push(f32::NAN);
    let out = convert_all(F32, Buffer::F32(x.clone()), &[F16, BF16, F64]);
    let (h, bh, d) = (
        out[0].as_f16().expect("f16"),
        out[1].as_bf16().expect("bf16"),
        out[2].as_f64().expect("f64"),
    );
    for (k, &v) in x.iter().enumerate() {
        if v.is_nan() {
            assert!(h[k].is_nan() && bh[k].is_nan() && d[k].is_nan());
            continue;
        }
        assert_eq!(h[k].to_bits(), f16::from_f32(v).to_bits(), "f16 of {v:e}");
        assert_eq!(
            bh[k].to_bits(),
            bf16::from_f32(v).to_bits(),
            "bf16 of {v:e}"
        );
        assert_eq!(d[k], f64::from(v));
    }
    // The ties listed in special_f32: 1 + 2^-8 -> bf16 1.0, 1 + 3 * 2^-8 -> 1 + 2^-6.
    let at = |bits: u32| x.iter().position(|v| v.to_bits() == bits).expect("present");
    assert_eq!(bh[at(0x3F80_8000)].to_bits(), 0x3F80);
    assert_eq!(bh[at(0x3F81_8000)].to_bits(), 0x3F82);
    let at = |v: f32| x.iter().position(|&y| y == v).expect("present");
    assert_eq!(h[at(1.0 + 1.0 / 2048.0)].to_bits(), 0x3C00);
    assert_eq!(h[at(1.0 + 3.0 / 2048.0)].to_bits(), 0x3C02);
    assert_eq!(h[at(65520.0)].to_bits(), 0x7C00);
}

#[test]
fn f64_to_f16_and_bf16_round_once() {
    // Through f32 with round-to-nearest, each of these would round twice and land on the even
    // neighbour; rounded once from the f64 they go up.
    let x = vec![
        1.0 + 2f64.powi(-11) + 2f64.powi(-40), // f16: 1 + 2^-10
        1.0 + 2f64.powi(-8) + 2f64.powi(-40),  // bf16: 1 + 2^-7
        -(1.0 + 2f64.powi(-11) + 2f64.powi(-40)),
        1e300,
        -1e-300,
        0.1,
        65519.99999,
        f64::NAN,
    ];
    let out = convert_all(F64, Buffer::F64(x.clone()), &[F16, BF16, F32]);
    let (h, bh, s) = (
        out[0].as_f16().expect("f16"),
        out[1].as_bf16().expect("bf16"),
        out[2].as_f32().expect("f32"),
    );
    assert_eq!(h[0].to_bits(), 0x3C01);
    assert_eq!(h[2].to_bits(), 0xBC01);
    assert_eq!(bh[1].to_bits(), 0x3F81);
    assert_eq!(h[3].to_bits(), 0x7C00);
    assert_eq!(bh[3].to_bits(), 0x7F80);
    assert_eq!(h[4].to_bits(), 0x8000);
    assert_eq!(s[5], 0.1f32);
    assert_eq!(h[6].to_bits(), 0x7BFF);
    // (`half::f16::from_f64` rounds twice here and gives 0x3C00.)
}

#[test]
fn integers_to_floats_round_once() {
    // 2^24 + 2^16 + 1 to bf16: correctly 2^24 + 2^17; via f32 it would tie down to 2^24.
    let mut x = vec![
        0,
        1,
        255,
        2049,
        (1 << 24) + 1,
        (1 << 24) + (1 << 16) + 1,
        u32::MAX,
        65519,
        65520,
    ];
    x.extend(lcg(3, 40));
    let out = convert_all(U32, Buffer::U32(x.clone()), &[F16, BF16, F32, F64, U8]);
    let (h, bh, s, d, b) = (
        out[0].as_f16().expect("f16"),
        out[1].as_bf16().expect("bf16"),
        out[2].as_f32().expect("f32"),
        out[3].as_f64().expect("f64"),
        out[4].as_u8().expect("u8"),
    );
    assert_eq!(bh[5].to_bits(), 0x4B81);
    assert_eq!(s[4], 16777216.0);
    assert_eq!(h[3].to_bits(), f16::from_f32(2048.0).to_bits());
    assert_eq!(h[7].to_bits(), 0x7BFF);
    assert_eq!(h[8].to_bits(), 0x7C00);
    for k in 0..x.len() {
        assert_eq!(d[k], f64::from(x[k]));
        assert_eq!(s[k], x[k] as f32);
        assert_eq!(b[k], x[k] as u8);
    }
}

#[test]
fn floats_to_integers_truncate() {
    let x: Vec<f32> = vec![0.0, -0.0, 0.99, 1.0, 254.9, 255.0, 3.7, 100.5, 0.5, 17.0];
    let out = convert_all(F32, Buffer::F32(x.clone()), &[U8, U32]);
    let (b, w) = (out[0].as_u8().expect("u8"), out[1].as_u32().expect("u32"));
    for k in 0..x.len() {
        assert_eq!(b[k], x[k] as u8);
        assert_eq!(w[k], x[k] as u32);
    }
    let big: Vec<f64> = vec![0.0, 4294967295.9, 1e9 + 0.5, 123.999];
    let out = convert_all(F64, Buffer::F64(big.clone()), &[U32]);
    let w = out[0].as_u32().expect("u32");
    for k in 0..big.len() {
        assert_eq!(w[k], big[k] as u32);
    }
}

#[test]
fn half_types_convert_between_each_other() {
    let x: Vec<f16> = special_f32().into_iter().map(f16::from_f32).collect();
    let out = convert_all(F16, Buffer::F16(x.clone()), &[BF16, F32, F64]);
    let bh = out[0].as_bf16().expect("bf16");
    for (k, v) in x.iter().enumerate() {
        assert_eq!(bh[k].to_bits(), bf16::from_f32(v.to_f32()).to_bits());
    }
    let y: Vec<bf16> = special_f32().into_iter().map(bf16::from_f32).collect();
    let out = convert_all(BF16, Buffer::BF16(y.clone()), &[F16, F32, F64]);
    let (h, s) = (out[0].as_f16().expect("f16"), out[1].as_f32().expect("f32"));
    for (k, v) in y.iter().enumerate() {
        assert_eq!(s[k].to_bits(), v.to_f32().to_bits());
        assert_eq!(h[k].to_bits(), f16::from_f32(v.to_f32()).to_bits());
    }
}

// Half values in u8 range only (float to integer must fit).
#[test]
fn small_floats_to_bytes() {
    let x: Vec<f16> = (0..64).map(|k| f16::from_f32(k as f32 * 3.9)).collect();
    let out = convert_all(F16, Buffer::F16(x.clone()), &[U8, U32]);
    let b = out[0].as_u8().expect("u8");
    for k in 0..x.len() {
        assert_eq!(b[k], x[k].to_f32() as u8);
    }
}

#[test]
fn bools_and_bytes_widen_and_narrow() {
    let x: Vec<u8> = (0..=255).collect();
    let outputs = [U32, U8, U32, F32, BF16, F16];
    let kernel = elementwise("convert_u8", &[U8], &outputs, |b, xs| {
        let ten = b.u8(10);
        let small = b.cmp(CmpOp::Lt, xs[0], ten);
        vec![
            b.convert(U32, xs[0]),
            b.convert(U8, small),
            b.convert(U32, small),
            b.convert(F32, xs[0]),
            b.convert(BF16, xs[0]),
            b.convert(F16, xs[0]),
        ]
    });
    let out = run_elementwise(&kernel, vec![Buffer::U8(x.clone())], &outputs);
    let flags = out[1].as_u8().expect("u8");
    for k in 0..x.len() {
        assert_eq!(flags[k], u8::from(x[k] < 10));
        assert_eq!(out[4].as_bf16().expect("bf16")[k].to_f32(), f32::from(x[k]));
    }
}

/// The kernel of [`u16_converts_and_holds_the_bits_of_half_floats`]: from an f16 and a bf16,
/// their bits as u16 and back, and the u16's conversions to u32, u8, f32 and f16; from a u32,
/// its truncation to u16; from an f32 in 0..65536, its u16.
pub fn u16_kernel() -> Kernel {
    let outputs = [U16, U16, F16, BF16, U32, U8, F32, F16, U16, U16];
    elementwise("u16_bits", &[F16, BF16, U32, F32], &outputs, |b, xs| {
        let h = b.bitcast_to(Type::Scalar(U16), xs[0]);
        let bh = b.bitcast_to(Type::Scalar(U16), xs[1]);
        vec![
            h,
            bh,
            b.bitcast_to(Type::Scalar(F16), h),
            b.bitcast_to(Type::Scalar(BF16), bh),
            b.convert(U32, h),
            b.convert(U8, h),
            b.convert(F32, h),
            b.convert(F16, h),
            b.convert(U16, xs[2]),
            b.convert(U16, xs[3]),
        ]
    })
}

/// U16 holds a 16-bit float's bits (both ways, every NaN payload kept) and converts like the
/// other integers: zero-extension to u32, truncation to u8 and from u32, rounding to f16 to
/// nearest even, truncation of an in-range f32; interpreter and host agree with Rust.
#[test]
fn u16_converts_and_holds_the_bits_of_half_floats() {
    let raw: Vec<u16> = lcg(21, 200)
        .into_iter()
        .map(|r| r as u16)
        .chain([0, 0x8000, 0x7C00, 0xFFFF, 0x7E01])
        .collect();
    let n = raw.len();
    let h: Vec<f16> = raw.iter().map(|&r| f16::from_bits(r)).collect();
    let bh: Vec<bf16> = raw
        .iter()
        .map(|&r| bf16::from_bits(r.rotate_left(3)))
        .collect();
    let words: Vec<u32> = lcg(22, n);
    let floats: Vec<f32> = words.iter().map(|&w| (w % 655_360) as f32 / 10.0).collect();
    let outputs = [U16, U16, F16, BF16, U32, U8, F32, F16, U16, U16];
    let out = run_elementwise(
        &u16_kernel(),
        vec![
            Buffer::F16(h.clone()),
            Buffer::BF16(bh.clone()),
            Buffer::U32(words.clone()),
            Buffer::F32(floats.clone()),
        ],
        &outputs,
    );
    for k in 0..n {
        let bits = raw[k];
        assert_eq!(out[0].as_u16().unwrap()[k], bits);
        assert_eq!(out[1].as_u16().unwrap()[k], bh[k].to_bits());
        assert_eq!(out[2].as_f16().unwrap()[k].to_bits(), bits);
        assert_eq!(out[3].as_bf16().unwrap()[k].to_bits(), bh[k].to_bits());
        assert_eq!(out[4].as_u32().unwrap()[k], u32::from(bits));
        assert_eq!(out[5].as_u8().unwrap()[k], bits as u8);
        assert_eq!(out[6].as_f32().unwrap()[k], f32::from(bits));
        let rounded = f16::from_f32(f32::from(bits));
        assert_eq!(out[7].as_f16().unwrap()[k].to_bits(), rounded.to_bits());
        assert_eq!(out[8].as_u16().unwrap()[k], words[k] as u16);
        assert_eq!(out[9].as_u16().unwrap()[k], floats[k] as u16);
    }
}
