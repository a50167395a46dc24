use kvq::kv_quant;

#[kv_quant(
    key(bits = 1, axis = channel, group = all, rule = shrink(0.5)),
    value(bits = 1, axis = channel, group = all, rule = shrink(0.3)),
)]
pub enum Scheme {
    A,
}

fn main() {
    let _ = Scheme::A;
}
