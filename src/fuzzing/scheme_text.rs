//! Target `scheme_text`: any UTF-8 text through [`Scheme::parse`] and [`CacheScheme::parse`].
//!
//! Properties: parsing never panics; an error renders (its `Display`) without panicking; a
//! parsed scheme's canonical text (`to_string()`) parses back to an equal scheme.

use crate::{CacheScheme, Scheme};

/// Runs one input (bytes that are not UTF-8 are ignored).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Scheme::parse(text) {
        Ok(scheme) => {
            let canonical = scheme.to_string();
            match Scheme::parse(&canonical) {
                Ok(back) => assert_eq!(back, scheme, "{text:?} -> {canonical:?}"),
                Err(e) => panic!("{text:?} parsed, but its text {canonical:?} does not: {e}"),
            }
        }
        Err(e) => drop(e.to_string()),
    }
    match CacheScheme::parse(text) {
        Ok(cache) => {
            let canonical = cache.to_string();
            match CacheScheme::parse(&canonical) {
                Ok(back) => assert_eq!(back, cache, "{text:?} -> {canonical:?}"),
                Err(e) => panic!("{text:?} parsed, but its text {canonical:?} does not: {e}"),
            }
        }
        Err(e) => drop(e.to_string()),
    }
}

/// Valid and nearly valid scheme texts.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    [
        "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
        "bits=2, axis=token, group=32, rule=quantile(0.05), params=f32, order=lsb",
        "bits=8, axis=channel, group=7, rule=shrink(1, center=mid)",
        "bits=1, axis=token, group=16, rule=mse",
        "bits=4, axis=token, group=all, rule=minmax, params=f16, order=msb,",
        "key(bits=1, axis=channel, group=all, rule=shrink(0.5)), \
         value(bits=1, axis=channel, group=all, rule=shrink(0.3)), calibrate = 3",
        "key(bits=2, axis=channel, group=64, rule=minmax), value(bits=4, axis=token, \
         group=32, rule=quantile(0.1))",
        "bits = 3, axis = row, group = all",
        "key(key(key(bits=1)))",
        "rule = shrink(0.5, center = mid, center = zero), bits = -1, group = 1e3",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| (format!("text-{i}"), t.as_bytes().to_vec()))
    .collect()
}
