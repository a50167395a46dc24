//! The catalogue: named schemes that tests, snapshots and benchmarks cover.

use super::Scheme;

/// (name, scheme text) of every catalogue entry.
pub const CATALOGUE: [(&str, &str); 10] = [
    (
        "calibquant_k",
        "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
    ),
    (
        "calibquant_v",
        "bits = 1, axis = channel, group = all, rule = shrink(0.3)",
    ),
    (
        "calibquant_mid_lsb",
        "bits = 1, axis = channel, group = all, rule = shrink(0.5, center = mid), order = lsb",
    ),
    (
        "quantile1",
        "bits = 1, axis = channel, group = all, rule = quantile(0.2)",
    ),
    (
        "kivi2_k",
        "bits = 2, axis = channel, group = 32, rule = minmax",
    ),
    (
        "kivi2_v",
        "bits = 2, axis = token, group = 32, rule = minmax",
    ),
    (
        "kivi2_k_lsb_f32",
        "bits = 2, axis = channel, group = 32, rule = minmax, params = f32, order = lsb",
    ),
    (
        "tok4",
        "bits = 4, axis = token, group = all, rule = minmax, params = f32",
    ),
    ("tok8", "bits = 8, axis = token, group = 64, rule = minmax"),
    ("mse1", "bits = 1, axis = channel, group = all, rule = mse"),
];

/// The catalogue's schemes, parsed.
pub fn catalogue() -> Vec<(&'static str, Scheme)> {
    CATALOGUE
        .iter()
        .filter_map(|&(name, text)| Scheme::parse(text).ok().map(|s| (name, s)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_entry_parses() {
        assert_eq!(super::catalogue().len(), super::CATALOGUE.len());
    }
}
