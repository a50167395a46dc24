//! Property tests of the reference quantizer on random shapes, odd sizes, constant groups and
//! extreme magnitudes, against the invariants of SPEC.md sections 2-3.

use kvq::reference::pack::{pack_row, unpack_row};
use kvq::reference::quantize::{groups, param_shape};
use kvq::reference::{quantize, QuantError};
use kvq::{Axis, BitOrder, Bits, Group, GroupSize, ParamType, Quantile, Rule, Scheme, Tensor3};
use proptest::prelude::*;

fn scheme_strategy() -> impl Strategy<Value = Scheme> {
    crate::strategies::scheme_strategy((1..12).collect())
}

/// A tensor with odd token counts, some constant channels and rows, and values of one magnitude.
fn tensor_strategy() -> impl Strategy<Value = Tensor3> {
    (
        1usize..3,
        1usize..40,
        prop::sample::select(vec![8usize, 16, 24, 64]),
        -20i32..12,
    )
        .prop_flat_map(|(h, t, d, exp)| {
            let n = h * t * d;
            let mag = 2f32.powi(exp);
            (
                Just([h, t, d]),
                prop::collection::vec(-1.0f32..1.0, n),
                prop::collection::vec(prop::bool::weighted(0.1), d),
                Just(mag),
            )
        })
        .prop_map(|([h, t, d], raw, constant_channel, mag)| {
            let data = raw
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    if constant_channel[i % d] {
                        0.25 * mag
                    } else {
                        x * mag
                    }
                })
                .collect();
            Tensor3::new([h, t, d], data).unwrap()
        })
}

/// A group size that divides head_dim for axis = token schemes, so every drawn scheme applies.
fn fit(mut scheme: Scheme, dim: usize) -> Scheme {
    if let (Axis::Token, Group::Size(n)) = (scheme.axis, scheme.group) {
        let divisor = (1..=n.get()).rev().find(|k| dim % k == 0).unwrap();
        scheme.group = Group::Size(GroupSize::new(divisor as u32).unwrap());
    }
    scheme
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn codes_and_dequantized_values_lie_in_range(scheme in scheme_strategy(), x in tensor_strategy()) {
        let scheme = fit(scheme, x.shape().dim);
        let span = match quantize(&x, &scheme) {
            Ok(span) => span,
            // Large magnitudes may not fit f16 parameters; that must be the only failure.
            Err(QuantError::ParamOverflow { params, .. }) => {
                prop_assert_eq!(params, ParamType::F16);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        span.validate().unwrap();
        let codes = span.unpack_codes();
        let max = scheme.bits.max_code();
        prop_assert!(codes.iter().all(|&c| c <= max));
        let x_hat = span.dequantize().unwrap();
        let mut covered = vec![0u8; x.shape().len()];
        for cell in groups(&scheme, x.shape()) {
            let (z, s) = (span.zero[cell.param], span.scale[cell.param]);
            prop_assert!(s >= 0.0);
            let top = z + max as f32 * s;
            for t in cell.tokens.0..cell.tokens.1 {
                for c in cell.channels.0..cell.channels.1 {
                    let i = x.shape().index(cell.head, t, c);
                    covered[i] += 1;
                    let v = x_hat.data()[i];
                    prop_assert!(v >= z && v <= top, "{} outside [{}, {}]", v, z, top);
                    if s == 0.0 {
                        prop_assert_eq!(codes[i], 0);
                    }
                }
            }
        }
        // The groups tile the span: every element belongs to exactly one group.
        prop_assert!(covered.iter().all(|&n| n == 1));
        let [ph, pr, pc] = param_shape(&scheme, x.shape());
        prop_assert_eq!(span.zero.len(), ph * pr * pc);
    }

    #[test]
    fn minmax_f32_error_is_at_most_half_a_step(x in tensor_strategy(), bits in prop::sample::select(Bits::ALL.to_vec())) {
        let scheme = Scheme { bits, axis: Axis::Channel, group: Group::Size(GroupSize::new(7).unwrap()),
            rule: Rule::MinMax, params: ParamType::F32, order: BitOrder::Msb };
        let span = quantize(&x, &scheme).unwrap();
        let x_hat = span.dequantize().unwrap();
        for cell in groups(&scheme, x.shape()) {
            let s = span.scale[cell.param] as f64;
            for t in cell.tokens.0..cell.tokens.1 {
                let i = x.shape().index(cell.head, t, cell.channels.0);
                let err = (x.data()[i] as f64 - x_hat.data()[i] as f64).abs();
                let bound = 0.5 * s * (1.0 + 1e-5) + 1e-6 * (x.data()[i] as f64).abs();
                prop_assert!(err <= bound, "error {} > half step {}", err, s / 2.0);
            }
        }
    }

    #[test]
    fn packed_rows_round_trip(bits in prop::sample::select(Bits::ALL.to_vec()), lsb in any::<bool>(), seed in prop::collection::vec(any::<u8>(), 1..20)) {
        let order = if lsb { BitOrder::Lsb } else { BitOrder::Msb };
        let per = bits.codes_per_byte();
        let codes: Vec<u8> = seed.iter().flat_map(|&s| (0..per).map(move |j| s.rotate_left(j as u32) & bits.max_code())).collect();
        let mut packed = vec![0u8; codes.len() / per];
        pack_row(&codes, bits, order, &mut packed);
        let mut back = vec![0u8; codes.len()];
        unpack_row(&packed, bits, order, &mut back);
        prop_assert_eq!(back, codes);
    }

    #[test]
    fn quantile_zero_equals_minmax(x in tensor_strategy(), bits in prop::sample::select(Bits::ALL.to_vec())) {
        let minmax = Scheme { bits, axis: Axis::Channel, group: Group::All, rule: Rule::MinMax,
            params: ParamType::F32, order: BitOrder::Msb };
        let q0 = Scheme { rule: Rule::Quantile(Quantile::new(0.0).unwrap()), ..minmax };
        let a = quantize(&x, &minmax).unwrap();
        let b = quantize(&x, &q0).unwrap();
        prop_assert_eq!(a.codes, b.codes);
        prop_assert_eq!(a.zero, b.zero);
        prop_assert_eq!(a.scale, b.scale);
    }
}

#[test]
fn constant_group_gets_zero_scale_and_code_zero() {
    let x = Tensor3::new([1, 5, 8], vec![3.3; 40]).unwrap();
    let scheme = Scheme::parse("bits = 2, axis = channel, group = all, rule = minmax").unwrap();
    let span = quantize(&x, &scheme).unwrap();
    assert!(span.scale.iter().all(|&s| s == 0.0));
    assert!(span
        .zero
        .iter()
        .all(|&z| z == half::f16::from_f32(3.3).to_f32()));
    assert!(span.codes.iter().all(|&c| c == 0));
}

#[test]
fn last_partial_token_group_has_its_own_parameters() {
    // 5 tokens in groups of 2: groups {0,1}, {2,3}, {4}; token 4 alone quantizes exactly.
    let data: Vec<f32> = (0..5)
        .flat_map(|t| std::iter::repeat_n(t as f32, 8))
        .collect();
    let x = Tensor3::new([1, 5, 8], data).unwrap();
    let scheme =
        Scheme::parse("bits = 1, axis = channel, group = 2, rule = minmax, params = f32").unwrap();
    let span = quantize(&x, &scheme).unwrap();
    assert_eq!(span.zero.len(), 3 * 8);
    assert_eq!(&span.zero[16..24], &[4.0; 8]);
    assert_eq!(&span.scale[16..24], &[0.0; 8]);
    assert_eq!(&span.zero[0..8], &[0.0; 8]);
    assert_eq!(&span.scale[8..16], &[1.0; 8]);
    assert_eq!(span.dequantize().unwrap().data(), x.data());
}

#[test]
fn non_finite_input_names_its_position_and_stores_nothing() {
    let mut data = vec![0.5f32; 2 * 3 * 8];
    data[(3 + 2) * 8 + 6] = f32::INFINITY;
    let x = Tensor3::new([2, 3, 8], data).unwrap();
    let scheme = Scheme::parse("bits = 1, axis = channel, group = all, rule = minmax").unwrap();
    let err = quantize(&x, &scheme).unwrap_err();
    assert_eq!(
        err,
        QuantError::NonFinite {
            head: 1,
            token: 2,
            channel: 6,
            value: f32::INFINITY
        }
    );
    assert_eq!(
        err.to_string(),
        "non-finite value inf at head 1, token 2, channel 6"
    );
}

#[test]
fn f16_overflow_suggests_f32_params() {
    // 1 bit over [-60000, 60000]: scale 120000 exceeds f16; with 2 bits (scale 40000) it fits.
    let x = Tensor3::new([1, 2, 8], [-60000.0, 60000.0].repeat(8)).unwrap();
    let two_bit = Scheme::parse("bits = 2, axis = token, group = all, rule = minmax").unwrap();
    assert!(quantize(&x, &two_bit).is_ok());
    let scheme = Scheme {
        bits: Bits::B1,
        ..two_bit
    };
    let err = quantize(&x, &scheme).unwrap_err();
    assert!(err.to_string().contains("use params = f32"), "{err}");
    let f32_scheme = Scheme {
        params: ParamType::F32,
        ..scheme
    };
    assert!(quantize(&x, &f32_scheme).is_ok());
}

#[test]
fn odd_shapes_are_typed_errors() {
    let x = Tensor3::new([1, 3, 12], vec![0.0; 36]).unwrap();
    let one_bit = Scheme::parse("bits = 1, axis = channel, group = all, rule = minmax").unwrap();
    assert!(matches!(
        quantize(&x, &one_bit),
        Err(QuantError::RowNotByteAligned {
            dim: 12,
            bits: 1,
            multiple: 8
        })
    ));
    let tok = Scheme::parse("bits = 4, axis = token, group = 5, rule = minmax").unwrap();
    assert!(matches!(
        quantize(&x, &tok),
        Err(QuantError::GroupDoesNotDivide { group: 5, dim: 12 })
    ));
}

#[test]
fn hand_computed_two_bit_codes_msb() {
    // One token group over 4 tokens of channel 0: values 0, 1, 2, 3 -> zero 0, scale 1, codes 0..3.
    let mut data = vec![0.0f32; 4 * 4];
    for t in 0..4 {
        data[t * 4] = t as f32;
    }
    let x = Tensor3::new([1, 4, 4], data).unwrap();
    let scheme = Scheme::parse("bits = 2, axis = channel, group = all, rule = minmax").unwrap();
    let span = quantize(&x, &scheme).unwrap();
    // Row t has code t in channel 0 (the top two bits) and 0 elsewhere.
    assert_eq!(
        span.codes,
        vec![0b00_000000, 0b01_000000, 0b10_000000, 0b11_000000]
    );
    let lsb = quantize(
        &x,
        &Scheme {
            order: BitOrder::Lsb,
            ..scheme
        },
    )
    .unwrap();
    assert_eq!(lsb.codes, vec![0, 1, 2, 3]);
}
