use kvq::kv_quant;

#[kv_quant(
    key(bits = 2, axis = channel, group = all, rule = mse),
    value(bits = 1, axis = channel, group = all, rule = mse),
)]
pub struct Scheme;

fn main() {
    let _ = Scheme;
}
