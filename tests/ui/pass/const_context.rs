//! The scheme is a `const`: usable in constants, array lengths and generic code.

use kvq::{kv_quant, Bits, KvQuant, Rule};

#[kv_quant(
    key(bits = 2, axis = channel, group = all, rule = shrink(0.5)),
    value(bits = 4, axis = token, group = 64, rule = minmax),
    calibrate = 3.0,
)]
pub struct Scheme;

const KEY_CODES_PER_BYTE: usize = Scheme::SCHEME.key.bits.codes_per_byte();
const CALIBRATE: f32 = match Scheme::SCHEME.calibrate {
    Some(d) => d.get(),
    None => 0.0,
};
const _: () = assert!(matches!(Scheme::SCHEME.value.rule, Rule::MinMax));

fn key_bits<T: KvQuant>() -> Bits {
    T::SCHEME.key.bits
}

fn main() {
    let codes = [0u8; KEY_CODES_PER_BYTE];
    assert_eq!(codes.len(), 4);
    assert_eq!(CALIBRATE, 3.0);
    assert_eq!(key_bits::<Scheme>(), Bits::B2);
}
