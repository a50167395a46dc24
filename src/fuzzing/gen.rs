//! Generators shared by the structured targets.

use arbitrary::{Result, Unstructured};

use crate::{
    Alpha, Axis, BitOrder, Bits, Center, Group, GroupSize, ParamType, Quantile, Rule, Scheme,
};

/// Group sizes, shrink factors and quantile levels of a coarse scheme (few distinct kernels, so
/// that compiled host code is reused).
const COARSE_GROUPS: [u32; 9] = [1, 2, 3, 4, 7, 8, 16, 32, 64];
const COARSE_ALPHAS: [f32; 5] = [0.25, 0.3, 0.5, 0.75, 1.0];
const COARSE_LEVELS: [f64; 5] = [0.0, 0.05, 0.1, 0.25, 0.49];

/// A valid scheme: bits 1/2/4/8, either axis, group all or 1..=`max_group`, any rule (mse only
/// with one bit), f16 or f32 parameters, either bit order. `coarse` draws group sizes, shrink
/// factors and quantile levels from short lists.
pub(crate) fn scheme(u: &mut Unstructured<'_>, max_group: u32, coarse: bool) -> Result<Scheme> {
    let bits = *u.choose(&[Bits::B1, Bits::B2, Bits::B4, Bits::B8])?;
    let axis = *u.choose(&[Axis::Channel, Axis::Token])?;
    let group = if u.arbitrary()? {
        Group::All
    } else {
        let n = if coarse {
            *u.choose(&COARSE_GROUPS)?
        } else {
            u.int_in_range(1..=max_group.max(1))?
        };
        GroupSize::new(n.min(max_group)).map_or(Group::All, Group::Size)
    };
    let rule = match u.int_in_range(0u8..=3)? {
        1 => match Alpha::new(if coarse {
            *u.choose(&COARSE_ALPHAS)?
        } else {
            fraction(u, 0.0, 1.0)?
        }) {
            Some(alpha) => Rule::Shrink {
                alpha,
                center: *u.choose(&[Center::Zero, Center::Mid])?,
            },
            None => Rule::MinMax,
        },
        2 => Quantile::new(if coarse {
            *u.choose(&COARSE_LEVELS)?
        } else {
            f64::from(fraction(u, 0.0, 0.5)?)
        })
        .map_or(Rule::MinMax, Rule::Quantile),
        3 if bits == Bits::B1 => Rule::Mse,
        _ => Rule::MinMax,
    };
    Ok(Scheme {
        bits,
        axis,
        group,
        rule,
        params: *u.choose(&[ParamType::F16, ParamType::F32])?,
        order: *u.choose(&[BitOrder::Msb, BitOrder::Lsb])?,
    })
}

/// A number in `lo..=hi` (inclusive ends included, for the validators to judge).
fn fraction(u: &mut Unstructured<'_>, lo: f32, hi: f32) -> Result<f32> {
    let k: u16 = u.arbitrary()?;
    Ok(lo + (hi - lo) * f32::from(k) / f32::from(u16::MAX))
}

/// An f32 that is mostly ordinary, sometimes extreme (huge, tiny, subnormal, negative zero),
/// and, when `finite_only` is false, sometimes NaN or infinite.
pub(crate) fn float(u: &mut Unstructured<'_>, finite_only: bool) -> Result<f32> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => f32::from_bits(u.arbitrary()?),
        1 => *u.choose(&[
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            1e-45,
            f32::MAX,
            f32::MIN,
            65504.0,
            1e-8,
        ])?,
        2 if !finite_only => *u.choose(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY])?,
        _ => f32::from(u.arbitrary::<i16>()?) / 1024.0,
    })
    .map(|x: f32| {
        if finite_only && !x.is_finite() {
            0.0
        } else {
            x
        }
    })
}
