//! CalibQuant's scheme: the same value, bit for bit, as the command-line parser gives.

use kvq::{
    kv_quant, Alpha, Axis, BitOrder, Bits, CacheScheme, Center, Group, KvQuant, ParamType, Rule,
};

#[kv_quant(
    key(bits = 1, axis = channel, group = all, rule = shrink(0.5)),
    value(bits = 1, axis = channel, group = all, rule = shrink(0.3)),
    calibrate = 3.0,
)]
pub struct CalibQuant;

fn main() {
    let s = <CalibQuant as KvQuant>::SCHEME;
    assert_eq!(s.key.bits, Bits::B1);
    assert_eq!(s.key.axis, Axis::Channel);
    assert_eq!(s.key.group, Group::All);
    assert_eq!(s.key.params, ParamType::F16);
    assert_eq!(s.key.order, BitOrder::Msb);
    assert_eq!(
        s.key.rule,
        Rule::Shrink {
            alpha: Alpha::new(0.5).unwrap(),
            center: Center::Zero
        }
    );
    match s.value.rule {
        Rule::Shrink { alpha, .. } => assert_eq!(alpha.get().to_bits(), 0.3f32.to_bits()),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.calibrate.unwrap().get(), 3.0);
    let parsed = CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
    )
    .unwrap();
    assert_eq!(s, parsed);
    let _ = CalibQuant;
}
