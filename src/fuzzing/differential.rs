//! Target `differential`: a random valid scheme and a small random span quantized three ways,
//! by the reference ([`Backend::Reference`]), the interpreter running the lowered kernel
//! ([`Backend::Interp`]) and generated host code ([`Backend::Host`]).
//!
//! Schemes: bits 1/2/4/8, both axes, group all or 1..=64 (token-axis groups dividing head_dim),
//! every rule, f16/f32 parameters, both bit orders. Spans: 1-3 heads, 0-40 tokens, head_dim a
//! multiple of 8 up to 64, f32/f16/bf16 input, values from ordinary to extreme, constant rows
//! and channels, an occasional NaN or infinity.
//!
//! Property: the three give the same codes, zeros and scales bit for bit, or the same
//! quantization error. Host compilation goes through the compile cache (`KVQ_CACHE_DIR`), so
//! set it to a persistent directory when fuzzing.

use arbitrary::{Result, Unstructured};
use half::{bf16, f16};
use kvq_ir::lower::InputType;
use kvq_ir::reference::PackedSpan;

use super::gen;
use crate::backend::{self, Backend, BackendError};
use crate::{Axis, Group, Scheme, Tensor3};

/// A case: scheme, input type and span.
fn case(u: &mut Unstructured<'_>) -> Result<(Scheme, InputType, [usize; 3], Vec<f32>)> {
    let heads = u.int_in_range(1..=3)?;
    let tokens = u.int_in_range(0..=40)?;
    let dim = 8 * u.int_in_range(1..=8)?;
    let mut scheme = gen::scheme(u, 64, true)?;
    if let (Axis::Token, Group::Size(n)) = (scheme.axis, scheme.group) {
        if dim % n.get() != 0 && u.ratio(7u8, 8)? {
            scheme.group = Group::All;
        }
    }
    let input = *u.choose(&[InputType::F32, InputType::F16, InputType::BF16])?;
    let finite = u.ratio(31u8, 32)?;
    let magnitude = 2f32.powi(u.int_in_range(-20..=20)?);
    let constant = u.ratio(1u8, 8)?;
    let n = heads * tokens * dim;
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let x = if constant && i >= dim {
            // Every token repeats the first: constant channels.
            data[i - dim]
        } else if u.ratio(1u8, 16)? {
            gen::float(u, finite)?
        } else {
            f32::from(u.arbitrary::<i8>()?) / 128.0 * magnitude
        };
        // The value the kernels see after the input conversion.
        data.push(match input {
            InputType::F32 => x,
            InputType::F16 => f16::from_f32(x).to_f32(),
            InputType::BF16 => bf16::from_f32(x).to_f32(),
        });
    }
    Ok((scheme, input, [heads, tokens, dim], data))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Compares a backend's result with the reference's.
fn agree(
    name: &str,
    scheme: &Scheme,
    got: Result<PackedSpan, BackendError>,
    want: &Result<PackedSpan, BackendError>,
) {
    match (got, want) {
        (Ok(got), Ok(want)) => {
            assert_eq!(got.codes, want.codes, "{name}: codes of {scheme}");
            assert_eq!(
                bits(&got.zero),
                bits(&want.zero),
                "{name}: zeros of {scheme}"
            );
            assert_eq!(
                bits(&got.scale),
                bits(&want.scale),
                "{name}: scales of {scheme}"
            );
            assert_eq!(got.shape, want.shape, "{name}: shape of {scheme}");
        }
        // Compared as text: an error may carry a NaN, which is not equal to itself.
        (Err(BackendError::Quant(got)), Err(BackendError::Quant(want))) => assert_eq!(
            format!("{got:?}"),
            format!("{want:?}"),
            "{name}: error of {scheme}"
        ),
        (got, want) => panic!(
            "{name} vs reference for {scheme}: {:?} vs {:?}",
            got.map(|_| ()).map_err(|e| e.to_string()),
            want.as_ref().map(|_| ()).map_err(|e| e.to_string())
        ),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok((scheme, input, shape, values)) = case(&mut Unstructured::new(data)) else {
        return;
    };
    let Ok(x) = Tensor3::new(shape, values) else {
        // No tensor of zero tokens exists; nothing to quantize.
        return;
    };
    let want = backend::quantize(&x, input, &scheme, Backend::Reference);
    for b in [Backend::Interp, Backend::Host] {
        agree(
            &format!("{b:?}"),
            &scheme,
            backend::quantize(&x, input, &scheme, b),
            &want,
        );
    }
}
