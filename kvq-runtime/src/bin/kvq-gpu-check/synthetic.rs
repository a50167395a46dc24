//! Synthetic quantize cases: seeded f16 input of any shape made on the GPU machine, and the
//! expected codes and parameters computed there by `kvq_ir::reference::quantize` (SPEC.md's
//! formulas), so that a kernel is checked bit for bit and timed at shapes too large to carry
//! (the cost model's benchmark shape, 8 kv heads x 16,384 tokens x head_dim 128, is 32 MiB of f16).

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use kvq_ir::{reference, Scheme, Tensor3};

/// `--synthetic KERNEL,HEADS,TOKENS,SEED`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    pub kernel: String,
    pub heads: usize,
    pub tokens: usize,
    pub seed: u64,
}

/// Elements a synthetic case may have (1 GiB of f32 on the host for the reference).
const MAX_ELEMENTS: usize = 1 << 28;

impl SyntheticSpec {
    pub fn parse(spec: &str) -> Result<SyntheticSpec> {
        let parts: Vec<&str> = spec.split(',').collect();
        let [kernel, heads, tokens, seed] = parts[..] else {
            bail!("--synthetic {spec:?}: expected KERNEL,HEADS,TOKENS,SEED");
        };
        let number = |what: &str, s: &str| -> Result<u64> {
            s.parse()
                .with_context(|| format!("--synthetic {spec:?}: {what} {s:?}"))
        };
        let heads = usize::try_from(number("heads", heads)?)?;
        let tokens = usize::try_from(number("tokens", tokens)?)?;
        ensure!(heads > 0 && tokens > 0, "--synthetic {spec:?}: empty shape");
        ensure!(
            !kernel.is_empty(),
            "--synthetic {spec:?}: empty kernel name"
        );
        Ok(SyntheticSpec {
            kernel: kernel.into(),
            heads,
            tokens,
            seed: number("seed", seed)?,
        })
    }
}

/// splitmix64: a seeded stream of 64-bit values.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform value in [-1, 1).
fn uniform(state: &mut u64) -> f32 {
    (splitmix(state) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// `[heads, tokens, dim]` f16 values shaped like K/V activations: each channel has its own
/// offset and spread (a few channels 8x wider, the outliers keys carry), plus a sum of two
/// uniforms per element (a triangular distribution, so the quantile and mse rules see tails).
pub fn input(heads: usize, tokens: usize, dim: usize, seed: u64) -> Result<Vec<f16>> {
    let len = heads
        .checked_mul(tokens)
        .and_then(|n| n.checked_mul(dim))
        .filter(|&n| n <= MAX_ELEMENTS)
        .with_context(|| format!("{heads} x {tokens} x {dim} is over {MAX_ELEMENTS} elements"))?;
    let mut state = seed;
    let channels: Vec<(f32, f32)> = (0..heads * dim)
        .map(|_| {
            let offset = uniform(&mut state);
            let wide = splitmix(&mut state) % 16 == 0;
            (offset, if wide { 8.0 } else { 1.0 })
        })
        .collect();
    let mut x = Vec::with_capacity(len);
    for h in 0..heads {
        for _ in 0..tokens {
            for c in 0..dim {
                let (offset, spread) = channels[h * dim + c];
                let v = offset + spread * (uniform(&mut state) + uniform(&mut state));
                x.push(f16::from_f32(v));
            }
        }
    }
    Ok(x)
}

/// The reference's codes and parameters (f32 values of the stored parameters) for `x`.
pub fn expected(
    scheme: &str,
    x: &[f16],
    heads: usize,
    tokens: usize,
    dim: usize,
) -> Result<reference::PackedSpan> {
    let scheme = Scheme::parse(scheme).map_err(|e| anyhow::anyhow!("scheme {scheme:?}: {e}"))?;
    let data = x.iter().map(|v| v.to_f32()).collect();
    let tensor = Tensor3::new([heads, tokens, dim], data)?;
    Ok(reference::quantize(&tensor, &scheme)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec() {
        let s = SyntheticSpec::parse("kvq_q,8,16384,7").unwrap();
        assert_eq!((s.heads, s.tokens, s.seed), (8, 16384, 7));
        assert!(SyntheticSpec::parse("kvq_q,8,16384").is_err());
        assert!(SyntheticSpec::parse("kvq_q,0,16,1").is_err());
        assert!(SyntheticSpec::parse("kvq_q,8,x,1").is_err());
    }

    #[test]
    fn input_is_seeded_and_bounded() {
        let a = input(2, 5, 8, 1).unwrap();
        assert_eq!(a, input(2, 5, 8, 1).unwrap());
        assert_ne!(a, input(2, 5, 8, 2).unwrap());
        assert_eq!(a.len(), 80);
        // |offset| < 1 and |spread x (u1 + u2)| < 16.
        assert!(a.iter().all(|v| v.to_f32().abs() < 17.0));
        assert!(input(1 << 20, 1 << 20, 128, 0).is_err());
    }

    #[test]
    fn expected_follows_the_spec() {
        // 4 tokens x 8 channels, channel c = c + [0, 4, 1, 3] by token; minmax over 1 bit: zero =
        // min = c, scale = max - min = 4, code = round((x - zero) / 4) = [0, 1, 0, 1] by token.
        let x: Vec<f16> = [0.0f32, 4.0, 1.0, 3.0]
            .iter()
            .flat_map(|&t| (0..8).map(move |c| f16::from_f32(t + c as f32)))
            .collect();
        let scheme = "bits = 1, axis = channel, group = all, rule = minmax";
        let span = expected(scheme, &x, 1, 4, 8).unwrap();
        assert_eq!(span.zero, (0..8).map(|c| c as f32).collect::<Vec<_>>());
        assert_eq!(span.scale, vec![4.0; 8]);
        let codes = span.unpack_codes();
        for (t, want) in [0u8, 1, 0, 1].into_iter().enumerate() {
            assert!(
                codes[t * 8..t * 8 + 8].iter().all(|&c| c == want),
                "token {t}"
            );
        }
    }
}
