//! The surface syntax of the scheme language, generic over the span type.
//!
//! Two front ends produce it: the text lexer of [`super::text`] (spans are byte ranges) and the
//! `#[kv_quant]` macro (spans are `proc_macro2::Span`s). Both then hand it to
//! [`super::build`], the one place that decides what a scheme means and what is an error.
//!
//! Grammar (the same in text and in the attribute):
//! ```text
//! list  := entry ("," entry)* ","?
//! entry := IDENT "=" value          named entry, e.g. bits = 1
//!        | value                    positional entry, e.g. key(...) or 0.5
//! value := IDENT                    word, e.g. channel
//!        | NUMBER                   literal text, e.g. 0.5 or -1
//!        | IDENT "(" list? ")"      call, e.g. shrink(0.5, center = mid)
//! ```

/// The deepest nesting of calls (`f(g(...))`) a front end reads; deeper text is a syntax
/// error, so that no reader recurses without bound.
pub const MAX_NESTING: usize = 16;

/// One entry of a comma-separated list.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<S> {
    /// `name = value`.
    Named {
        /// The key, e.g. `bits`.
        name: String,
        /// Where the key is written.
        name_span: S,
        /// The right-hand side.
        value: Value<S>,
    },
    /// A bare value, e.g. `key(...)` or the `0.5` of `shrink(0.5)`.
    Positional(Value<S>),
}

/// A right-hand side.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<S> {
    /// An identifier such as `channel`, `all`, `minmax`.
    Word {
        /// The identifier.
        text: String,
        /// Where it is written.
        span: S,
    },
    /// A numeric literal, kept as written (a leading `-` included) so that each key can decide how
    /// to read it (integer, f32, f64).
    Number {
        /// The literal's digits, without any type suffix.
        text: String,
        /// Where it is written.
        span: S,
    },
    /// `name(entries)`.
    Call {
        /// The called name, e.g. `shrink`.
        name: String,
        /// Where the name is written.
        name_span: S,
        /// The arguments.
        args: Vec<Entry<S>>,
        /// The whole call, name to closing parenthesis.
        span: S,
    },
    /// Anything else the front end could read but the language has no use for (a string
    /// literal, a boolean, a path); `found` describes it for the error message.
    Other {
        /// What was found, e.g. "a string literal".
        found: String,
        /// Where it is written.
        span: S,
    },
}

impl<S: Clone> Value<S> {
    /// The span of the whole value.
    pub fn span(&self) -> S {
        match self {
            Value::Word { span, .. }
            | Value::Number { span, .. }
            | Value::Call { span, .. }
            | Value::Other { span, .. } => span.clone(),
        }
    }

    /// A short description of what the value is, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Word { text, .. } => format!("`{text}`"),
            Value::Number { text, .. } => format!("the number `{text}`"),
            Value::Call { name, .. } => format!("`{name}(...)`"),
            Value::Other { found, .. } => found.clone(),
        }
    }
}

impl<S: Clone> Entry<S> {
    /// The span of the whole entry's most telling token: the key for a named entry.
    pub fn span(&self) -> S {
        match self {
            Entry::Named { name_span, .. } => name_span.clone(),
            Entry::Positional(value) => value.span(),
        }
    }
}
