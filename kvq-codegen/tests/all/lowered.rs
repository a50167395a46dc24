//! End to end: the quantize and dequantize kernels that `kvq_ir::lower` makes for every catalogue
//! scheme, compiled for the host, give the reference's codes, parameters and dequantized values
//! bit for bit; their PTX assembles without spills or fused/approximate arithmetic.

use kvq_codegen::host::{self, HostArg};
use kvq_codegen::{ptx, Arch, CodegenError};
use kvq_ir::ir::interp::Arg;
use kvq_ir::ir::Kernel;
use kvq_ir::lower::io::{dequantize_with, quantize_with};
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_ir::reference::quantize;
use kvq_ir::scheme::catalogue::catalogue;
use kvq_ir::Tensor3;

use crate::common::{host_arg, info, lcg};

/// Compiles `kernel` for the host and launches it on `args`.
fn run_host(kernel: &Kernel, args: &mut [Arg], grid: u32) -> Result<(), CodegenError> {
    let compiled = host::compile(kernel)?;
    let mut host_args: Vec<HostArg<'_>> = kernel
        .params
        .iter()
        .zip(args.iter_mut())
        .map(|(p, a)| host_arg(p, a))
        .collect();
    // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled.launch(&mut host_args, grid) }
}

/// K-like data: per-channel offsets and scales, a few outliers, values exact in f16 and bf16.
fn data(heads: usize, tokens: usize, dim: usize) -> Tensor3 {
    let noise = lcg(21, heads * tokens * dim);
    let values = noise
        .iter()
        .enumerate()
        .map(|(k, &w)| {
            let c = k % dim;
            let x = (w as f32 / u32::MAX as f32 - 0.5) * (1.0 + c as f32 / 8.0)
                + (c as f32 - 20.0) * 0.25;
            let x = if w % 97 == 0 { x * 30.0 } else { x };
            half::bf16::from_f32(x).to_f32()
        })
        .collect();
    Tensor3::new([heads, tokens, dim], values).expect("tensor")
}

#[test]
fn catalogue_kernels_match_the_reference_on_the_host() {
    let x = data(2, 45, 64);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (name, scheme) in catalogue() {
        let want = quantize(&x, &scheme).expect("reference quantizes");
        let want_hat = want.dequantize().expect("reference dequantizes");
        for input in [InputType::F16, InputType::BF16, InputType::F32] {
            let shape = ShapeClass {
                head_dim: 64,
                input,
            };
            for schedule in [
                Schedule::gpu_default(&scheme, shape),
                Schedule::host_default(&scheme, shape),
            ] {
                let what = format!("{name} {} {schedule:?}", input.name());
                let q = lower::quantize(&scheme, shape, &schedule).expect("lowers");
                let got = quantize_with(&q, &scheme, &x, input, run_host)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(got.codes, want.codes, "{what}: codes");
                assert_eq!(bits(&got.zero), bits(&want.zero), "{what}: zero");
                assert_eq!(bits(&got.scale), bits(&want.scale), "{what}: scale");
                let dq = lower::dequantize(&scheme, shape, &schedule).expect("lowers");
                let x_hat =
                    dequantize_with(&dq, &got, run_host).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    bits(x_hat.data()),
                    bits(want_hat.data()),
                    "{what}: dequantized"
                );
            }
        }
    }
}

/// The cluster kernel compiled for the host (a cluster's blocks run one after the other between
/// cluster barriers, each on its own shared arrays), with a stage shorter than the blocks' slices
/// and spans shorter than the cluster: the reference's bits.
#[test]
fn cluster_kernels_match_the_reference_on_the_host() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for text in [
        "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
        "bits = 2, axis = channel, group = all, rule = minmax, order = lsb",
        "bits = 8, axis = channel, group = all, rule = shrink(0.9, center = mid), params = f32",
    ] {
        let scheme = kvq_ir::Scheme::parse(text).expect("scheme");
        for tokens in [1, 13, 131] {
            let x = data(2, tokens, 32);
            let want = quantize(&x, &scheme).expect("reference quantizes");
            for input in [InputType::F16, InputType::F32] {
                let shape = ShapeClass {
                    head_dim: 32,
                    input,
                };
                let mut plan = lower::cluster_channel::plan(&scheme, shape).expect("plan");
                plan.stage = 2;
                let q = lower::cluster_channel::quantize(&scheme, shape, plan);
                let got = quantize_with(&q, &scheme, &x, input, run_host)
                    .unwrap_or_else(|e| panic!("{text} {tokens}: {e}"));
                assert_eq!(got.codes, want.codes, "{text} {tokens}: codes");
                assert_eq!(bits(&got.zero), bits(&want.zero), "{text} {tokens}: zero");
                assert_eq!(bits(&got.scale), bits(&want.scale), "{text} {tokens}");
            }
        }
    }
}

#[test]
fn catalogue_kernels_emit_clean_ptx() {
    for (name, scheme) in catalogue() {
        for input in [InputType::F16, InputType::BF16] {
            let shape = ShapeClass {
                head_dim: 128,
                input,
            };
            for arch in [Arch::Sm80, Arch::Sm90] {
                let schedule = match arch {
                    Arch::Sm80 => {
                        Schedule::gpu_default(&scheme, shape).without_clusters(&scheme, shape)
                    }
                    Arch::Sm90 => Schedule::gpu_default(&scheme, shape),
                };
                for lowered in [
                    lower::quantize(&scheme, shape, &schedule).expect("lowers"),
                    lower::dequantize(&scheme, shape, &schedule).expect("lowers"),
                ] {
                    let kernel = &lowered.kernel;
                    let ptx = ptx::emit(kernel, &info(kernel), arch)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    crate::ptx::check_ptx(kernel, &ptx);
                    let cluster = format!(".reqnctapercluster {}, 1, 1", kernel.cluster_size);
                    assert_eq!(
                        ptx.text.contains(&cluster),
                        kernel.cluster_size > 1,
                        "{name}"
                    );
                    if kernel.cluster_size > 1 {
                        // Cluster kernels need sm_90: a typed error on sm_80, not bad PTX.
                        let err = ptx::emit(kernel, &info(kernel), Arch::Sm80).unwrap_err();
                        assert!(matches!(err, CodegenError::Unsupported { .. }), "{err}");
                        for needed in ["barrier.cluster.arrive", "barrier.cluster.wait", "mapa"] {
                            assert!(ptx.text.contains(needed), "{name}: no {needed}");
                        }
                    }
                }
            }
        }
    }
}

/// The cooperative kernels of the GPU schedule: quantize with a min/max rule on the token axis or
/// with token groups on the channel axis, and every dequantize, split rows across a warp's lanes (at head_dim 128 they hold a lane's few channels,
/// not a row: the one-thread-per-row token kernel needed about 250 registers); channel-axis
/// group = all quantize runs in clusters on sm_90 (extremes by warp shuffles, mse's sums by the
/// strands' tree, the quantile rule's radix select); on sm_80 a min/max rule reduces extremes by
/// warp shuffles and the quantile rule selects its order statistics with the whole block.
/// ptxas fits a block in one
/// SM's 65,536 registers, with no stack (local memory) and no spills.
#[test]
fn cooperative_gpu_kernels_split_rows_across_lanes() {
    let shape = ShapeClass {
        head_dim: 128,
        input: InputType::F16,
    };
    let ptxas = kvq_codegen::ptxas::find();
    for (name, scheme) in catalogue() {
        let schedule = Schedule::gpu_default(&scheme, shape);
        assert!(schedule.cooperative && schedule.block_size % 32 == 0);
        let q = lower::quantize(&scheme, shape, &schedule).expect("lowers");
        let dq = lower::dequantize(&scheme, shape, &schedule).expect("lowers");
        let min_max = !matches!(scheme.rule, kvq_ir::Rule::Quantile(_) | kvq_ir::Rule::Mse);
        let lanes =
            min_max && (scheme.axis == kvq_ir::Axis::Token || scheme.group != kvq_ir::Group::All);
        assert_eq!(
            q.kernel.name.contains("quantize_lanes"),
            lanes,
            "{name}: {}",
            q.kernel.name
        );
        assert!(dq.kernel.name.contains("dequantize_lanes"), "{name}");
        let channel_min_max = scheme.axis == kvq_ir::Axis::Channel
            && scheme.group == kvq_ir::Group::All
            && !matches!(scheme.rule, kvq_ir::Rule::Quantile(_) | kvq_ir::Rule::Mse);
        // sm_90: clusters of blocks per column (every rule); sm_80: warp reductions in a block
        // per column (min/max rules).
        let channel_cluster =
            scheme.axis == kvq_ir::Axis::Channel && scheme.group == kvq_ir::Group::All;
        assert_eq!(
            q.kernel.name.contains("quantize_cluster"),
            channel_cluster,
            "{name}"
        );
        let sm80 = schedule.without_clusters(&scheme, shape);
        let q80 = lower::quantize(&scheme, shape, &sm80).expect("lowers");
        assert_eq!(
            q80.kernel.name.contains("quantize_warps"),
            channel_min_max,
            "{name}"
        );
        let channel_quantile = scheme.axis == kvq_ir::Axis::Channel
            && scheme.group == kvq_ir::Group::All
            && matches!(scheme.rule, kvq_ir::Rule::Quantile(_));
        assert_eq!(
            q80.kernel.name.contains("quantize_select"),
            channel_quantile,
            "{name}"
        );
        let mut checked = vec![dq];
        if lanes || channel_cluster {
            checked.push(q);
        }
        if channel_min_max || channel_quantile {
            checked.push(q80);
        }
        for lowered in checked {
            let kernel = &lowered.kernel;
            let Some(ptxas) = &ptxas else { continue };
            let ptx = ptx::emit(kernel, &info(kernel), Arch::Sm90).expect("ptx");
            let report = kvq_codegen::ptxas::assemble(ptxas, &ptx.text, Arch::Sm90, &kernel.name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let block_registers = u64::from(report.registers) * u64::from(kernel.block_size);
            assert!(
                block_registers <= 65536 && report.stack_frame == 0 && report.spill_stores == 0,
                "{name} {}: {report}",
                kernel.name
            );
        }
    }
}
