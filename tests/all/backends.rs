//! Generated host code against the reference, bit for bit, over random schemes, shapes and data
//! (odd token counts, groups that don't divide the span, constant channels, extreme magnitudes),
//! and on the real captures; the interpreter is covered the same way in kvq-ir's tests.

use half::f16;
use kvq::backend::{self, Backend, BackendError};
use kvq::reference::{quantize, QuantError};
use kvq::{Axis, Group, Scheme, Tensor3};
use kvq_ir::lower::InputType;
use kvq_ir::scheme::catalogue::catalogue;
use kvq_runtime::KvFile;
use proptest::prelude::*;

use crate::fixtures::{dinov2, smollm2};

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check(scheme: &Scheme, x: &Tensor3, input: InputType) -> Result<(), TestCaseError> {
    let got = backend::quantize(x, input, scheme, Backend::Host);
    match (got, quantize(x, scheme)) {
        (Ok(got), Ok(want)) => {
            prop_assert_eq!(&got.codes, &want.codes, "codes of {}", scheme);
            prop_assert_eq!(
                bits_of(&got.zero),
                bits_of(&want.zero),
                "zero of {}",
                scheme
            );
            prop_assert_eq!(
                bits_of(&got.scale),
                bits_of(&want.scale),
                "scale of {}",
                scheme
            );
            let back = backend::dequantize(&got, input, Backend::Host)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                bits_of(back.data()),
                bits_of(want.dequantize().unwrap().data())
            );
        }
        (Err(BackendError::Quant(got)), Err(want)) => prop_assert_eq!(got, want),
        (got, want) => prop_assert!(
            false,
            "host {:?} vs reference {:?}",
            got.map(|_| ()),
            want.map(|_| ())
        ),
    }
    Ok(())
}

fn scheme_strategy() -> impl Strategy<Value = Scheme> {
    crate::strategies::scheme_strategy(vec![1, 4, 5, 8, 16]).prop_map(|mut scheme| {
        // axis = token needs a group dividing head_dim (32 here).
        if let (Axis::Token, Group::Size(n)) = (scheme.axis, scheme.group) {
            if 32 % n.get() != 0 {
                scheme.group = Group::All;
            }
        }
        scheme
    })
}

fn tensor_strategy() -> impl Strategy<Value = Tensor3> {
    (1usize..4, 1usize..40, -14i32..16)
        .prop_flat_map(|(h, t, exp)| {
            (
                Just([h, t, 32]),
                prop::collection::vec(-1.0f32..1.0, h * t * 32),
                prop::collection::vec(prop::bool::weighted(0.1), 32),
                Just(2f32.powi(exp)),
            )
        })
        .prop_map(|(shape, raw, constant, mag)| {
            let data = raw
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    f16::from_f32(if constant[i % 32] {
                        -0.5 * mag
                    } else {
                        x * mag
                    })
                    .to_f32()
                })
                .collect();
            Tensor3::new(shape, data).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn host_code_matches_reference(scheme in scheme_strategy(), x in tensor_strategy(), f32_input in any::<bool>()) {
        check(&scheme, &x, if f32_input { InputType::F32 } else { InputType::F16 })?;
    }
}

/// Quantile ranges over columns longer than the property tests' (up to 1,031 tokens): many
/// ties, negative and positive zeros, both signs, every input type, token groups of the whole
/// span and of 32 with a partial last group, and token-axis rows.
#[test]
fn quantile_selection_on_long_columns_matches_reference() {
    let mut s = 0x9E3779B97F4A7C15u64;
    for tokens in [256, 1031] {
        let data: Vec<f32> = (0..2 * tokens * 64)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match s % 5 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => ((s >> 33) % 7) as f32 - 3.0,
                    _ => ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (i % 64 + 1) as f32,
                }
            })
            .collect();
        // The values each input type holds exactly (what a caller of that type passes).
        let rounded = |input: InputType| -> Tensor3 {
            let exact = data.iter().map(|&v| match input {
                InputType::F16 => f16::from_f32(v).to_f32(),
                InputType::BF16 => half::bf16::from_f32(v).to_f32(),
                InputType::F32 => v,
            });
            Tensor3::new([2, tokens, 64], exact.collect()).unwrap()
        };
        for text in [
            "bits = 1, axis = channel, group = all, rule = quantile(0.15)",
            "bits = 2, axis = channel, group = all, rule = quantile(0.01)",
            "bits = 2, axis = channel, group = 32, rule = quantile(0.1)",
            "bits = 4, axis = token, group = all, rule = quantile(0.3)",
        ] {
            let scheme = Scheme::parse(text).unwrap();
            for input in [InputType::F16, InputType::BF16, InputType::F32] {
                check(&scheme, &rounded(input), input).unwrap();
            }
        }
    }
}

/// mse ranges where values fall exactly on a round's threshold (a value equal to `t` counts
/// above it), in every channel of a column the host codes in one pass: each channel holds three
/// integers a < b < c equally often (its own pattern), so the first round's threshold is b.
#[test]
fn mse_thresholds_on_data_values_match_reference() {
    let (tokens, dim) = (300usize, 64usize);
    let data: Vec<f32> = (0..2 * tokens * dim)
        .map(|i| {
            let (t, c) = ((i / dim) % tokens, i % dim);
            [0.0, 1.0, 2.0][(t + c) % 3] * (1 + c % 3) as f32 - (c % 4) as f32
        })
        .collect();
    let x = Tensor3::new([2, tokens, dim], data).unwrap();
    let scheme = Scheme::parse("bits = 1, axis = channel, group = all, rule = mse").unwrap();
    for input in [InputType::F16, InputType::BF16, InputType::F32] {
        check(&scheme, &x, input).unwrap();
    }
}

/// mse over spans around and past one cycle of its sums' strands (`MSE_STRANDS` runs of
/// `MSE_RUN` = 16,384 rows: a strand's runs, short last runs, a tree whose fold meets subtrees of
/// several levels), with f32 parameters and values of
/// many magnitudes, so that a sum taken in another order shows in the levels' bits.
#[test]
fn mse_sums_by_strands_on_long_spans_match_reference() {
    let dim = 32usize;
    let scheme =
        Scheme::parse("bits = 1, axis = channel, group = all, rule = mse, params = f32").unwrap();
    for tokens in [2049usize, 16383, 16384, 2 * 16384 + 37] {
        let data: Vec<f32> = (0..tokens * dim)
            .map(|i| {
                let scale = (1u32 << (i * 31 % 15)) as f32 / 16.0;
                f16::from_f32(((i * 7919 % 1013) as f32 / 1013.0 - 0.4) * scale).to_f32()
            })
            .collect();
        let x = Tensor3::new([1, tokens, dim], data).unwrap();
        for input in [InputType::F16, InputType::F32] {
            check(&scheme, &x, input).unwrap_or_else(|e| panic!("{tokens} {input:?}: {e}"));
        }
    }
}

/// mse where sums meet signed zeros: channels of -0.0 only, of values that cancel within a
/// strand (1, -1, ...), of -0.0 between them, and of f16's smallest subnormals, with f32 and
/// f16 parameters: the reference's bits (a sum's zero terms and signed zeros as SPEC.md's
/// tree adds them).
#[test]
fn mse_sums_with_signed_zeros_and_cancelling_values_match_reference() {
    let (tokens, dim) = (1000usize, 32usize);
    let data: Vec<f32> = (0..tokens * dim)
        .map(|i| {
            let (t, c) = (i / dim, i % dim);
            match c % 4 {
                0 => -0.0,
                1 => [1.0, -1.0][t % 2] * (1 + c / 4) as f32,
                2 => [-0.0, 2.5, -0.0, -2.5][t % 4],
                // f16's smallest subnormals: exact in every input type.
                _ => [1.0, -1.0, 0.0, -0.0, 2.0][t % 5] * 2f32.powi(-24),
            }
        })
        .collect();
    let x = Tensor3::new([1, tokens, dim], data).unwrap();
    for params in ["f32", "f16"] {
        let scheme = Scheme::parse(&format!(
            "bits = 1, axis = channel, group = all, rule = mse, params = {params}"
        ))
        .unwrap();
        for input in [InputType::F16, InputType::F32] {
            check(&scheme, &x, input).unwrap_or_else(|e| panic!("{params} {input:?}: {e}"));
        }
    }
}

/// Token groups long enough for the host's radix selection (`SelectRank` over 512 elements or
/// more) beside a short last group (bisection), every input type, against the reference.
#[test]
fn quantile_radix_selection_on_long_token_groups_matches_reference() {
    let (tokens, dim) = (1300usize, 32usize);
    let mut s = 0x2545F4914F6CDD1Du64;
    let data: Vec<f32> = (0..tokens * dim)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            match s % 4 {
                0 => -0.0,
                1 => ((s >> 33) % 5) as f32 - 2.0,
                _ => ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (i % dim + 1) as f32,
            }
        })
        .collect();
    let scheme =
        Scheme::parse("bits = 2, axis = channel, group = 600, rule = quantile(0.1)").unwrap();
    for input in [InputType::F16, InputType::BF16, InputType::F32] {
        let exact = data.iter().map(|&v| match input {
            InputType::F16 => f16::from_f32(v).to_f32(),
            InputType::BF16 => half::bf16::from_f32(v).to_f32(),
            InputType::F32 => v,
        });
        let x = Tensor3::new([1, tokens, dim], exact.collect()).unwrap();
        check(&scheme, &x, input).unwrap();
    }
}

#[test]
fn host_code_matches_reference_on_real_captures() {
    for path in [dinov2(), smollm2()] {
        let file = KvFile::load(&path).unwrap();
        for layer in &file.layers {
            for (name, scheme) in catalogue() {
                for x in [&layer.k, &layer.v] {
                    check(&scheme, x, InputType::F16)
                        .unwrap_or_else(|e| panic!("{} {name}: {e}", path.display()));
                }
            }
        }
    }
}

#[test]
fn host_code_reports_non_finite_input_like_the_reference() {
    let mut data = vec![0.25f32; 3 * 7 * 32];
    data[(2 * 7 + 6) * 32 + 31] = f32::NEG_INFINITY;
    let x = Tensor3::new([3, 7, 32], data).unwrap();
    for (_, scheme) in catalogue()
        .into_iter()
        .filter(|(_, s)| !matches!(s.group, Group::Size(n) if n.get() > 32))
    {
        match backend::quantize(&x, InputType::F32, &scheme, Backend::Host) {
            Err(BackendError::Quant(QuantError::NonFinite {
                head: 2,
                token: 6,
                channel: 31,
                ..
            })) => {}
            other => panic!("{scheme}: {other:?}"),
        }
    }
}
