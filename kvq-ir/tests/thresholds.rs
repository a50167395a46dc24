//! The direct code thresholds of the GPU lanes kernels (`kvq_ir::lower::emit::Coding::per_group`),
//! checked exhaustively against the reference's code formula: for every positive finite f16
//! scale `s` and every level `k` of 1- and 2-bit codes, the smallest f32 difference `d = x - zero`
//! whose code reaches `k` is `g = (k - 0.5) * s` (one f32 multiplication) or the next float
//! above `g`, and it is `g` exactly when `g`'s own code reaches `k`.

use kvq_ir::reference::range::code;

/// f32's order as a signed integer (-0 below +0).
fn order(x: f32) -> i64 {
    let b = x.to_bits() as i32;
    i64::from(if b < 0 { i32::MIN - b } else { b })
}

fn from_order(o: i64) -> f32 {
    let o = o as i32;
    f32::from_bits((if o < 0 { i32::MIN - o } else { o }) as u32)
}

/// The smallest finite `d` with `code(d) >= k` under zero 0 and scale `s`.
fn smallest_reaching(s: f32, max_code: u8, k: u8) -> Option<f32> {
    smallest_x_reaching(0.0, s, max_code, k)
}

#[test]
fn direct_thresholds() {
    let mut checked = 0u32;
    for bits in 1u16..0x7C00 {
        let s = half::f16::from_bits(bits).to_f32();
        assert!(s > 0.0 && s.is_finite());
        for max_code in [1u8, 3] {
            for k in 1..=max_code {
                let t = smallest_reaching(s, max_code, k).expect("a reachable level");
                let g = (f32::from(k) - 0.5) * s;
                let next = f32::from_bits(g.to_bits() + 1);
                let direct = if code(g, 0.0, s, max_code) >= k {
                    g
                } else {
                    next
                };
                assert_eq!(
                    t.to_bits(),
                    direct.to_bits(),
                    "scale {s:e} (f16 bits {bits:#06x}), level {k} of {max_code}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, (0x7C00 - 1) * 4);
}

/// The GPU token-axis kernel (which codes by these thresholds) against the reference on rows
/// built to put differences exactly on every threshold candidate: each group of 32 channels
/// holds 0 and `m` (so zero = 0 and scale = P(m / L)), then `g_k`, the float below it and the
/// float above it for every level `k`, the rest filled with `m / 2`. 512 rows, `m` over f16
/// values of many magnitudes; the last rows' groups are flat at values just above and below an
/// f16 value (scale 0, differences of either sign from the rounded zero: every code 0). Random
/// data almost never lands on a threshold, so the property tests alone would not see a
/// threshold one float off.
#[test]
fn token_kernel_codes_differences_on_the_thresholds() {
    use kvq_ir::lower::io::quantize_with;
    use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
    use kvq_ir::{Axis, BitOrder, Bits, Group, GroupSize, ParamType, Rule, Scheme, Tensor3};

    const GROUP: usize = 32;
    const DIM: usize = 64;
    const ROWS: usize = 512;
    for bits in [Bits::B1, Bits::B2] {
        let scheme = Scheme {
            bits,
            axis: Axis::Token,
            group: Group::Size(GroupSize::new(GROUP as u32).unwrap()),
            rule: Rule::MinMax,
            params: ParamType::F16,
            order: BitOrder::Msb,
        };
        let levels = scheme.bits.max_code();
        let shape = ShapeClass {
            head_dim: DIM as u32,
            input: InputType::F32,
        };
        let schedule = Schedule::gpu_default(&scheme, shape);
        let lowered = lower::quantize(&scheme, shape, &schedule).unwrap();
        let mut data = Vec::with_capacity(ROWS * DIM);
        for r in 0..ROWS * DIM / GROUP {
            // m: f16 values from about 6e-5 to 6e4, varied mantissas.
            let m = half::f16::from_bits(0x0400 + (r as u16).wrapping_mul(0x2F1) % 0x7400).to_f32();
            let s = half::f16::from_f32(m / f32::from(levels)).to_f32();
            let mut group = vec![0.0f32, m];
            for k in 1..=levels {
                let g = (f32::from(k) - 0.5) * s;
                let below = f32::from_bits(g.to_bits() - 1);
                let above = f32::from_bits(g.to_bits() + 1);
                group.extend([g, below, above].iter().map(|&d| d.clamp(0.0, m)));
            }
            group.resize(GROUP, m / 2.0);
            data.extend(group);
        }
        for (i, v) in [1.0f32 + 1e-6, 1.0 - 1e-6, 3.0e4 + 1.0, 6.1e-5]
            .iter()
            .enumerate()
        {
            let row = ROWS - 1 - i;
            data[row * DIM..(row + 1) * DIM].fill(*v);
        }
        let x = Tensor3::new([1, ROWS, DIM], data).unwrap();
        let got = quantize_with(&lowered, &scheme, &x, InputType::F32, interp_run).unwrap();
        let want = kvq_ir::reference::quantize(&x, &scheme).unwrap();
        let scale_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(scale_bits(&got.scale), scale_bits(&want.scale), "{scheme}");
        assert_eq!(got.codes, want.codes, "{scheme}");
    }
}

fn interp_run(
    kernel: &kvq_ir::ir::Kernel,
    args: &mut [kvq_ir::ir::interp::Arg],
    grid: u32,
) -> Result<(), kvq_ir::ir::interp::InterpError> {
    kvq_ir::ir::verify(kernel).unwrap_or_else(|e| panic!("{e}"));
    kvq_ir::ir::interp::run(kernel, args, grid)
}

/// The smallest finite `x` whose reference code under (`zero`, `scale`) reaches `k` (the code
/// is monotone in `x`), by bisection over the finite floats' order; `None` if even f32::MAX's
/// code is below `k`.
fn smallest_x_reaching(zero: f32, scale: f32, max_code: u8, k: u8) -> Option<f32> {
    if code(f32::MAX, zero, scale, max_code) < k {
        return None;
    }
    let (mut lo, mut hi) = (order(f32::MIN), order(f32::MAX));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if code(from_order(mid), zero, scale, max_code) >= k {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(from_order(lo))
}

/// The channel-axis (group = all) kernels, which code by thresholds found by a search over the
/// floats (`emit::code_threshold`; host schedules start it a few floats around `zero + (k -
/// 0.5) scale`), against the reference on columns built to put values exactly on every
/// threshold and on the floats either side of it: each channel's column holds its minimum and
/// maximum (so zero and scale are those of that range), then for every level the smallest `x`
/// whose reference code reaches it (found here by bisection) and its two neighbours, the rest
/// the midpoint. Ranges of many magnitudes and offsets, among them narrow ones far from 0 (a
/// scale thousands of times below the zero's size) and flat ones (scale 0); 1-, 2- and 4-bit
/// codes, f16 and f32 parameters; the host schedule and the GPU one.
#[test]
fn channel_kernel_codes_values_on_the_thresholds() {
    use kvq_ir::lower::io::quantize_with;
    use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
    use kvq_ir::reference::range::group_params;
    use kvq_ir::{Axis, BitOrder, Bits, Group, ParamType, Rule, Scheme, Tensor3};

    const DIM: usize = 32;
    const ROWS: usize = 64;
    let ranges: Vec<(f32, f32)> = (0..DIM)
        .map(|c| {
            let magnitude = 2f32.powi(c as i32 % 23 - 11);
            match c % 4 {
                0 => (-magnitude, magnitude * 1.37),
                1 => (1000.0 + magnitude * 1e-3, 1000.5 + magnitude * 1e-3),
                2 => (-3.0 * magnitude, -magnitude),
                _ if c == 31 => (0.75, 0.75),
                _ => (magnitude * 0.01, magnitude * (1.0 + c as f32 / 7.0)),
            }
        })
        .collect();
    for bits in [Bits::B1, Bits::B2, Bits::B4] {
        for params in [ParamType::F16, ParamType::F32] {
            let scheme = Scheme {
                bits,
                axis: Axis::Channel,
                group: Group::All,
                rule: Rule::MinMax,
                params,
                order: BitOrder::Msb,
            };
            let levels = scheme.bits.max_code();
            let mut data = vec![0.0f32; ROWS * DIM];
            for (c, &(lo, hi)) in ranges.iter().enumerate() {
                let (zero, scale) = group_params(lo, hi, levels, params).expect("parameters");
                let mut column = vec![lo, hi];
                for k in 1..=levels {
                    if let Some(t) = smallest_x_reaching(zero, scale, levels, k) {
                        let below = from_order(order(t) - 1);
                        let above = from_order(order(t) + 1);
                        column.extend([t, below, above].map(|x| x.clamp(lo, hi)));
                    }
                }
                column.resize(ROWS, lo + (hi - lo) / 2.0);
                for (t, x) in column.into_iter().enumerate() {
                    data[t * DIM + c] = x;
                }
            }
            let x = Tensor3::new([1, ROWS, DIM], data).unwrap();
            let want = kvq_ir::reference::quantize(&x, &scheme).unwrap();
            let shape = ShapeClass {
                head_dim: DIM as u32,
                input: InputType::F32,
            };
            for schedule in [
                Schedule::host_default(&scheme, shape),
                Schedule::gpu_default(&scheme, shape).without_clusters(&scheme, shape),
            ] {
                let lowered = lower::quantize(&scheme, shape, &schedule).unwrap();
                let got = quantize_with(&lowered, &scheme, &x, InputType::F32, interp_run).unwrap();
                let at = format!("{scheme}, {schedule:?}");
                let scale_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(scale_bits(&got.zero), scale_bits(&want.zero), "{at}");
                assert_eq!(scale_bits(&got.scale), scale_bits(&want.scale), "{at}");
                assert_eq!(got.codes, want.codes, "{at}");
            }
        }
    }
}
