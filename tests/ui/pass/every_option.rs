//! Every key and rule, entries in any order, trailing commas, type suffixes, defaults.

use kvq::{
    kv_quant, Alpha, Axis, BitOrder, Bits, CacheScheme, Center, Group, GroupSize, KvQuant,
    ParamType, Quantile, Rule,
};

#[kv_quant(
    value(order = lsb, params = f32, rule = quantile(0.2), group = 32, axis = token, bits = 2,),
    key(bits = 4, axis = channel, group = 128, rule = shrink(0.5f32, center = mid),),
)]
struct Options;

#[kv_quant(
    key(bits = 8, axis = token, group = all, rule = minmax),
    value(bits = 1, axis = channel, group = 7, rule = shrink(1, center = zero)),
    calibrate = 3
)]
struct Minimal;

#[kv_quant(
    key(bits = 2, axis = channel, group = 1_000, rule = quantile(0)),
    value(bits = 2, axis = channel, group = all, rule = quantile(-0.0)),
    calibrate = 0.25e1f32,
)]
struct Quantiles;

fn main() {
    let s = Options::SCHEME;
    assert_eq!(s.calibrate, None);
    assert_eq!(s.value.bits, Bits::B2);
    assert_eq!(s.value.axis, Axis::Token);
    assert_eq!(s.value.group, Group::Size(GroupSize::new(32).unwrap()));
    assert_eq!(s.value.params, ParamType::F32);
    assert_eq!(s.value.order, BitOrder::Lsb);
    assert_eq!(s.value.rule, Rule::Quantile(Quantile::new(0.2).unwrap()));
    assert_eq!(s.key.bits, Bits::B4);
    assert_eq!(s.key.group.to_string(), "128");
    assert_eq!(
        s.key.rule,
        Rule::Shrink {
            alpha: Alpha::new(0.5).unwrap(),
            center: Center::Mid
        }
    );
    assert_eq!(s.key.params, ParamType::F16);
    assert_eq!(s.key.order, BitOrder::Msb);

    let s = Minimal::SCHEME;
    assert_eq!(
        (s.key.bits, s.key.axis, s.key.rule),
        (Bits::B8, Axis::Token, Rule::MinMax)
    );
    assert_eq!(s.value.rule.to_string(), "shrink(1.0)");
    assert_eq!(s.calibrate.unwrap().get(), 3.0);

    let s = Quantiles::SCHEME;
    assert_eq!(s.key.group, Group::Size(GroupSize::new(1000).unwrap()));
    assert_eq!(s.key.rule, s.value.rule);
    assert_eq!(s.calibrate.unwrap().get(), 2.5);

    // The canonical text of each reads back to the same value.
    for s in [Options::SCHEME, Minimal::SCHEME, Quantiles::SCHEME] {
        assert_eq!(CacheScheme::parse(&s.to_string()).unwrap(), s);
    }
}
