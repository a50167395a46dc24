use kvq::kv_quant;

#[kv_quant(
    key(bits = 1, axis = channel, group = all, rule = median),
    value(bits = 1, axis = channel, group = all, rule = shrink(0.3)),
)]
pub struct Scheme;

fn main() {
    let _ = Scheme;
}
