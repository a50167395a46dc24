//! Arithmetic and comparisons: host code == interpreter, bit for bit, plus hand-computed values.

use half::{bf16, f16};
use kvq_ir::ir::interp::Buffer;
use kvq_ir::ir::{BinaryOp, Builder, CmpOp, Kernel, ScalarType, UnaryOp, Value};
use ScalarType::{BF16, F16, F32, F64, U16, U32, U8};

use crate::common::{bits, elementwise, lcg, run_elementwise, special_f32};

/// The six comparisons of `a` and `b` as bits 0..6 of a byte.
fn compare_bits(b: &mut Builder, x: Value, y: Value) -> Value {
    let ops = [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ];
    let mut acc = b.u8(0);
    for (k, op) in ops.into_iter().enumerate() {
        let c = b.cmp(op, x, y);
        let c = b.convert(U8, c);
        let k = b.u8(k as u8);
        let c = b.binary(BinaryOp::Shl, c, k);
        acc = b.binary(BinaryOp::Or, acc, c);
    }
    acc
}

const FLOAT_OUTPUTS: usize = 11;

/// Every float operation on `a[i]`, `b[i]` of type `t`: add, sub, mul, div, min, max, neg,
/// roundeven, floor (type `t`), is_finite (u8), the comparisons (u8).
fn float_ops(t: ScalarType, a: Buffer, b: Buffer) -> Vec<Buffer> {
    let (kernel, outputs) = float_kernel(t);
    let out = run_elementwise(&kernel, vec![a, b], &outputs);
    assert_eq!(out.len(), FLOAT_OUTPUTS);
    out
}

/// The kernel of [`float_ops`] and its output types.
pub fn float_kernel(t: ScalarType) -> (Kernel, Vec<ScalarType>) {
    let mut outputs = vec![t; 9];
    outputs.extend([U8, U8]);
    let kernel = elementwise(
        &format!("float_ops_{}", t.name()),
        &[t, t],
        &outputs,
        |b, xs| {
            let (x, y) = (xs[0], xs[1]);
            let mut out = vec![
                b.add(x, y),
                b.sub(x, y),
                b.mul(x, y),
                b.div(x, y),
                b.min(x, y),
                b.max(x, y),
            ];
            for op in [UnaryOp::Neg, UnaryOp::RoundEven, UnaryOp::Floor] {
                out.push(b.unary(op, x));
            }
            let finite = b.unary(UnaryOp::IsFinite, x);
            out.push(b.convert(U8, finite));
            out.push(compare_bits(b, x, y));
            out
        },
    );
    (kernel, outputs)
}

fn rotated<T: Clone>(v: &[T], by: usize) -> Vec<T> {
    let mut r = v.to_vec();
    r.rotate_left(by);
    r
}

#[test]
fn f32_arithmetic_matches_interpreter() {
    let mut a = special_f32();
    a.push(f32::NAN);
    let b = rotated(&a, 1);
    let out = float_ops(F32, Buffer::F32(a.clone()), Buffer::F32(b.clone()));
    let f = |k: usize| out[k].as_f32().expect("f32").to_vec();
    // min(+0, -0) keeps a = +0 (-0 < +0 is false); max(-0, 0.5)...
    assert_eq!((a[0], b[0]), (0.0, -0.0));
    assert_eq!(f(4)[0].to_bits(), 0.0f32.to_bits());
    assert_eq!(f(5)[0].to_bits(), 0.0f32.to_bits());
    // roundeven ties: 0.5 -> 0, -0.5 -> -0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2, 3.5 -> 4.
    let round: Vec<u32> = f(7)[2..8].iter().map(|x| x.to_bits()).collect();
    let want: Vec<u32> = [0.0f32, -0.0, 2.0, 2.0, -2.0, 4.0]
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(round, want);
    // 0.1 / 1e-40 and friends are correctly rounded: compare a few with Rust directly.
    for k in 0..a.len() {
        assert_eq!(f(0)[k].to_bits(), (a[k] + b[k]).to_bits(), "add {k}");
        assert_eq!(f(3)[k].to_bits(), (a[k] / b[k]).to_bits(), "div {k}");
    }
}

#[test]
fn f64_arithmetic_matches_interpreter() {
    let mut a: Vec<f64> = special_f32().into_iter().map(f64::from).collect();
    a.extend([1e300, -1e-310, 0.1, 1.0 / 3.0, f64::NAN]);
    let b = rotated(&a, 3);
    let out = float_ops(F64, Buffer::F64(a.clone()), Buffer::F64(b.clone()));
    let f = |k: usize| out[k].as_f64().expect("f64").to_vec();
    for k in 0..a.len() {
        assert_eq!(f(1)[k].to_bits(), (a[k] - b[k]).to_bits(), "sub {k}");
        assert_eq!(f(2)[k].to_bits(), (a[k] * b[k]).to_bits(), "mul {k}");
    }
}

#[test]
fn f16_arithmetic_rounds_ties_to_even() {
    let mut a: Vec<f16> = special_f32().into_iter().map(f16::from_f32).collect();
    let mut b = rotated(&a, 5);
    // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: even is 1. (1 + 2^-10) + 2^-11 rounds up.
    a.extend([f16::from_f32(1.0), f16::from_f32(1.0 + 1.0 / 1024.0)]);
    b.extend([f16::from_f32(1.0 / 2048.0), f16::from_f32(1.0 / 2048.0)]);
    let n = a.len();
    let out = float_ops(F16, Buffer::F16(a), Buffer::F16(b));
    let sum = out[0].as_f16().expect("f16");
    assert_eq!(sum[n - 2].to_bits(), 0x3C00);
    assert_eq!(sum[n - 1].to_bits(), 0x3C02);
}

#[test]
fn bf16_arithmetic_rounds_ties_to_even() {
    let mut a: Vec<bf16> = special_f32().into_iter().map(bf16::from_f32).collect();
    let mut b = rotated(&a, 2);
    a.extend([bf16::from_f32(1.0), bf16::from_f32(1.0 + 1.0 / 128.0)]);
    b.extend([bf16::from_f32(1.0 / 256.0), bf16::from_f32(1.0 / 256.0)]);
    let n = a.len();
    let out = float_ops(BF16, Buffer::BF16(a.clone()), Buffer::BF16(b));
    let sum = out[0].as_bf16().expect("bf16");
    assert_eq!(sum[n - 2].to_bits(), 0x3F80);
    assert_eq!(sum[n - 1].to_bits(), 0x3F82);
    // Neg is a sign flip.
    let neg = out[6].as_bf16().expect("bf16");
    for (x, y) in a.iter().zip(neg) {
        assert_eq!(x.to_bits() ^ 0x8000, y.to_bits());
    }
}

/// Every integer operation on `a[i]`, `b[i]` of type `t`.
fn int_ops(t: ScalarType, a: Buffer, b: Buffer) -> Vec<Buffer> {
    let (kernel, outputs) = int_kernel(t);
    run_elementwise(&kernel, vec![a, b], &outputs)
}

/// The kernel of [`int_ops`] and its output types.
pub fn int_kernel(t: ScalarType) -> (Kernel, Vec<ScalarType>) {
    let mut outputs = vec![t; 13];
    outputs.push(U8);
    let width: u8 = match t {
        U8 => 8,
        U16 => 16,
        _ => 32,
    };
    let kernel = elementwise(
        &format!("int_ops_{}", t.name()),
        &[t, t],
        &outputs,
        |bl, xs| {
            let (x, y) = (xs[0], xs[1]);
            let (one, mask) = match t {
                U8 => (bl.u8(1), bl.u8(width - 1)),
                U16 => (bl.u16(1), bl.u16(u16::from(width) - 1)),
                _ => (bl.u32(1), bl.u32(u32::from(width) - 1)),
            };
            let nonzero = bl.binary(BinaryOp::Or, y, one);
            let shift = bl.binary(BinaryOp::And, y, mask);
            let lt = bl.cmp(CmpOp::Lt, x, y);
            let flag = bl.cmp(CmpOp::Ne, x, y);
            let both = bl.binary(BinaryOp::And, lt, flag);
            let either = bl.binary(BinaryOp::Or, lt, flag);
            let neither = bl.unary(UnaryOp::Not, either);
            let pick = bl.select(both, x, y);
            let pick2 = bl.select(neither, y, pick);
            vec![
                bl.add(x, y),
                bl.sub(x, y),
                bl.mul(x, y),
                bl.div(x, nonzero),
                bl.rem(x, nonzero),
                bl.min(x, y),
                bl.max(x, y),
                bl.binary(BinaryOp::And, x, y),
                bl.binary(BinaryOp::Or, x, y),
                bl.binary(BinaryOp::Shl, x, shift),
                bl.binary(BinaryOp::Shr, x, shift),
                bl.unary(UnaryOp::Not, x),
                pick2,
                compare_bits(bl, x, y),
            ]
        },
    );
    (kernel, outputs)
}

#[test]
fn u32_arithmetic_wraps() {
    let mut a = lcg(11, 60);
    a.extend([0, u32::MAX, 5, 7]);
    let mut b = lcg(12, 60);
    b.extend([u32::MAX, 3, 5, 9]);
    let out = int_ops(U32, Buffer::U32(a.clone()), Buffer::U32(b.clone()));
    let add = out[0].as_u32().expect("u32");
    let mul = out[2].as_u32().expect("u32");
    for k in 0..a.len() {
        assert_eq!(add[k], a[k].wrapping_add(b[k]));
        assert_eq!(mul[k], a[k].wrapping_mul(b[k]));
    }
}

#[test]
fn u8_arithmetic_wraps() {
    let a: Vec<u8> = lcg(13, 70).into_iter().map(|x| x as u8).collect();
    let b: Vec<u8> = lcg(14, 70).into_iter().map(|x| (x >> 8) as u8).collect();
    let out = int_ops(U8, Buffer::U8(a.clone()), Buffer::U8(b.clone()));
    let sub = out[1].as_u8().expect("u8");
    for k in 0..a.len() {
        assert_eq!(sub[k], a[k].wrapping_sub(b[k]));
    }
    assert_eq!(bits(&out[13]).len(), a.len());
}

/// Every u16 operation of [`int_kernel`] against Rust's u16 arithmetic (wrapping), on the
/// interpreter and the host (`run_elementwise` checks they agree bit for bit).
#[test]
fn u16_arithmetic_wraps() {
    let mut a: Vec<u16> = lcg(15, 70).into_iter().map(|x| x as u16).collect();
    let mut b: Vec<u16> = lcg(16, 70).into_iter().map(|x| (x >> 9) as u16).collect();
    a.extend([0, u16::MAX, 0x8000, 7]);
    b.extend([u16::MAX, 3, 0x8000, 7]);
    let out = int_ops(U16, Buffer::U16(a.clone()), Buffer::U16(b.clone()));
    let col = |i: usize| out[i].as_u16().expect("u16");
    for k in 0..a.len() {
        let (x, y) = (a[k], b[k]);
        let nz = y | 1;
        let sh = u32::from(y & 15);
        let want = [
            x.wrapping_add(y),
            x.wrapping_sub(y),
            x.wrapping_mul(y),
            x / nz,
            x % nz,
            x.min(y),
            x.max(y),
            x & y,
            x | y,
            x << sh,
            x >> sh,
            !x,
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(col(i)[k], *w, "op {i} of ({x}, {y})");
        }
        let pick = if x != y && x < y { x } else { y };
        assert_eq!(col(12)[k], pick, "select of ({x}, {y})");
        let flags = [x == y, x != y, x < y, x <= y, x > y, x >= y];
        let want: u8 = flags
            .iter()
            .enumerate()
            .map(|(i, &f)| u8::from(f) << i)
            .sum();
        assert_eq!(
            out[13].as_u8().expect("u8")[k],
            want,
            "compares of ({x}, {y})"
        );
    }
}

/// `Min(c, x)` and `Max(c, x)` with a constant `c` keep the IR's rule,
/// `if x < c { x } else { c }`, for every `x` (NaN, both zeros and infinities included), on the
/// host and in the interpreter; with a constant that is neither NaN nor a zero the select is
/// `minnum`/`maxnum`, which LLVM turns into one `min.f32`/`max.f32` on NVPTX (the quantize
/// kernels' clamp is written this way round for that).
#[test]
fn f32_min_max_of_a_constant_keep_the_ir_rule() {
    let consts = [3.0f32, -0.5, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
    let outputs = vec![F32; 2 * consts.len()];
    let kernel = elementwise("min_max_const", &[F32], &outputs, |b, xs| {
        let mut out = Vec::new();
        for c in consts {
            let cv = b.f32(c);
            out.push(b.min(cv, xs[0]));
            out.push(b.max(cv, xs[0]));
        }
        out
    });
    let mut x = special_f32();
    x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3.0, -0.5]);
    let out = run_elementwise(&kernel, vec![Buffer::F32(x.clone())], &outputs);
    for (k, &c) in consts.iter().enumerate() {
        let (mins, maxs) = (
            out[2 * k].as_f32().unwrap(),
            out[2 * k + 1].as_f32().unwrap(),
        );
        for (i, &xi) in x.iter().enumerate() {
            let min = if xi < c { xi } else { c };
            let max = if xi > c { xi } else { c };
            assert_eq!(mins[i].to_bits(), min.to_bits(), "min({c}, {xi})");
            assert_eq!(maxs[i].to_bits(), max.to_bits(), "max({c}, {xi})");
        }
    }
    let info = crate::common::info(&kernel);
    let ptx = kvq_codegen::ptx::emit(&kernel, &info, kvq_codegen::Arch::Sm90).expect("ptx");
    // 3.0 and -0.5 (0f40400000, 0fBF000000): one min.f32 and one max.f32 each, no selects.
    for c in ["0f40400000", "0fBF000000"] {
        for op in ["min.f32", "max.f32"] {
            let found = ptx.text.lines().any(|l| l.contains(op) && l.contains(c));
            assert!(found, "no {op} with {c}:\n{}", ptx.text);
        }
    }
    assert!(!ptx.text.contains("selp.f32"), "{}", ptx.text);
}

/// IEEE 754-2019 `minimum` and `maximum` (f32, f16 in f32, f64) on the interpreter and the host
/// agree with a Rust formula written from the definition (NaN when either is NaN, -0 below +0),
/// over every pair of special values; on NVPTX they are single `min.NaN` / `max.NaN`.
#[test]
fn ieee_minimum_and_maximum() {
    let outputs = vec![F32; 2];
    let kernel = elementwise("minimum_maximum", &[F32, F32], &outputs, |b, xs| {
        vec![b.minimum(xs[0], xs[1]), b.maximum(xs[0], xs[1])]
    });
    let mut values = special_f32();
    values.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        2.5,
        -2.5,
    ]);
    let (x, y): (Vec<f32>, Vec<f32>) = values
        .iter()
        .flat_map(|&a| values.iter().map(move |&b| (a, b)))
        .unzip();
    let out = run_elementwise(
        &kernel,
        vec![Buffer::F32(x.clone()), Buffer::F32(y.clone())],
        &outputs,
    );
    let (mins, maxs) = (out[0].as_f32().unwrap(), out[1].as_f32().unwrap());
    for i in 0..x.len() {
        let (a, b) = (x[i], y[i]);
        let (min, max) = if a.is_nan() || b.is_nan() {
            (f32::NAN, f32::NAN)
        } else if a == b {
            // Zeros of two signs: -0 is the smaller.
            let a_first = a.is_sign_negative();
            (if a_first { a } else { b }, if a_first { b } else { a })
        } else if a < b {
            (a, b)
        } else {
            (b, a)
        };
        for (got, want, what) in [(mins[i], min, "minimum"), (maxs[i], max, "maximum")] {
            match want.is_nan() {
                true => assert!(got.is_nan(), "{what}({a}, {b}) = {got}"),
                false => assert_eq!(got.to_bits(), want.to_bits(), "{what}({a}, {b})"),
            }
        }
    }
    let info = crate::common::info(&kernel);
    let ptx = kvq_codegen::ptx::emit(&kernel, &info, kvq_codegen::Arch::Sm90).expect("ptx");
    for op in ["min.NaN.f32", "max.NaN.f32"] {
        assert!(ptx.text.contains(op), "no {op}:\n{}", ptx.text);
    }
}
