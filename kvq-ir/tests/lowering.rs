//! Lowered kernels run by the interpreter give the reference's codes and parameters bit for bit,
//! over random schemes, schedules, shapes and data (odd token counts, groups that don't divide the
//! span, constant groups, extreme magnitudes), and on the real captures.

use half::f16;
use kvq_ir::ir::{interp, verify};
use kvq_ir::lower::io::{dequantize_with, quantize_with, ExecError};
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_ir::reference::{quantize, QuantError};
use kvq_ir::scheme::catalogue::catalogue;
use kvq_ir::{Axis, Group, GroupSize, ParamType, Scheme, Tensor3};
use proptest::prelude::*;

#[path = "common/scheme_strategy.rs"]
mod scheme_strategy;

type Run = fn(&kvq_ir::ir::Kernel, &mut [interp::Arg], u32) -> Result<(), interp::InterpError>;

fn run_interp(
    kernel: &kvq_ir::ir::Kernel,
    args: &mut [interp::Arg],
    grid: u32,
) -> Result<(), interp::InterpError> {
    verify(kernel).unwrap_or_else(|e| panic!("{e}"));
    interp::run(kernel, args, grid)
}

const RUN: Run = run_interp;

/// Quantizes with the interpreter and compares codes and parameter bits with the reference.
fn check(scheme: &Scheme, schedule: &Schedule, x: &Tensor3) -> Result<(), TestCaseError> {
    let shape = ShapeClass {
        head_dim: x.shape().dim as u32,
        input: InputType::F16,
    };
    let lowered =
        lower::quantize(scheme, shape, schedule).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dq = lower::dequantize(scheme, shape, schedule).unwrap();
    check_lowered(scheme, &lowered, &dq, x, InputType::F16)
}

/// [`check`] of given quantize and dequantize kernels.
fn check_lowered(
    scheme: &Scheme,
    lowered: &lower::Lowered,
    dq: &lower::Lowered,
    x: &Tensor3,
    input: InputType,
) -> Result<(), TestCaseError> {
    let got = quantize_with(lowered, scheme, x, input, RUN);
    let want = quantize(x, scheme);
    match (got, want) {
        (Ok(got), Ok(want)) => {
            prop_assert_eq!(&got.codes, &want.codes, "codes differ for {}", scheme);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(
                bits(&got.zero),
                bits(&want.zero),
                "zero differs for {}",
                scheme
            );
            prop_assert_eq!(
                bits(&got.scale),
                bits(&want.scale),
                "scale differs for {}",
                scheme
            );
            let x_hat =
                dequantize_with(dq, &got, RUN).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want_hat = want.dequantize().unwrap();
            prop_assert_eq!(
                bits(x_hat.data()),
                bits(want_hat.data()),
                "dequantized values differ for {}",
                scheme
            );
        }
        (Err(ExecError::Quant(got)), Err(want)) => prop_assert_eq!(got, want),
        (got, want) => prop_assert!(
            false,
            "kernel {:?} vs reference {:?}",
            got.map(|_| ()),
            want.map(|_| ())
        ),
    }
    Ok(())
}

/// Any scheme, groups of 1, 3, 4, 8 or 16 (3 only along channels: a token group of 3 becomes 4).
fn scheme_strategy() -> impl Strategy<Value = Scheme> {
    scheme_strategy::scheme_strategy(vec![1, 3, 4, 8, 16]).prop_map(|mut scheme| {
        if let (Axis::Token, Group::Size(n)) = (scheme.axis, scheme.group) {
            if n.get() == 3 {
                scheme.group = Group::Size(GroupSize::new(4).unwrap());
            }
        }
        scheme
    })
}

/// f16 data of one magnitude, with some constant channels.
fn tensor_strategy() -> impl Strategy<Value = Tensor3> {
    (
        1usize..3,
        1usize..23,
        prop::sample::select(vec![16usize, 32]),
        -14i32..16,
    )
        .prop_flat_map(|(h, t, d, exp)| {
            (
                Just([h, t, d]),
                prop::collection::vec(-1.0f32..1.0, h * t * d),
                prop::collection::vec(prop::bool::weighted(0.1), d),
                Just(2f32.powi(exp)),
            )
        })
        .prop_map(|([h, t, d], raw, constant, mag)| {
            let data = raw
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    f16::from_f32(if constant[i % d] { 0.75 * mag } else { x * mag }).to_f32()
                })
                .collect();
            Tensor3::new([h, t, d], data).unwrap()
        })
}

fn schedule_strategy() -> impl Strategy<Value = (u32, u32, u8, bool, bool)> {
    (
        prop::sample::select(vec![1u32, 3, 32, 64]),
        prop::sample::select(vec![8u32, 16]),
        prop::sample::select(vec![1u8, 2, 4, 8]),
        any::<bool>(),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn interpreter_matches_reference(scheme in scheme_strategy(), x in tensor_strategy(), (bs, ch, v, cooperative, contiguous) in schedule_strategy()) {
        let shape = ShapeClass { head_dim: x.shape().dim as u32, input: InputType::F16 };
        let mut schedule = Schedule { block_size: bs, channels: ch.max(scheme.bits.codes_per_byte() as u32), vector: v, cooperative, cluster: 1, contiguous };
        if schedule.check(&scheme, shape).is_err() {
            schedule = Schedule::gpu_default(&scheme, shape);
        }
        check(&scheme, &schedule, &x)?;
        check(&scheme, &Schedule::host_default(&scheme, shape), &x)?;
        // The GPU schedule (sm_90: thread-block clusters where they apply).
        check(&scheme, &Schedule::gpu_default(&scheme, shape), &x)?;
    }
}

/// The cluster kernel with a stage of one row a thread (its rows past the first are read again
/// from global memory), spans shorter than the cluster's runs (threads without rows) and longer
/// than all of them (runs dealt out again from the first thread), for 1-, 2- and 8-bit codes (thresholds and division) and
/// `mse` (its sums by the strands' tree, with f32 parameters, where the sums' order shows in the
/// levels' bits): the reference's bits.
#[test]
fn cluster_kernel_codes_past_its_stage() {
    let schemes = [
        "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
        "bits = 2, axis = channel, group = all, rule = minmax, order = lsb",
        "bits = 8, axis = channel, group = all, rule = shrink(0.9, center = mid), params = f32",
        "bits = 1, axis = channel, group = all, rule = mse, params = f32",
        "bits = 1, axis = channel, group = all, rule = quantile(0.2)",
        "bits = 2, axis = channel, group = all, rule = quantile(0.01), params = f32, order = lsb",
    ];
    for text in schemes {
        let scheme = Scheme::parse(text).unwrap();
        for tokens in [1usize, 3, 131, 8 * 2048 + 37] {
            let (h, d) = (1usize, 32usize);
            let data = (0..h * tokens * d)
                .map(|i| {
                    // Magnitudes from 1/16 to 1024: sums whose order shows in their bits.
                    let scale = (1u32 << (i * 31 % 15)) as f32 / 16.0;
                    let x = ((i * 7919 % 1013) as f32 / 1013.0 - 0.4) * scale;
                    f16::from_f32(x).to_f32()
                })
                .collect();
            let x = Tensor3::new([h, tokens, d], data).unwrap();
            let shape = ShapeClass {
                head_dim: d as u32,
                input: InputType::F16,
            };
            let mut plan = lower::cluster_channel::plan(&scheme, shape).unwrap();
            plan.stage = plan.block_size;
            let q = lower::cluster_channel::quantize(&scheme, shape, plan);
            let schedule = Schedule::gpu_default(&scheme, shape);
            assert_eq!(schedule.cluster, plan.cluster);
            let dq = lower::dequantize(&scheme, shape, &schedule).unwrap();
            check_lowered(&scheme, &q, &dq, &x, InputType::F16)
                .unwrap_or_else(|e| panic!("{text} {tokens}: {e}"));
        }
    }
}

/// The quantile selections (the cluster kernel's radix select, its threads' rows counted in
/// chunks of two, the one-block and host kernels' bisection; keys of 16 bits for f16 and
/// bf16, 32 for f32) on every input type, with ties, both zeros, both signs, f16's subnormals
/// and extremes, and values over many binary orders of magnitude, from a single row to spans
/// past the staged rows: the reference's parameters and codes bit for bit.
#[test]
fn cluster_quantile_selects_like_the_reference_on_every_input_type() {
    let schemes = [
        "bits = 1, axis = channel, group = all, rule = quantile(0.2), params = f32",
        "bits = 2, axis = channel, group = all, rule = quantile(0.45)",
        "bits = 4, axis = channel, group = all, rule = quantile(0), params = f32",
    ];
    // Each input type with its rounding of an f32.
    type Rounding = fn(f32) -> f32;
    let inputs: [(InputType, Rounding); 3] = [
        (InputType::F16, |x: f32| f16::from_f32(x).to_f32()),
        (InputType::BF16, |x: f32| half::bf16::from_f32(x).to_f32()),
        (InputType::F32, |x: f32| x),
    ];
    for text in schemes {
        let scheme = Scheme::parse(text).unwrap();
        for (input, round) in inputs {
            for tokens in [1usize, 2, 5, 300, 2 * 256 * 8 + 3] {
                let (h, d) = (2usize, 16usize);
                let data = (0..h * tokens * d)
                    .map(|i| {
                        let (t, c) = (i / d % tokens, i % d);
                        let x = match (c % 4, t % 7) {
                            // Ties: a few distinct values, both zeros among them.
                            (0, _) => ((t * 5 % 9) as f32 - 4.0) * 0.5,
                            (1, 0) => -0.0,
                            (1, _) => ((t * 3 % 5) as f32 - 2.0) * 0.0,
                            // f16's subnormals, smallest normals and largest values.
                            (2, _) if t % 3 == 0 => {
                                let tiny = 2f32.powi(-24) * (t % 11) as f32;
                                [tiny, -tiny, 6.1035156e-5, -65504.0, 65504.0][t % 5]
                            }
                            // Many orders of magnitude, both signs.
                            _ => {
                                let scale = (1u32 << (i * 31 % 15)) as f32 / 256.0;
                                ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * scale * 1.0001
                            }
                        };
                        round(x)
                    })
                    .collect();
                let x = Tensor3::new([h, tokens, d], data).unwrap();
                let shape = ShapeClass {
                    head_dim: d as u32,
                    input,
                };
                let mut plan = lower::cluster_channel::plan(&scheme, shape).unwrap();
                plan.stage = plan.block_size;
                // Several chunks of a thread's rows (its histogram added up after each), the
                // longest span's ending past the stage and in a short chunk.
                plan.chunk = 2;
                let cluster = lower::cluster_channel::quantize(&scheme, shape, plan);
                let schedule = Schedule::gpu_default(&scheme, shape);
                let dq = lower::dequantize(&scheme, shape, &schedule).unwrap();
                // The one-block selection (two key bits a pass) and the host's (one bit), on
                // the shorter spans (the longest is for the cluster's rows past its stage).
                let one_block = schedule.without_clusters(&scheme, shape);
                let host = Schedule::host_default(&scheme, shape);
                let others = match tokens <= 300 {
                    true => [one_block, host]
                        .map(|s| lower::quantize(&scheme, shape, &s).unwrap())
                        .to_vec(),
                    false => Vec::new(),
                };
                for (kernel, q) in ["cluster", "one block", "host"]
                    .into_iter()
                    .zip(std::iter::once(&cluster).chain(&others))
                {
                    check_lowered(&scheme, q, &dq, &x, input)
                        .unwrap_or_else(|e| panic!("{kernel} {text} {input:?} {tokens}: {e}"));
                }
            }
        }
    }
}

#[test]
fn catalogue_on_real_captures_matches_reference() {
    for file in [
        "dinov2s_astronaut_qkv_f16.safetensors",
        "smollm2_zen_qkv_f16.safetensors",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(file);
        let kv = read_layer0_k(&path);
        for (name, scheme) in catalogue() {
            let shape = ShapeClass {
                head_dim: kv.shape().dim as u32,
                input: InputType::F16,
            };
            for schedule in [
                Schedule::gpu_default(&scheme, shape),
                Schedule::gpu_default(&scheme, shape).without_clusters(&scheme, shape),
                Schedule::host_default(&scheme, shape),
            ] {
                check(&scheme, &schedule, &kv).unwrap_or_else(|e| panic!("{file} {name}: {e}"));
            }
        }
    }
}

/// Every input type: the kernels' non-finite detection (flags, probes, IEEE extremes or the
/// extremes of order keys, whose NaN keys lie beyond the infinities' on both sides) flags NaN
/// of either sign and both infinities, at the position the reference names.
#[test]
fn non_finite_input_is_reported_like_the_reference() {
    for input in [InputType::F16, InputType::BF16, InputType::F32] {
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            non_finite_value_is_reported(bad, input);
        }
    }
}

fn non_finite_value_is_reported(bad: f32, input: InputType) {
    let mut data = vec![0.5f32; 2 * 5 * 64];
    data[(5 + 3) * 64 + 2] = bad;
    let x = Tensor3::new([2, 5, 64], data).unwrap();
    for (_, scheme) in catalogue() {
        let shape = ShapeClass {
            head_dim: 64,
            input,
        };
        for schedule in [
            Schedule::gpu_default(&scheme, shape),
            Schedule::gpu_default(&scheme, shape).without_clusters(&scheme, shape),
            Schedule::host_default(&scheme, shape),
        ] {
            let lowered = lower::quantize(&scheme, shape, &schedule).unwrap();
            match quantize_with(&lowered, &scheme, &x, input, RUN) {
                Err(ExecError::Quant(QuantError::NonFinite {
                    head: 1,
                    token: 3,
                    channel: 2,
                    ..
                })) => {}
                other => panic!("{scheme} {input:?} {schedule:?}: {other:?}"),
            }
        }
    }
}

/// A whole span of the largest finite f16 values of both signs is not flagged as non-finite (the
/// kernels read non-finite input off their extremes) and codes as the reference does.
#[test]
fn largest_f16_values_are_not_flagged() {
    let (heads, tokens, dim) = (2, 300, 64);
    let data = (0..heads * tokens * dim)
        .map(|i| match i % 7 {
            0 | 3 => -65504.0,
            5 => 0.0,
            _ => 65504.0,
        })
        .collect();
    let x = Tensor3::new([heads, tokens, dim], data).unwrap();
    let shape = ShapeClass {
        head_dim: dim as u32,
        input: InputType::F16,
    };
    for (_, scheme) in catalogue() {
        let scheme = Scheme {
            params: ParamType::F32,
            ..scheme
        };
        for schedule in [
            Schedule::gpu_default(&scheme, shape),
            Schedule::host_default(&scheme, shape),
        ] {
            check(&scheme, &schedule, &x).unwrap_or_else(|e| panic!("{scheme} {schedule:?}: {e}"));
        }
    }
}

/// Layer 0 keys of a capture, read with a minimal safetensors parser (kvq-ir has no I/O deps).
fn read_layer0_k(path: &std::path::Path) -> Tensor3 {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    // "k":{"dtype":"F16","shape":[L,H,T,D],"data_offsets":[a,b]}
    let at = header.find("\"k\"").unwrap();
    let field = |name: &str| -> Vec<usize> {
        let s = &header[at..];
        let i = s.find(name).unwrap() + name.len();
        let j = s[i..].find(']').unwrap();
        s[i..i + j]
            .trim_start_matches([':', '[', ' '])
            .split(',')
            .map(|x| x.trim().parse().unwrap())
            .collect()
    };
    let shape = field("\"shape\"");
    let offsets = field("\"data_offsets\"");
    let start = 8 + n + offsets[0];
    let per_layer = shape[1] * shape[2] * shape[3];
    let data = bytes[start..start + 2 * per_layer]
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    Tensor3::new([shape[1], shape[2], shape[3]], data).unwrap()
}

/// `Schedule::check` accepts exactly the schedules whose kernels fit a block's shared memory,
/// as the verifier counts it; head_dim 0 or out of range is an error, never a panic.
#[test]
fn schedule_check_knows_shared_memory_and_shape_limits() {
    let shape = ShapeClass {
        head_dim: 128,
        input: InputType::F16,
    };
    let mut rejected = 0;
    for (_, scheme) in catalogue() {
        for block_size in [1, 32, 64, 128, 256, 512, 1024] {
            for channels in [8, 16, 32, 64, 128] {
                let s = Schedule {
                    block_size,
                    channels,
                    vector: 8,
                    cooperative: false,
                    cluster: 1,
                    contiguous: false,
                };
                let checked = s.check(&scheme, shape);
                match lower::quantize(&scheme, shape, &s) {
                    Ok(l) => {
                        let info = verify(&l.kernel).unwrap_or_else(|e| panic!("{e}"));
                        assert!(checked.is_ok());
                        assert!(u64::from(info.shared_bytes) <= verify::MAX_SHARED_BYTES);
                    }
                    Err(e) => {
                        assert!(checked.is_err(), "{e}");
                        rejected += u32::from(e.to_string().contains("shared memory"));
                    }
                }
            }
        }
    }
    assert!(rejected > 0, "no schedule hit the shared-memory limit");
    for head_dim in [0, 4, 12, 2048, u32::MAX] {
        let shape = ShapeClass {
            head_dim,
            input: InputType::F16,
        };
        for (_, scheme) in catalogue() {
            let s = Schedule::host_default(&scheme, shape);
            assert!(lower::quantize(&scheme, shape, &s).is_err(), "{head_dim}");
            let s = Schedule::gpu_default(&scheme, shape);
            assert!(lower::dequantize(&scheme, shape, &s).is_err(), "{head_dim}");
        }
    }
}
