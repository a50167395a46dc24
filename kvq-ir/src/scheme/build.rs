//! From syntax to scheme: the one place that decides what each key accepts.
//!
//! Both front ends (text and `#[kv_quant]`) call [`build_scheme`] and [`build_cache`]; every error
//! found is reported, each at the offending token, not just the first.

use super::error::{SchemeError, SchemeErrorKind, CACHE_ENTRIES, RULES, SCHEME_KEYS};
use super::syntax::{Entry, Value};
use super::types::{
    Alpha, Axis, BitOrder, Bits, CacheScheme, Calibration, Center, Group, GroupSize, ParamType,
    Quantile, Rule, Scheme,
};

type Errors<S> = Vec<SchemeError<S>>;

/// Builds one tensor's scheme from its entries (`bits = 1, axis = channel, ...`); `whole` is the
/// span that missing-key errors point at.
pub fn build_scheme<S: Clone>(entries: &[Entry<S>], whole: S) -> Result<Scheme, Errors<S>> {
    let mut errors = Vec::new();
    let mut bits = None;
    let mut axis = None;
    let mut group = None;
    let mut rule = None;
    let mut params = None;
    let mut order = None;
    let mut rule_span = None;
    let mut seen: Vec<&str> = Vec::new();
    let mut unknown = false;

    for entry in entries {
        let (name, name_span, value) = match entry {
            Entry::Named {
                name,
                name_span,
                value,
            } => (name.as_str(), name_span, value),
            Entry::Positional(value) => {
                errors.push(SchemeError::new(
                    value.span(),
                    SchemeErrorKind::Misplaced {
                        found: value.describe(),
                        expected:
                            "`key = value` with a key among bits, axis, group, rule, params, order",
                    },
                ));
                continue;
            }
        };
        if seen.contains(&name) {
            errors.push(SchemeError::new(
                name_span.clone(),
                SchemeErrorKind::DuplicateKey {
                    key: name.to_string(),
                },
            ));
            continue;
        }
        let result = match name {
            "bits" => parse_bits(value).map(|v| bits = Some(v)),
            "axis" => parse_axis(value).map(|v| axis = Some(v)),
            "group" => parse_group(value).map(|v| group = Some(v)),
            "rule" => {
                rule_span = Some(value.span());
                parse_rule(value).map(|v| rule = Some(v))
            }
            "params" => parse_params(value).map(|v| params = Some(v)),
            "order" => parse_order(value).map(|v| order = Some(v)),
            _ => {
                unknown = true;
                errors.push(SchemeError::new(
                    name_span.clone(),
                    SchemeErrorKind::UnknownKey {
                        found: name.to_string(),
                        allowed: SCHEME_KEYS,
                    },
                ));
                continue;
            }
        };
        seen.push(name);
        if let Err(mut e) = result {
            errors.append(&mut e);
        }
    }

    let required = [
        ("bits", seen.contains(&"bits"), "1 | 2 | 4 | 8"),
        ("axis", seen.contains(&"axis"), "channel | token"),
        ("group", seen.contains(&"group"), "all | N"),
        (
            "rule",
            seen.contains(&"rule"),
            "minmax | shrink(a) | shrink(a, center = mid) | quantile(p) | mse",
        ),
    ];
    // After an unknown key (most often a typo of a required one) a "missing" error would only
    // repeat the same mistake.
    for (key, present, values) in required {
        if !present && !unknown {
            errors.push(SchemeError::new(
                whole.clone(),
                SchemeErrorKind::Missing {
                    what: format!("`{key}`"),
                    hint: format!("add {key} = {values}"),
                },
            ));
        }
    }
    if let (Some(Rule::Mse), Some(bits), Some(span)) = (rule, bits, rule_span) {
        if bits != Bits::B1 {
            errors.push(SchemeError::new(
                span,
                SchemeErrorKind::InvalidValue {
                    key: "rule",
                    found: format!("mse` with `bits = {bits}"),
                    allowed: "mse is the two-level rule: it needs bits = 1",
                },
            ));
        }
    }
    match (bits, axis, group, rule) {
        (Some(bits), Some(axis), Some(group), Some(rule)) if errors.is_empty() => Ok(Scheme {
            bits,
            axis,
            group,
            rule,
            params: params.unwrap_or(ParamType::F16),
            order: order.unwrap_or(BitOrder::Msb),
        }),
        _ => Err(errors),
    }
}

/// Builds a cache scheme from `key(...), value(...), calibrate = d`; `whole` is the span that
/// missing-part errors point at.
pub fn build_cache<S: Clone>(entries: &[Entry<S>], whole: S) -> Result<CacheScheme, Errors<S>> {
    let mut errors = Vec::new();
    let mut key: Option<Option<Scheme>> = None;
    let mut value: Option<Option<Scheme>> = None;
    let mut calibrate: Option<Option<Calibration>> = None;

    for entry in entries {
        match entry {
            Entry::Positional(Value::Call {
                name,
                name_span,
                args,
                span,
            }) if name == "key" || name == "value" => {
                let slot = if name == "key" { &mut key } else { &mut value };
                if slot.is_some() {
                    errors.push(SchemeError::new(
                        name_span.clone(),
                        SchemeErrorKind::DuplicateKey { key: name.clone() },
                    ));
                    continue;
                }
                match build_scheme(args, span.clone()) {
                    Ok(s) => *slot = Some(Some(s)),
                    Err(mut e) => {
                        *slot = Some(None);
                        errors.append(&mut e);
                    }
                }
            }
            Entry::Named {
                name,
                name_span,
                value: v,
            } if name == "calibrate" => {
                if calibrate.is_some() {
                    errors.push(SchemeError::new(
                        name_span.clone(),
                        SchemeErrorKind::DuplicateKey { key: name.clone() },
                    ));
                    continue;
                }
                match parse_calibration(v) {
                    Ok(d) => calibrate = Some(Some(d)),
                    Err(mut e) => {
                        calibrate = Some(None);
                        errors.append(&mut e);
                    }
                }
            }
            Entry::Named {
                name, name_span, ..
            } if name == "key" || name == "value" => errors.push(SchemeError::new(
                name_span.clone(),
                SchemeErrorKind::Misplaced {
                    found: format!("`{name} = ...`"),
                    expected: "`key(bits = ..., ...)` / `value(bits = ..., ...)`",
                },
            )),
            Entry::Named {
                name, name_span, ..
            } => errors.push(SchemeError::new(
                name_span.clone(),
                SchemeErrorKind::UnknownKey {
                    found: name.clone(),
                    allowed: CACHE_ENTRIES,
                },
            )),
            Entry::Positional(Value::Word { text, span }) if text == "key" || text == "value" => {
                errors.push(SchemeError::new(
                    span.clone(),
                    SchemeErrorKind::Misplaced {
                        found: format!("`{text}` without its scheme"),
                        expected: "`key(bits = ..., ...)` / `value(bits = ..., ...)`",
                    },
                ))
            }
            Entry::Positional(Value::Call {
                name, name_span, ..
            }) if name == "calibrate" => errors.push(SchemeError::new(
                name_span.clone(),
                SchemeErrorKind::Misplaced {
                    found: "`calibrate(...)`".to_string(),
                    expected: "`calibrate = d` with d > 0",
                },
            )),
            Entry::Positional(Value::Call {
                name, name_span, ..
            })
            | Entry::Positional(Value::Word {
                text: name,
                span: name_span,
            }) => errors.push(SchemeError::new(
                name_span.clone(),
                SchemeErrorKind::UnknownKey {
                    found: name.clone(),
                    allowed: CACHE_ENTRIES,
                },
            )),
            Entry::Positional(v) => errors.push(SchemeError::new(
                v.span(),
                SchemeErrorKind::Misplaced {
                    found: v.describe(),
                    expected: "key(...), value(...) or calibrate = d",
                },
            )),
        }
    }
    let parts = [
        ("key", key.is_some(), "0.5"),
        ("value", value.is_some(), "0.3"),
    ];
    for (part, present, alpha) in parts {
        if !present {
            errors.push(SchemeError::new(
                whole.clone(),
                SchemeErrorKind::Missing {
                    what: format!("the `{part}(...)` part"),
                    hint: format!(
                        "add {part}(bits = 1, axis = channel, group = all, rule = shrink({alpha}))"
                    ),
                },
            ));
        }
    }
    match (key, value) {
        (Some(Some(key)), Some(Some(value))) if errors.is_empty() => Ok(CacheScheme {
            key,
            value,
            calibrate: calibrate.flatten(),
        }),
        _ => Err(errors),
    }
}

fn one<S, T>(span: S, kind: SchemeErrorKind) -> Result<T, Errors<S>> {
    Err(vec![SchemeError::new(span, kind)])
}

/// The literal text of a number, or an error saying `key` expects `expected`.
fn number<'v, S: Clone>(
    value: &'v Value<S>,
    key: &'static str,
    expected: &'static str,
) -> Result<(&'v str, S), Errors<S>> {
    match value {
        Value::Number { text, span } => Ok((text.as_str(), span.clone())),
        other => one(
            other.span(),
            SchemeErrorKind::WrongKind {
                key,
                expected,
                found: other.describe(),
            },
        ),
    }
}

/// The identifier of a word, or an error saying `key` expects one of `allowed`.
fn word<'v, S: Clone>(
    value: &'v Value<S>,
    key: &'static str,
    allowed: &'static str,
) -> Result<(&'v str, S), Errors<S>> {
    match value {
        Value::Word { text, span } => Ok((text.as_str(), span.clone())),
        other => one(
            other.span(),
            SchemeErrorKind::WrongKind {
                key,
                expected: allowed,
                found: other.describe(),
            },
        ),
    }
}

fn invalid<S, T>(
    span: S,
    key: &'static str,
    found: &str,
    allowed: &'static str,
) -> Result<T, Errors<S>> {
    one(
        span,
        SchemeErrorKind::InvalidValue {
            key,
            found: found.to_string(),
            allowed,
        },
    )
}

fn bad_argument<S, T>(
    span: S,
    call: &str,
    found: &str,
    allowed: &'static str,
) -> Result<T, Errors<S>> {
    one(
        span,
        SchemeErrorKind::BadArgument {
            call: format!("{call}({found})"),
            allowed,
        },
    )
}

fn parse_integer(text: &str) -> Option<u64> {
    text.replace('_', "").parse::<u64>().ok()
}

fn parse_bits<S: Clone>(value: &Value<S>) -> Result<Bits, Errors<S>> {
    const ALLOWED: &str = "one of 1, 2, 4, 8";
    let (text, span) = number(value, "bits", "an integer: 1, 2, 4 or 8")?;
    parse_integer(text)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(Bits::from_width)
        .map_or_else(|| invalid(span, "bits", text, ALLOWED), Ok)
}

fn parse_axis<S: Clone>(value: &Value<S>) -> Result<Axis, Errors<S>> {
    const ALLOWED: &str = "channel or token";
    let (text, span) = word(value, "axis", ALLOWED)?;
    match text {
        "channel" => Ok(Axis::Channel),
        "token" => Ok(Axis::Token),
        _ => invalid(span, "axis", text, ALLOWED),
    }
}

fn parse_group<S: Clone>(value: &Value<S>) -> Result<Group, Errors<S>> {
    const ALLOWED: &str = "`all` or a positive integer N";
    match value {
        Value::Word { text, .. } if text == "all" => Ok(Group::All),
        Value::Word { text, span } => invalid(span.clone(), "group", text, ALLOWED),
        Value::Number { text, span } => parse_integer(text)
            .and_then(|n| u32::try_from(n).ok())
            .and_then(GroupSize::new)
            .map(Group::Size)
            .map_or_else(|| invalid(span.clone(), "group", text, ALLOWED), Ok),
        other => one(
            other.span(),
            SchemeErrorKind::WrongKind {
                key: "group",
                expected: ALLOWED,
                found: other.describe(),
            },
        ),
    }
}

fn parse_params<S: Clone>(value: &Value<S>) -> Result<ParamType, Errors<S>> {
    const ALLOWED: &str = "f16 or f32";
    let (text, span) = word(value, "params", ALLOWED)?;
    match text {
        "f16" => Ok(ParamType::F16),
        "f32" => Ok(ParamType::F32),
        _ => invalid(span, "params", text, ALLOWED),
    }
}

fn parse_order<S: Clone>(value: &Value<S>) -> Result<BitOrder, Errors<S>> {
    const ALLOWED: &str = "msb or lsb";
    let (text, span) = word(value, "order", ALLOWED)?;
    match text {
        "msb" => Ok(BitOrder::Msb),
        "lsb" => Ok(BitOrder::Lsb),
        _ => invalid(span, "order", text, ALLOWED),
    }
}

fn parse_calibration<S: Clone>(value: &Value<S>) -> Result<Calibration, Errors<S>> {
    const ALLOWED: &str = "a finite number d > 0, e.g. calibrate = 3.0";
    let (text, span) = number(value, "calibrate", ALLOWED)?;
    text.replace('_', "")
        .parse::<f32>()
        .ok()
        .and_then(Calibration::new)
        .map_or_else(|| invalid(span, "calibrate", text, ALLOWED), Ok)
}

fn parse_rule<S: Clone>(value: &Value<S>) -> Result<Rule, Errors<S>> {
    match value {
        Value::Word { text, .. } if text == "minmax" => Ok(Rule::MinMax),
        Value::Word { text, .. } if text == "mse" => Ok(Rule::Mse),
        Value::Word { text, span } if text == "shrink" || text == "quantile" => one(
            span.clone(),
            SchemeErrorKind::Missing {
                what: format!("the argument of `{text}`"),
                hint: format!(
                    "write {}",
                    if text == "shrink" {
                        "shrink(a) with 0 < a <= 1"
                    } else {
                        "quantile(p) with 0 <= p < 0.5"
                    }
                ),
            },
        ),
        Value::Call {
            name,
            name_span,
            args,
            span,
        } => match name.as_str() {
            "shrink" => parse_shrink(args, span.clone()),
            "quantile" => parse_quantile(args, span.clone()),
            _ => invalid(name_span.clone(), "rule", name, RULES),
        },
        Value::Word { text, span } => invalid(span.clone(), "rule", text, RULES),
        other => one(
            other.span(),
            SchemeErrorKind::WrongKind {
                key: "rule",
                expected: RULES,
                found: other.describe(),
            },
        ),
    }
}

/// The single positional argument of a rule call, or errors about extra or missing ones.
fn single_positional<'a, S: Clone>(
    args: &'a [Entry<S>],
    call: S,
    what: &'static str,
    how: &'static str,
) -> (Option<&'a Value<S>>, Vec<&'a Entry<S>>, Errors<S>) {
    let mut errors = Vec::new();
    let mut positional = None;
    let mut named = Vec::new();
    for arg in args {
        match arg {
            Entry::Positional(v) if positional.is_none() => positional = Some(v),
            Entry::Positional(v) => errors.push(SchemeError::new(
                v.span(),
                SchemeErrorKind::Misplaced {
                    found: v.describe(),
                    expected: how,
                },
            )),
            Entry::Named { .. } => named.push(arg),
        }
    }
    if positional.is_none() {
        errors.push(SchemeError::new(
            call,
            SchemeErrorKind::Missing {
                what: what.to_string(),
                hint: format!("write {how}"),
            },
        ));
    }
    (positional, named, errors)
}

fn parse_shrink<S: Clone>(args: &[Entry<S>], call: S) -> Result<Rule, Errors<S>> {
    const HOW: &str = "shrink(a) or shrink(a, center = mid) with 0 < a <= 1";
    let (alpha, named, mut errors) = single_positional(args, call, "the argument of `shrink`", HOW);
    let mut center = Center::Zero;
    let mut center_seen = false;
    for arg in named {
        if let Entry::Named {
            name,
            name_span,
            value,
        } = arg
        {
            if name != "center" {
                errors.push(SchemeError::new(
                    name_span.clone(),
                    SchemeErrorKind::UnknownKey {
                        found: name.clone(),
                        allowed: "center",
                    },
                ));
            } else if center_seen {
                errors.push(SchemeError::new(
                    name_span.clone(),
                    SchemeErrorKind::DuplicateKey { key: name.clone() },
                ));
            } else {
                center_seen = true;
                match word(value, "center", "zero or mid") {
                    Ok(("mid", _)) => center = Center::Mid,
                    Ok(("zero", _)) => center = Center::Zero,
                    Ok((text, span)) => errors.push(SchemeError::new(
                        span,
                        SchemeErrorKind::InvalidValue {
                            key: "center",
                            found: text.to_string(),
                            allowed: "zero or mid",
                        },
                    )),
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
    }
    let alpha = alpha.map(|v| {
        let (text, span) = number(v, "shrink", "a number 0 < a <= 1")?;
        text.replace('_', "")
            .parse::<f32>()
            .ok()
            .and_then(Alpha::new)
            .map_or_else(
                || bad_argument(span, "shrink", text, "the factor must be 0 < a <= 1"),
                Ok,
            )
    });
    match alpha {
        Some(Ok(alpha)) if errors.is_empty() => Ok(Rule::Shrink { alpha, center }),
        Some(Err(mut e)) => {
            errors.append(&mut e);
            Err(errors)
        }
        _ => Err(errors),
    }
}

fn parse_quantile<S: Clone>(args: &[Entry<S>], call: S) -> Result<Rule, Errors<S>> {
    const HOW: &str = "quantile(p) with 0 <= p < 0.5";
    let (p, named, mut errors) = single_positional(args, call, "the argument of `quantile`", HOW);
    for arg in named {
        if let Entry::Named {
            name, name_span, ..
        } = arg
        {
            errors.push(SchemeError::new(
                name_span.clone(),
                SchemeErrorKind::Misplaced {
                    found: format!("`{name} = ...`"),
                    expected: "quantile(p) with one level 0 <= p < 0.5 and no named arguments",
                },
            ));
        }
    }
    let p = p.map(|v| {
        let (text, span) = number(v, "quantile", "a number 0 <= p < 0.5")?;
        text.replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(Quantile::new)
            .map_or_else(
                || {
                    bad_argument(
                        span,
                        "quantile",
                        text,
                        "the level must be 0 <= p < 0.5 (lo = Q(p), hi = Q(1 - p))",
                    )
                },
                Ok,
            )
    });
    match p {
        Some(Ok(p)) if errors.is_empty() => Ok(Rule::Quantile(p)),
        Some(Err(mut e)) => {
            errors.append(&mut e);
            Err(errors)
        }
        _ => Err(errors),
    }
}
