// Every mistake is reported, each at its token.
use kvq::kv_quant;

#[kv_quant(
    key(bits = 3, axis = row, group = all, rule = shrink(2)),
    value(bits = 1, axis = channel, group = all, rule = quantile(0.5), order = big),
)]
pub struct Scheme;

fn main() {
    let _ = Scheme;
}
