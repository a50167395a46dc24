//! Reading the attribute's tokens into the shared scheme syntax ([`Entry`], [`Value`]).
//!
//! This only recognises shapes (word, number, call, `name = value`); what they mean is decided by
//! `kvq_ir::scheme::build`, shared with the command line.

use kvq_ir::scheme::syntax::{Entry, Value, MAX_NESTING};
use kvq_ir::scheme::{SchemeError, SchemeErrorKind};
use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::Lit;

/// Where a piece of the attribute is written: its first and last token.
///
/// Stable Rust cannot join two spans into one, but an error spanned from `first` to `last` is
/// still reported over the whole range (as `syn::Error::new_spanned` does).
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// The first token.
    pub first: Span,
    /// The last token.
    pub last: Span,
}

impl Place {
    /// The place of a single token.
    pub fn token(span: Span) -> Place {
        Place {
            first: span,
            last: span,
        }
    }

    /// From the start of `first` to the end of `last`.
    fn range(first: Span, last: Span) -> Place {
        Place { first, last }
    }
}

/// Errors found while reading, each at its token.
pub type Errors = Vec<SchemeError<Place>>;

const ENTRY: &str = "an entry: `name = value` or `name(...)`";

/// Reads a comma-separated list `entry, entry, ...` (a trailing comma is allowed), reporting
/// every syntax error rather than the first.
pub fn entries(tokens: TokenStream) -> Result<Vec<Entry<Place>>, Errors> {
    entries_at(tokens, 0)
}

/// [`entries`] inside `depth` calls.
fn entries_at(tokens: TokenStream, depth: usize) -> Result<Vec<Entry<Place>>, Errors> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut chunk = Vec::new();
    let mut read = |chunk: &mut Vec<TokenTree>, errors: &mut Errors| {
        match entry(chunk, depth) {
            Ok(e) => entries.push(e),
            Err(mut e) => errors.append(&mut e),
        }
        chunk.clear();
    };
    for token in tokens {
        match token {
            TokenTree::Punct(comma) if comma.as_char() == ',' => {
                if chunk.is_empty() {
                    errors.push(syntax(Place::token(comma.span()), "`,`", ENTRY));
                } else {
                    read(&mut chunk, &mut errors);
                }
            }
            other => chunk.push(other),
        }
    }
    if !chunk.is_empty() {
        read(&mut chunk, &mut errors);
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// `name = value` or a bare value; `tokens` is not empty.
fn entry(tokens: &[TokenTree], depth: usize) -> Result<Entry<Place>, Errors> {
    if let [TokenTree::Ident(name), TokenTree::Punct(eq), rest @ ..] = tokens {
        if eq.as_char() == '=' {
            let value = if rest.is_empty() {
                // Let the builder say what this key takes.
                Value::Other {
                    found: "no value".to_string(),
                    span: Place::range(name.span(), eq.span()),
                }
            } else {
                value(rest, depth)?
            };
            return Ok(Entry::Named {
                name: name.unraw().to_string(),
                name_span: Place::token(name.span()),
                value,
            });
        }
    }
    Ok(Entry::Positional(value(tokens, depth)?))
}

/// One value; `tokens` is not empty. Tokens after a complete value are a syntax error.
fn value(tokens: &[TokenTree], depth: usize) -> Result<Value<Place>, Errors> {
    let whole = Place::range(tokens[0].span(), tokens[tokens.len() - 1].span());
    let (value, used) = match tokens {
        [TokenTree::Ident(name), TokenTree::Group(args), ..]
            if args.delimiter() == Delimiter::Parenthesis =>
        {
            if depth >= MAX_NESTING {
                return Err(vec![syntax(
                    Place::token(name.span()),
                    &format!("`{name}(` nested deeper than {MAX_NESTING} calls"),
                    "at most 16 nested calls",
                )]);
            }
            let value = Value::Call {
                name: name.unraw().to_string(),
                name_span: Place::token(name.span()),
                args: entries_at(args.stream(), depth + 1)?,
                span: Place::range(name.span(), args.span_close()),
            };
            (value, 2)
        }
        [TokenTree::Ident(_), TokenTree::Punct(colon), ..] if colon.as_char() == ':' => {
            return Ok(other("a path", whole));
        }
        [TokenTree::Ident(word), ..] => {
            let span = Place::token(word.span());
            let value = match word.to_string().as_str() {
                "true" | "false" => other("a boolean", span),
                _ => Value::Word {
                    text: word.unraw().to_string(),
                    span,
                },
            };
            (value, 1)
        }
        [TokenTree::Punct(minus), TokenTree::Literal(literal), ..] if minus.as_char() == '-' => {
            let span = Place::range(minus.span(), literal.span());
            match number(&Lit::new(literal.clone())) {
                Some(digits) => (
                    Value::Number {
                        text: format!("-{digits}"),
                        span,
                    },
                    2,
                ),
                None => return Ok(other("an expression", whole)),
            }
        }
        [TokenTree::Literal(literal), ..] => {
            let span = Place::token(literal.span());
            let lit = Lit::new(literal.clone());
            let value = match number(&lit) {
                Some(text) => Value::Number { text, span },
                None => other(describe_literal(&lit), span),
            };
            (value, 1)
        }
        _ => return Ok(other("an expression", whole)),
    };
    match tokens.get(used) {
        None => Ok(value),
        Some(extra) => Err(vec![syntax(
            Place::token(extra.span()),
            &describe_token(extra),
            "`,`",
        )]),
    }
}

/// The base-10 digits of an integer or float literal, without a type suffix.
fn number(lit: &Lit) -> Option<String> {
    match lit {
        Lit::Int(int) => Some(int.base10_digits().to_string()),
        Lit::Float(float) => Some(float.base10_digits().to_string()),
        _ => None,
    }
}

fn describe_literal(lit: &Lit) -> &'static str {
    match lit {
        Lit::Str(_) => "a string literal",
        Lit::ByteStr(_) => "a byte string literal",
        Lit::CStr(_) => "a C string literal",
        Lit::Byte(_) => "a byte literal",
        Lit::Char(_) => "a character literal",
        Lit::Bool(_) => "a boolean",
        _ => "a literal",
    }
}

fn describe_token(token: &TokenTree) -> String {
    match token {
        TokenTree::Group(group) => match group.delimiter() {
            Delimiter::Parenthesis => "`(`".to_string(),
            Delimiter::Bracket => "`[`".to_string(),
            Delimiter::Brace => "`{`".to_string(),
            Delimiter::None => "an expression".to_string(),
        },
        TokenTree::Literal(literal) => format!("`{literal}`"),
        TokenTree::Ident(ident) => format!("`{ident}`"),
        TokenTree::Punct(punct) => format!("`{}`", punct.as_char()),
    }
}

fn other(found: &str, span: Place) -> Value<Place> {
    Value::Other {
        found: found.to_string(),
        span,
    }
}

fn syntax(span: Place, found: &str, expected: &'static str) -> SchemeError<Place> {
    SchemeError::new(
        span,
        SchemeErrorKind::Syntax {
            found: found.to_string(),
            expected,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    /// The entries with spans dropped, for comparison.
    fn read(tokens: TokenStream) -> Vec<Entry<()>> {
        fn value(v: Value<Place>) -> Value<()> {
            match v {
                Value::Word { text, .. } => Value::Word { text, span: () },
                Value::Number { text, .. } => Value::Number { text, span: () },
                Value::Call { name, args, .. } => Value::Call {
                    name,
                    name_span: (),
                    args: args.into_iter().map(entry).collect(),
                    span: (),
                },
                Value::Other { found, .. } => Value::Other { found, span: () },
            }
        }
        fn entry(e: Entry<Place>) -> Entry<()> {
            match e {
                Entry::Named { name, value: v, .. } => Entry::Named {
                    name,
                    name_span: (),
                    value: value(v),
                },
                Entry::Positional(v) => Entry::Positional(value(v)),
            }
        }
        entries(tokens).unwrap().into_iter().map(entry).collect()
    }

    fn named(name: &str, value: Value<()>) -> Entry<()> {
        Entry::Named {
            name: name.to_string(),
            name_span: (),
            value,
        }
    }

    fn number(text: &str) -> Value<()> {
        Value::Number {
            text: text.to_string(),
            span: (),
        }
    }

    fn found(what: &str) -> Value<()> {
        Value::Other {
            found: what.to_string(),
            span: (),
        }
    }

    #[test]
    fn reads_words_numbers_calls_and_trailing_commas() {
        let entries = read(quote!(
            key(bits = 1, rule = shrink(0.5f32, center = mid),),
            calibrate = -3.0,
        ));
        let shrink = Value::Call {
            name: "shrink".to_string(),
            name_span: (),
            args: vec![
                Entry::Positional(number("0.5")),
                named(
                    "center",
                    Value::Word {
                        text: "mid".to_string(),
                        span: (),
                    },
                ),
            ],
            span: (),
        };
        let key = Value::Call {
            name: "key".to_string(),
            name_span: (),
            args: vec![named("bits", number("1")), named("rule", shrink)],
            span: (),
        };
        assert_eq!(
            entries,
            vec![Entry::Positional(key), named("calibrate", number("-3.0"))]
        );
    }

    #[test]
    fn other_tokens_become_descriptions_for_the_builder() {
        let entries = read(quote!(a = "1", b = true, c = x::y, d = 'c', e = [1], f =));
        let descriptions: Vec<_> = entries
            .into_iter()
            .map(|e| match e {
                Entry::Named {
                    value: Value::Other { found, .. },
                    ..
                } => found,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            descriptions,
            [
                "a string literal",
                "a boolean",
                "a path",
                "a character literal",
                "an expression",
                "no value"
            ]
        );
        assert_eq!(read(quote!(x = 0x10)), vec![named("x", number("16"))]);
        assert_eq!(
            read(quote!(x = -y)),
            vec![named("x", found("an expression"))]
        );
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let mut nested: TokenStream = quote!(0.5);
        for _ in 0..MAX_NESTING + 1 {
            nested = quote!(f(#nested));
        }
        let errors = entries(quote!(rule = #nested)).unwrap_err();
        assert!(errors[0].kind.to_string().contains("nested deeper than 16"));
        let mut ok: TokenStream = quote!(0.5);
        for _ in 0..MAX_NESTING {
            ok = quote!(f(#ok));
        }
        assert!(entries(quote!(rule = #ok)).is_ok());
    }

    #[test]
    fn reports_every_syntax_error() {
        let errors = entries(quote!(, a = 1 2, key(b = 1 + 1))).unwrap_err();
        let kinds: Vec<String> = errors.iter().map(|e| e.kind.to_string()).collect();
        assert_eq!(
            kinds,
            [
                "unexpected `,`, expected an entry: `name = value` or `name(...)`",
                "unexpected `2`, expected `,`",
                "unexpected `+`, expected `,`",
            ]
        );
    }
}
