//! The ablation of issue 5's section 3: 1-bit range rules with and without calibration, the
//! references around them, and the baseline of dropping the span.

use super::StudyError;
use crate::model::SpanTreatment;
use crate::{CacheScheme, Calibration, Scheme};

/// One row of the ablation.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// A short readable name.
    pub name: String,
    /// The family it is plotted with.
    pub family: String,
    /// What the cache keeps of the span.
    pub treatment: SpanTreatment,
}

/// The calibration distance d the calibrated entries use.
pub const CALIBRATE_D: f32 = 3.0;

const CHANNEL_1BIT: &str = "bits = 1, axis = channel, group = all, rule = ";
const KIVI2_K: &str = "bits = 2, axis = channel, group = 32, rule = minmax";
const KIVI2_V: &str = "bits = 2, axis = token, group = 32, rule = minmax";
const TOK4: &str = "bits = 4, axis = token, group = all, rule = minmax, params = f32";
const TOK8: &str = "bits = 8, axis = token, group = 64, rule = minmax";
const TOKEN_1BIT: &str = "bits = 1, axis = token, group = all, rule = minmax";

fn pair(key: &str, value: &str, calibrate: bool) -> Option<SpanTreatment> {
    Some(SpanTreatment::Quantized(CacheScheme {
        key: Scheme::parse(key).ok()?,
        value: Scheme::parse(value).ok()?,
        calibrate: if calibrate {
            Some(Calibration::new(CALIBRATE_D)?)
        } else {
            None
        },
    }))
}

/// The ablation's entries: for 1 bit per channel, minmax, CalibQuant's shrink (0.5 keys, 0.3
/// values), shrink toward the middle, quantile(p) for several p and the (0.2 keys, 0.25
/// values) pair, kvq's two-level `mse` rule, each without and with calibration; 1-bit keys or values alone (the other at
/// 8 bits); 1 bit on the token axis (the wrong axis); keys given a little more (token groups
/// of 128 or 32, or 2 bits) with 1-bit values; 2-bit KIVI-like and 4-bit per-token
/// references; the span dropped.
pub fn ablation() -> Vec<Entry> {
    let c1 = |rule: &str| format!("{CHANNEL_1BIT}{rule}");
    let mut rules: Vec<(String, &'static str, String, String)> = vec![
        ("minmax".into(), "1-bit minmax", c1("minmax"), c1("minmax")),
        (
            "CalibQuant shrink(0.5/0.3)".into(),
            "1-bit shrink",
            c1("shrink(0.5)"),
            c1("shrink(0.3)"),
        ),
        (
            "shrink(0.5/0.3, center = mid)".into(),
            "1-bit shrink mid",
            c1("shrink(0.5, center = mid)"),
            c1("shrink(0.3, center = mid)"),
        ),
    ];
    for p in ["0.05", "0.1", "0.15", "0.2", "0.25", "0.3"] {
        let rule = c1(&format!("quantile({p})"));
        rules.push((
            format!("quantile({p})"),
            "1-bit quantile",
            rule.clone(),
            rule,
        ));
    }
    rules.push((
        "quantile(0.2/0.25)".into(),
        "1-bit quantile",
        c1("quantile(0.2)"),
        c1("quantile(0.25)"),
    ));
    rules.push(("mse".into(), "1-bit mse (kvq)", c1("mse"), c1("mse")));
    let mut out = Vec::new();
    let mut push = |name: String, family: &str, t: Option<SpanTreatment>| {
        if let Some(treatment) = t {
            out.push(Entry {
                name,
                family: family.to_string(),
                treatment,
            });
        }
    };
    for (name, family, k, v) in &rules {
        push(format!("1-bit {name}"), family, pair(k, v, false));
        push(format!("1-bit {name} +cal"), family, pair(k, v, true));
    }
    let shrink_k = c1("shrink(0.5)");
    let shrink_v = c1("shrink(0.3)");
    push(
        "1-bit keys only (shrink 0.5; values 8-bit)".into(),
        "one side",
        pair(&shrink_k, TOK8, false),
    );
    push(
        "1-bit values only (shrink 0.3; keys 8-bit)".into(),
        "one side",
        pair(TOK8, &shrink_v, false),
    );
    push(
        "1-bit token axis minmax (wrong axis)".into(),
        "wrong axis",
        pair(TOKEN_1BIT, TOKEN_1BIT, false),
    );
    // A little more than 1 bit, spent on the keys (which carry most of the damage).
    let q15 = c1("quantile(0.15)");
    let keys =
        |group: &str| format!("bits = 1, axis = channel, group = {group}, rule = quantile(0.15)");
    push(
        "keys quantile(0.15) per 128 tokens, values 1-bit quantile(0.15)".into(),
        "more bits on keys",
        pair(&keys("128"), &q15, false),
    );
    push(
        "keys quantile(0.15) per 32 tokens, values 1-bit quantile(0.15)".into(),
        "more bits on keys",
        pair(&keys("32"), &q15, false),
    );
    push(
        "keys 2-bit quantile(0.05), values 1-bit quantile(0.15)".into(),
        "more bits on keys",
        pair(
            "bits = 2, axis = channel, group = all, rule = quantile(0.05)",
            &q15,
            false,
        ),
    );
    push(
        "2-bit KIVI-like".into(),
        "reference",
        pair(KIVI2_K, KIVI2_V, false),
    );
    push(
        "4-bit per token".into(),
        "reference",
        pair(TOK4, TOK4, false),
    );
    push(
        "span dropped".into(),
        "dropped",
        Some(SpanTreatment::Dropped),
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_entry_is_built() {
        // 11 rules x (with, without calibration) + 2 one-sided + wrong axis + 3 with more bits
        // on keys + 2 references + drop.
        assert_eq!(super::ablation().len(), 31);
    }
}

#[derive(serde::Deserialize)]
struct EntryFile {
    entries: Vec<EntrySpec>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntrySpec {
    name: String,
    #[serde(default)]
    family: String,
    /// `key(...), value(...)[, calibrate = d]`; absent for the dropped span.
    cache: Option<String>,
    #[serde(default)]
    dropped: bool,
}

/// Reads an ablation of one's own: `{"entries": [{"name", "family"?, "cache": "key(...),
/// value(...)[, calibrate = d]"} or {"name", "dropped": true}]}`.
pub fn load_entries(path: &std::path::Path) -> Result<Vec<Entry>, StudyError> {
    let name = path.display().to_string();
    let bad = |what: String| StudyError::Manifest {
        path: name.clone(),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(|source| StudyError::Io {
        path: name.clone(),
        source,
    })?;
    let file: EntryFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if file.entries.is_empty() {
        return Err(bad("no entries".into()));
    }
    file.entries
        .into_iter()
        .map(|e| {
            let treatment = match (&e.cache, e.dropped) {
                (Some(text), false) => SpanTreatment::Quantized(
                    CacheScheme::parse(text).map_err(|err| bad(format!("{}: {err}", e.name)))?,
                ),
                (None, true) => SpanTreatment::Dropped,
                _ => {
                    return Err(bad(format!(
                        "{}: give either \"cache\" or \"dropped\": true",
                        e.name
                    )))
                }
            };
            Ok(Entry {
                name: e.name,
                family: e.family,
                treatment,
            })
        })
        .collect()
}
