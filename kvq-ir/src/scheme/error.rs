//! Errors of the scheme language: what is wrong, where, and what is allowed instead.

use std::fmt;

/// The keys a scheme takes, for hints.
pub const SCHEME_KEYS: &str = "bits, axis, group, rule, params, order";
/// The entries a cache scheme takes, for hints.
pub const CACHE_ENTRIES: &str = "key(...), value(...), calibrate = d";
/// The allowed rules, for hints.
pub const RULES: &str = "minmax, shrink(a), shrink(a, center = mid), quantile(p), mse (bits = 1)";

/// What is wrong with a scheme, independent of where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemeErrorKind {
    /// A key the language does not have.
    UnknownKey {
        /// The key as written.
        found: String,
        /// The keys allowed at this place.
        allowed: &'static str,
    },
    /// A key given twice.
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A required key or part is absent.
    Missing {
        /// What is missing, e.g. "`rule`" or "the `key(...)` part".
        what: String,
        /// How to write it.
        hint: String,
    },
    /// A rule argument out of its range, e.g. `shrink(1.5)`.
    BadArgument {
        /// The call as written, e.g. "shrink(1.5)".
        call: String,
        /// The allowed range, e.g. "the factor must be 0 < a <= 1".
        allowed: &'static str,
    },
    /// A well-formed value that the key does not accept.
    InvalidValue {
        /// The key, e.g. "bits".
        key: &'static str,
        /// The value as written.
        found: String,
        /// The allowed values.
        allowed: &'static str,
    },
    /// A value of the wrong kind: a word where a number belongs, a string literal, ...
    WrongKind {
        /// The key or argument, e.g. "bits".
        key: &'static str,
        /// What was expected, e.g. "an integer".
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A bare value where a `name = value` entry belongs, or the other way round.
    Misplaced {
        /// What was found.
        found: String,
        /// What belongs here.
        expected: &'static str,
    },
    /// The text could not be read as the grammar (text front end only).
    Syntax {
        /// What the reader found.
        found: String,
        /// What it expected.
        expected: &'static str,
    },
}

impl SchemeErrorKind {
    /// A one-line hint naming the valid values.
    pub fn hint(&self) -> String {
        match self {
            SchemeErrorKind::UnknownKey { allowed, .. } => format!("expected one of: {allowed}"),
            SchemeErrorKind::DuplicateKey { .. } => "each key may be given once".to_string(),
            SchemeErrorKind::Missing { hint, .. } => hint.clone(),
            SchemeErrorKind::InvalidValue { key, allowed, .. } => format!("{key}: {allowed}"),
            SchemeErrorKind::BadArgument { allowed, .. } => allowed.to_string(),
            SchemeErrorKind::WrongKind { key, expected, .. } => format!("{key} takes {expected}"),
            SchemeErrorKind::Misplaced { expected, .. } => format!("expected {expected}"),
            SchemeErrorKind::Syntax { expected, .. } => format!("expected {expected}"),
        }
    }
}

impl fmt::Display for SchemeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemeErrorKind::UnknownKey { found, .. } => {
                write!(f, "unknown key `{}`", echo(found))
            }
            SchemeErrorKind::DuplicateKey { key } => write!(f, "duplicate key `{}`", echo(key)),
            SchemeErrorKind::Missing { what, .. } => write!(f, "missing {what}"),
            SchemeErrorKind::InvalidValue { key, found, .. } => {
                write!(f, "`{key} = {}` is not allowed", echo(found))
            }
            SchemeErrorKind::BadArgument { call, .. } => {
                write!(f, "`{}` is not allowed", echo(call))
            }
            SchemeErrorKind::WrongKind {
                key,
                expected,
                found,
            } => write!(f, "{key} expects {expected}, found {}", echo(found)),
            SchemeErrorKind::Misplaced { found, expected } => {
                write!(f, "unexpected {}, expected {expected}", echo(found))
            }
            SchemeErrorKind::Syntax { found, expected } => {
                write!(f, "unexpected {}, expected {expected}", echo(found))
            }
        }
    }
}

/// A scheme error at a place in the source: a byte range for text, a token span for the macro.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeError<S> {
    /// Where the mistake is.
    pub span: S,
    /// What the mistake is.
    pub kind: SchemeErrorKind,
}

impl<S> SchemeError<S> {
    /// An error of `kind` at `span`.
    pub fn new(span: S, kind: SchemeErrorKind) -> Self {
        SchemeError { span, kind }
    }
}

impl<S> fmt::Display for SchemeError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.kind.hint())
    }
}

/// All the errors found in one scheme text, with the text for context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The text that was parsed.
    pub source: String,
    /// Every error found, in source order; never empty.
    pub errors: Vec<SchemeError<std::ops::Range<usize>>>,
}

/// The longest scheme text an error message repeats whole; longer text is cut to its start.
const ECHO_CHARS: usize = 80;
/// The most errors one message lists.
const ECHO_ERRORS: usize = 5;

/// `text` as an error message repeats it: whole when short, else its first [`ECHO_CHARS`]
/// characters and how long it is.
pub fn echo(text: &str) -> String {
    let chars = text.chars().count();
    if chars <= ECHO_CHARS {
        text.to_string()
    } else {
        let start: String = text.chars().take(ECHO_CHARS).collect();
        format!("{start}... ({chars} characters)")
    }
}

/// One line: `invalid scheme "<text>": <message> at column N (<hint>); <next error> ...`, the
/// text cut by [`echo`].
impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid scheme \"{}\": ", echo(&self.source))?;
        for (i, e) in self.errors.iter().take(ECHO_ERRORS).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let start = e.span.start.min(self.source.len());
            let column = self.source.get(..start).map_or(0, |s| s.chars().count()) + 1;
            write!(f, "{} at column {column} ({})", e.kind, e.kind.hint())?;
        }
        if self.errors.len() > ECHO_ERRORS {
            write!(f, "; and {} more errors", self.errors.len() - ECHO_ERRORS)?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}
