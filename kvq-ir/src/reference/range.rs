//! The range rules and the parameter formula of SPEC.md section 2, one f32 operation at a time.

use crate::scheme::{Center, ParamType, Rule, MSE_ITERATIONS, MSE_RUN, MSE_STRANDS};

/// The range [lo, hi] that `rule` picks for a group's values (finite, non-empty).
///
/// `values` may be reordered (the quantile rule sorts it). A zero result is returned as +0.0, so
/// that a parameter's bits never depend on which of two equal zeros a reduction met first.
pub fn group_range(rule: Rule, values: &mut [f32]) -> (f32, f32) {
    let (lo, hi) = match rule {
        Rule::MinMax => min_max(values),
        Rule::Shrink {
            alpha,
            center: Center::Zero,
        } => {
            let a = alpha.get();
            let (min, max) = min_max(values);
            (a * min, a * max)
        }
        Rule::Shrink {
            alpha,
            center: Center::Mid,
        } => {
            let a = alpha.get();
            let (min, max) = min_max(values);
            let c = (min + max) / 2.0;
            (c + a * (min - c), c + a * (max - c))
        }
        Rule::Quantile(p) => {
            values.sort_by(f32::total_cmp);
            let p = p.get();
            (quantile_sorted(values, p), quantile_sorted(values, 1.0 - p))
        }
        Rule::Mse => mse_range(values),
    };
    (lo + 0.0, hi + 0.0)
}

/// The `mse` rule's two levels: t = mean; then [`MSE_ITERATIONS`] rounds of lo = mean of the
/// values below t, hi = mean of the rest (a side with no value takes t), t = (lo + hi) / 2.
/// Every sum is a [`tree_sum`] over the whole group, adding the value or +0.0; counts are exact
/// integers, converted to f32 once.
pub fn mse_range(values: &[f32]) -> (f32, f32) {
    let n = values.len() as f32;
    let mut t = tree_sum(values.len(), |i| values[i]) / n;
    let (mut lo, mut hi) = (t, t);
    for _ in 0..MSE_ITERATIONS {
        let upper = |i: usize| values[i] >= t;
        let s0 = tree_sum(values.len(), |i| if upper(i) { 0.0 } else { values[i] });
        let s1 = tree_sum(values.len(), |i| if upper(i) { values[i] } else { 0.0 });
        let above = values.iter().filter(|&&x| x >= t).count();
        let (n0, n1) = ((values.len() - above) as f32, above as f32);
        lo = if n0 > 0.0 { s0 / n0 } else { t };
        hi = if n1 > 0.0 { s1 / n1 } else { t };
        t = (lo + hi) / 2.0;
    }
    (lo, hi)
}

/// The sum of the `n` terms `term(0..n)` in f32 by [`MSE_STRANDS`] strands: the terms go in
/// runs of [`MSE_RUN`] neighbours to strands 0, 1, .., S - 1, 0, 1, .. in turn; strand `j` is
/// `+0.0 + term(i) + ..` over its terms `i` in increasing order; then pairs of neighbouring
/// strands add up (`(s0 + s1), (s2 + s3), ..`), pairs of those, and so on to one sum: a
/// perfect binary tree over the strands. Strands past the last term are +0.0, which adds
/// nothing (no strand or node is -0.0), so the tree is cut at the first power of two that holds
/// every non-empty strand.
pub fn tree_sum(n: usize, term: impl Fn(usize) -> f32) -> f32 {
    let strands = n
        .div_ceil(MSE_RUN)
        .clamp(1, MSE_STRANDS)
        .next_power_of_two();
    let mut nodes: Vec<f32> = (0..strands)
        .map(|j| {
            (j * MSE_RUN..n)
                .step_by(MSE_STRANDS * MSE_RUN)
                .flat_map(|start| start..(start + MSE_RUN).min(n))
                .fold(0.0f32, |s, i| s + term(i))
        })
        .collect();
    while nodes.len() > 1 {
        nodes = nodes.chunks(2).map(|pair| pair[0] + pair[1]).collect();
    }
    nodes[0]
}

/// Smallest and largest value (first occurrence wins among equal values).
fn min_max(values: &[f32]) -> (f32, f32) {
    let mut min = values[0];
    let mut max = values[0];
    for &x in &values[1..] {
        if x < min {
            min = x;
        }
        if x > max {
            max = x;
        }
    }
    (min, max)
}

/// numpy's `method='linear'` quantile of ascending `sorted` at level `p`, computed in f64 and
/// rounded once to f32.
pub fn quantile_sorted(sorted: &[f32], p: f64) -> f32 {
    let n = sorted.len();
    let h = (n - 1) as f64 * p;
    let k = h.floor() as usize;
    if k >= n - 1 {
        return sorted[n - 1];
    }
    let f = h - k as f64;
    let a = sorted[k] as f64;
    let b = sorted[k + 1] as f64;
    (a + (b - a) * f) as f32
}

/// Rounds `x` to the parameter type (round to nearest even) and back to f32: P(x) of the spec.
pub fn round_param(x: f32, params: ParamType) -> f32 {
    match params {
        ParamType::F16 => half::f16::from_f32(x).to_f32(),
        ParamType::F32 => x,
    }
}

/// The stored (zero, scale) of a group with range [lo, hi] and largest code `max_code`.
///
/// `None` when a parameter does not fit the parameter type (|zero| or |zero + L * scale| beyond
/// its finite range).
pub fn group_params(lo: f32, hi: f32, max_code: u8, params: ParamType) -> Option<(f32, f32)> {
    let levels = max_code as f32;
    let zero = round_param(lo, params);
    let scale = if hi <= lo {
        0.0
    } else {
        round_param((round_param(hi, params) - zero) / levels, params)
    };
    let limit = match params {
        ParamType::F16 => half::f16::MAX.to_f32(),
        ParamType::F32 => f32::MAX,
    };
    let top = zero + levels * scale;
    let fits = zero.is_finite() && scale.is_finite() && top.is_finite() && top.abs() <= limit;
    fits.then_some((zero, scale))
}

/// The code of `x` under (zero, scale): `clamp(round_half_even((x - zero) / scale), 0, L)`, or 0
/// when the scale is 0.
pub fn code(x: f32, zero: f32, scale: f32, max_code: u8) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    let q = ((x - zero) / scale).round_ties_even();
    q.clamp(0.0, max_code as f32) as u8
}

/// The dequantized value `zero + scale * code`, two f32 operations.
pub fn dequantize_value(code: u8, zero: f32, scale: f32) -> f32 {
    zero + scale * code as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{Alpha, Quantile};

    #[test]
    fn quantile_matches_numpy_linear() {
        // numpy.quantile([1, 2, 3, 4, 10], [0.2, 0.8]) == [1.8, 5.2]
        let mut v = [10.0, 3.0, 1.0, 4.0, 2.0];
        let rule = Rule::Quantile(Quantile::new(0.2).unwrap());
        let (lo, hi) = group_range(rule, &mut v);
        assert_eq!(lo, 1.8f64 as f32);
        assert_eq!(hi, 5.2f64 as f32);
        assert_eq!(quantile_sorted(&[7.0], 0.3), 7.0);
    }

    #[test]
    fn mse_is_two_means() {
        // Two clusters: Lloyd's iteration lands on their means from the split at the mean.
        let mut v = [0.9, 1.1, 1.0, 5.0, 5.2, 4.8, 5.0];
        let (lo, hi) = group_range(Rule::Mse, &mut v);
        assert!(
            (lo - 1.0).abs() < 1e-6 && (hi - 5.0).abs() < 1e-6,
            "{lo} {hi}"
        );
        // An outlier does not own a level when the bulk is wider than it is far: like the
        // minimiser of the squared error (f64 brute force over all splits), Lloyd's fixed point
        // splits the bulk (its split may differ from the optimum's by a few elements).
        let mut v: Vec<f32> = (0..200).map(|i| (i as f32 / 199.0) * 2.0 - 1.0).collect();
        v.push(2.5);
        let (lo, hi) = group_range(Rule::Mse, &mut v.clone());
        let mut sorted: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        sorted.sort_by(f64::total_cmp);
        let sse = |a: &[f64]| {
            let m = a.iter().sum::<f64>() / a.len() as f64;
            a.iter().map(|x| (x - m) * (x - m)).sum::<f64>()
        };
        let best = (1..sorted.len())
            .min_by(|&i, &j| {
                (sse(&sorted[..i]) + sse(&sorted[i..]))
                    .total_cmp(&(sse(&sorted[..j]) + sse(&sorted[j..])))
            })
            .unwrap();
        let mean = |a: &[f64]| a.iter().sum::<f64>() / a.len() as f64;
        assert!((lo as f64 - mean(&sorted[..best])).abs() < 1e-2, "{lo}");
        assert!((hi as f64 - mean(&sorted[best..])).abs() < 1e-2, "{hi}");
        // A constant group has one level.
        assert_eq!(group_range(Rule::Mse, &mut [3.0; 5]), (3.0, 3.0));
    }

    #[test]
    fn tree_sum_is_strands_then_pairs() {
        // Terms whose order shows in f32: one 1 among many t = 2^-24 (a t added to 1 alone is
        // lost, t added to t is exact).
        let t = f32::EPSILON / 2.0;
        let one_at = |k: usize| move |i: usize| if i == k { 1.0 } else { t };
        let ts = |k: u32| k as f32 * t;
        // One run: a strand adds in order, 1 + t + t + t = 1.
        assert_eq!(tree_sum(4, one_at(0)), 1.0);
        // Runs of 8 to strands 0 and 1: 1 + 7t = 1 and 8t, then 1 + 8t (a running sum: 1).
        assert_eq!(tree_sum(16, one_at(0)), 1.0 + ts(8));
        assert_eq!((0..16).fold(0.0f32, |s, i| s + one_at(0)(i)), 1.0);
        // Five strands (the last holds one term) and the 1 in strand 2:
        // ((8t + 8t) + (1 + 8t)) + t = (1 + 24t) + t, a tie that rounds to 1 + 24t; a running
        // sum gives 1 + 16t.
        assert_eq!(
            tree_sum(33, one_at(16)),
            ((ts(8) + ts(8)) + (1.0 + ts(8))) + t
        );
        assert_eq!(tree_sum(33, one_at(16)), 1.0 + ts(24));
        assert_eq!((0..33).fold(0.0f32, |s, i| s + one_at(16)(i)), 1.0 + ts(16));
        // Past S runs the strands start again: terms S * 8 .. S * 8 + 8 are strand 0's (lost
        // after its 1), not a strand of their own (8t more).
        let n = MSE_STRANDS * MSE_RUN + 8;
        let want = 1.0f32 + ts(8 * (MSE_STRANDS as u32 - 1));
        assert_eq!(tree_sum(n, one_at(0)), want);
        // No -0.0 comes out of -0.0 terms, and an empty sum is +0.0.
        assert_eq!(tree_sum(3, |_| -0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tree_sum(0, |_| 1.0).to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn shrink_rules() {
        let mut v = [-4.0, 2.0, 6.0];
        let half = Alpha::new(0.5).unwrap();
        let zero_center = Rule::Shrink {
            alpha: half,
            center: Center::Zero,
        };
        assert_eq!(group_range(zero_center, &mut v), (-2.0, 3.0));
        let mid = Rule::Shrink {
            alpha: half,
            center: Center::Mid,
        };
        assert_eq!(group_range(mid, &mut v), (-1.5, 3.5));
    }

    #[test]
    fn negative_zero_range_is_positive_zero() {
        let mut v = [-0.0, -0.0];
        let (lo, hi) = group_range(Rule::MinMax, &mut v);
        assert_eq!((lo.to_bits(), hi.to_bits()), (0, 0));
    }

    #[test]
    fn params_round_and_overflow() {
        // 1-bit over [-1, 0.1]: zero = -1, scale = P(0.1) - (-1) rounded to f16.
        let (zero, scale) = group_params(-1.0, 0.1, 1, ParamType::F16).unwrap();
        assert_eq!(zero, -1.0);
        assert_eq!(
            scale,
            half::f16::from_f32(half::f16::from_f32(0.1).to_f32() + 1.0).to_f32()
        );
        assert_eq!(group_params(2.0, 2.0, 3, ParamType::F16), Some((2.0, 0.0)));
        assert_eq!(group_params(-65504.0, 65504.0, 1, ParamType::F16), None);
        assert_eq!(group_params(-65504.0, 65504.0, 3, ParamType::F16), None);
        assert!(group_params(-65504.0, 65504.0, 1, ParamType::F32).is_some());
        assert_eq!(group_params(0.0, 1e6, 255, ParamType::F16), None);
    }

    #[test]
    fn codes_round_half_even_and_clamp() {
        assert_eq!(code(0.5, 0.0, 1.0, 3), 0);
        assert_eq!(code(1.5, 0.0, 1.0, 3), 2);
        assert_eq!(code(9.0, 0.0, 1.0, 3), 3);
        assert_eq!(code(-9.0, 0.0, 1.0, 3), 0);
        assert_eq!(code(5.0, 5.0, 0.0, 3), 0);
    }
}
