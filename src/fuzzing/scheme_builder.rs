//! Target `scheme_builder`: arbitrary syntax trees ([`Entry`] / [`Value`] with span type `()`,
//! what the `#[kv_quant]` macro produces) through [`build_scheme`] and [`build_cache`].
//!
//! Trees nest calls at most [`MAX_NESTING`] deep, as both front ends guarantee. Properties:
//! building never panics; errors render; a built scheme's canonical text parses back to it.

use arbitrary::{Result, Unstructured};
use kvq_ir::scheme::build::{build_cache, build_scheme};
use kvq_ir::scheme::syntax::{Entry, Value, MAX_NESTING};

use crate::{CacheScheme, Scheme};

/// Words the language knows (keys, values, rule names), and a few it does not.
const WORDS: &[&str] = &[
    "bits",
    "axis",
    "group",
    "rule",
    "params",
    "order",
    "key",
    "value",
    "calibrate",
    "center",
    "channel",
    "token",
    "all",
    "minmax",
    "shrink",
    "quantile",
    "mse",
    "f16",
    "f32",
    "msb",
    "lsb",
    "mid",
    "zero",
    "f64",
    "row",
    "",
    "_",
    "true",
];

/// Numbers as the front ends keep them (literal text), including ones no key accepts.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "7",
    "8",
    "16",
    "32",
    "64",
    "0.5",
    "0.3",
    "0.05",
    "0.49",
    "0.5",
    "1.0",
    "-1",
    "-0.0",
    "1e3",
    "1e40",
    "1e-50",
    "4294967296",
    "18446744073709551616",
    "NaN",
    "inf",
    "0x10",
    "1_0",
    ".",
    "-",
    "",
];

fn text(u: &mut Unstructured<'_>, known: &[&str]) -> Result<String> {
    if u.ratio(7u8, 8)? {
        Ok(u.choose(known)?.to_string())
    } else {
        u.arbitrary()
    }
}

fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<Value<()>> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 | 1 => Value::Word {
            text: text(u, WORDS)?,
            span: (),
        },
        2 | 3 => Value::Number {
            text: text(u, NUMBERS)?,
            span: (),
        },
        4 if depth < MAX_NESTING => Value::Call {
            name: text(u, WORDS)?,
            name_span: (),
            args: entries(u, depth + 1)?,
            span: (),
        },
        _ => Value::Other {
            found: u.arbitrary()?,
            span: (),
        },
    })
}

/// A list of entries inside `depth` enclosing calls.
fn entries(u: &mut Unstructured<'_>, depth: usize) -> Result<Vec<Entry<()>>> {
    let n = u.int_in_range(0u8..=8)?;
    let mut out = Vec::with_capacity(n.into());
    for _ in 0..n {
        if u.is_empty() {
            break;
        }
        out.push(if u.ratio(3u8, 4)? {
            Entry::Named {
                name: text(u, WORDS)?,
                name_span: (),
                value: value(u, depth)?,
            }
        } else {
            Entry::Positional(value(u, depth)?)
        });
    }
    Ok(out)
}

/// The deepest nesting of calls in `entries`.
fn depth(entries: &[Entry<()>]) -> usize {
    entries
        .iter()
        .map(|e| match e {
            Entry::Named { value, .. } | Entry::Positional(value) => match value {
                Value::Call { args, .. } => 1 + depth(args),
                _ => 0,
            },
        })
        .max()
        .unwrap_or(0)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(tree) = entries(&mut u, 0) else {
        return;
    };
    assert!(depth(&tree) <= MAX_NESTING, "generator nests too deep");
    match build_scheme(&tree, ()) {
        Ok(scheme) => {
            let canonical = scheme.to_string();
            match Scheme::parse(&canonical) {
                Ok(back) => assert_eq!(back, scheme, "{tree:?} -> {canonical:?}"),
                Err(e) => panic!("{tree:?} built, but its text {canonical:?} does not parse: {e}"),
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an empty error list for {tree:?}");
            errors.iter().for_each(|e| drop(e.to_string()));
        }
    }
    match build_cache(&tree, ()) {
        Ok(cache) => {
            let canonical = cache.to_string();
            match CacheScheme::parse(&canonical) {
                Ok(back) => assert_eq!(back, cache, "{tree:?} -> {canonical:?}"),
                Err(e) => panic!("{tree:?} built, but its text {canonical:?} does not parse: {e}"),
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an empty error list for {tree:?}");
            errors.iter().for_each(|e| drop(e.to_string()));
        }
    }
}
