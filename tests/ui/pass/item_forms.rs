//! The struct is emitted as written: doc comments, derives, visibility, const generics, local
//! items, and no `use` of kvq needed beside the attribute.

mod schemes {
    /// Keys and values at one bit.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
    #[kvq::kv_quant(
        key(bits = 1, axis = channel, group = all, rule = minmax),
        value(bits = 1, axis = channel, group = all, rule = minmax),
    )]
    pub(crate) struct OneBit;

    /// A family of schemes told apart by a const parameter.
    #[kvq::kv_quant(
        key(bits = 8, axis = token, group = all, rule = minmax),
        value(bits = 8, axis = token, group = all, rule = minmax),
    )]
    pub struct Tagged<const N: usize>
    where
        [(); N]:;

    // A local type named like a primitive does not break the expansion.
    #[allow(non_camel_case_types, dead_code)]
    struct f32;
    #[allow(non_camel_case_types, dead_code)]
    struct f64;

    #[kvq::kv_quant(
        key(bits = 1, axis = channel, group = all, rule = shrink(0.5)),
        value(bits = 1, axis = channel, group = all, rule = quantile(0.1)),
        calibrate = 3.0,
    )]
    pub struct Shadowed;
}

use kvq::{Bits, KvQuant};
use schemes::{OneBit, Shadowed, Tagged};

fn main() {
    assert_eq!(OneBit::default(), OneBit);
    assert_eq!(format!("{:?}", OneBit), "OneBit");
    assert_eq!(OneBit::SCHEME.key.bits, Bits::B1);
    assert_eq!(<Tagged<3> as KvQuant>::SCHEME.value.bits, Bits::B8);
    let _ = Tagged::<0>;
    assert_eq!(Shadowed::SCHEME.calibrate.unwrap().get(), 3.0);

    #[kvq::kv_quant(
        key(bits = 4, axis = channel, group = 16, rule = minmax),
        value(bits = 4, axis = channel, group = 16, rule = minmax),
    )]
    struct Local;
    assert_eq!(Local::SCHEME.key.bits, Bits::B4);
}
