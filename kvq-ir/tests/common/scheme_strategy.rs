//! The proptest strategy of schemes over every field SPEC.md allows, shared by kvq-ir's
//! property tests (`tests/lowering.rs`) and kvq's (`tests/all`), each of which includes this
//! file as a module.

use kvq_ir::{
    Alpha, Axis, BitOrder, Bits, Center, Group, GroupSize, ParamType, Quantile, Rule, Scheme,
};
use proptest::prelude::*;

/// Any scheme, with group sizes drawn from `sizes` (or `all`).
pub fn scheme_strategy(sizes: Vec<u32>) -> impl Strategy<Value = Scheme> {
    let bits = prop::sample::select(Bits::ALL.to_vec());
    let axis = prop_oneof![Just(Axis::Channel), Just(Axis::Token)];
    let group = prop_oneof![
        Just(Group::All),
        prop::sample::select(sizes).prop_map(|n| Group::Size(GroupSize::new(n).unwrap()))
    ];
    let rule = prop_oneof![
        Just(Rule::MinMax),
        (0.05f32..=1.0).prop_map(|a| Rule::Shrink {
            alpha: Alpha::new(a).unwrap(),
            center: Center::Zero
        }),
        (0.05f32..=1.0).prop_map(|a| Rule::Shrink {
            alpha: Alpha::new(a).unwrap(),
            center: Center::Mid
        }),
        (0.0f64..0.5).prop_map(|p| Rule::Quantile(Quantile::new(p).unwrap())),
        // The parser takes mse with bits = 1 only; built directly, every width lowers.
        Just(Rule::Mse),
    ];
    let params = prop_oneof![Just(ParamType::F16), Just(ParamType::F32)];
    let order = prop_oneof![Just(BitOrder::Msb), Just(BitOrder::Lsb)];
    (bits, axis, group, rule, params, order).prop_map(|(bits, axis, group, rule, params, order)| {
        Scheme {
            bits,
            axis,
            group,
            rule,
            params,
            order,
        }
    })
}
