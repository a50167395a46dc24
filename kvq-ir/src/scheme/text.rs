//! The text front end: reads `bits = 1, axis = channel, group = all, rule = quantile(0.2)` into
//! [`Entry`] syntax with byte-range spans, for [`super::build`] to give meaning to.

use std::ops::Range;

use super::error::{SchemeError, SchemeErrorKind};
use super::syntax::{Entry, Value, MAX_NESTING};

type Span = Range<usize>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Number(String),
    Equals,
    Comma,
    Open,
    Close,
    Other(char),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("`{s}`"),
            Token::Number(s) => format!("the number `{s}`"),
            Token::Equals => "`=`".into(),
            Token::Comma => "`,`".into(),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Other(c) => format!("`{c}`"),
        }
    }
}

fn lex(text: &str) -> Vec<(Token, Span)> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '=' => Token::Equals,
            ',' => Token::Comma,
            '(' => Token::Open,
            ')' => Token::Close,
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = c.to_string();
                while let Some(&(_, n)) = chars.peek() {
                    if !(n.is_ascii_alphanumeric() || n == '_') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                Token::Ident(s)
            }
            c if c.is_ascii_digit() || c == '.' || c == '-' || c == '+' => {
                let mut s = c.to_string();
                while let Some(&(_, n)) = chars.peek() {
                    let exponent_sign = (n == '-' || n == '+') && s.ends_with(['e', 'E']);
                    if !(n.is_ascii_alphanumeric() || n == '.' || n == '_' || exponent_sign) {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                Token::Number(s)
            }
            other => Token::Other(other),
        };
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        tokens.push((token, start..end));
    }
    tokens
}

struct Parser {
    tokens: Vec<(Token, Span)>,
    pos: usize,
    end: usize,
    /// Calls entered and not yet closed.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn span(&self) -> Span {
        self.tokens
            .get(self.pos)
            .map_or(self.end..self.end, |(_, s)| s.clone())
    }

    fn error(&self, expected: &'static str) -> SchemeError<Span> {
        let found = self
            .peek()
            .map_or_else(|| "end of text".to_string(), Token::describe);
        SchemeError::new(self.span(), SchemeErrorKind::Syntax { found, expected })
    }

    /// `list := entry ("," entry)* ","?`, up to a `)` (inside a call) or the end.
    fn list(&mut self, nested: bool) -> Result<Vec<Entry<Span>>, SchemeError<Span>> {
        let mut entries = Vec::new();
        loop {
            match self.peek() {
                None if !nested => return Ok(entries),
                Some(Token::Close) if nested => return Ok(entries),
                _ => {}
            }
            entries.push(self.entry()?);
            match self.peek() {
                Some(Token::Comma) => self.pos += 1,
                None if !nested => return Ok(entries),
                Some(Token::Close) if nested => return Ok(entries),
                _ => {
                    return Err(self.error(if nested {
                        "`,` or `)`"
                    } else {
                        "`,` or the end"
                    }))
                }
            }
        }
    }

    fn entry(&mut self) -> Result<Entry<Span>, SchemeError<Span>> {
        if let (Some((Token::Ident(name), name_span)), Some((Token::Equals, _))) =
            (self.tokens.get(self.pos), self.tokens.get(self.pos + 1))
        {
            let (name, name_span) = (name.clone(), name_span.clone());
            self.pos += 2;
            let value = self.value()?;
            return Ok(Entry::Named {
                name,
                name_span,
                value,
            });
        }
        Ok(Entry::Positional(self.value()?))
    }

    fn value(&mut self) -> Result<Value<Span>, SchemeError<Span>> {
        let span = self.span();
        match self.peek().cloned() {
            Some(Token::Ident(text)) => {
                self.pos += 1;
                if self.peek() != Some(&Token::Open) {
                    return Ok(Value::Word { text, span });
                }
                if self.depth >= MAX_NESTING {
                    return Err(SchemeError::new(
                        span,
                        SchemeErrorKind::Syntax {
                            found: format!("`{text}(` nested deeper than {MAX_NESTING} calls"),
                            expected: "at most 16 nested calls",
                        },
                    ));
                }
                self.pos += 1;
                self.depth += 1;
                let args = self.list(true)?;
                self.depth -= 1;
                let close = self.span();
                self.pos += 1;
                Ok(Value::Call {
                    name: text,
                    name_span: span.clone(),
                    args,
                    span: span.start..close.end,
                })
            }
            Some(Token::Number(text)) => {
                self.pos += 1;
                Ok(Value::Number { text, span })
            }
            _ => Err(self.error("a value (a word, a number or `name(...)`)")),
        }
    }
}

/// Reads a comma-separated entry list; a syntax error stops at the first unreadable token.
pub fn parse_entries(text: &str) -> Result<Vec<Entry<Span>>, SchemeError<Span>> {
    let mut parser = Parser {
        tokens: lex(text),
        pos: 0,
        end: text.len(),
        depth: 0,
    };
    parser.list(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_calls_and_numbers() {
        let entries = parse_entries("rule = shrink(0.5, center = mid), x = -1e-3").unwrap();
        assert_eq!(entries.len(), 2);
        match &entries[0] {
            Entry::Named {
                value: Value::Call {
                    name, args, span, ..
                },
                ..
            } => {
                assert_eq!(name, "shrink");
                assert_eq!(args.len(), 2);
                assert_eq!(*span, 7..32);
            }
            other => panic!("unexpected {other:?}"),
        }
        match &entries[1] {
            Entry::Named {
                value: Value::Number { text, .. },
                ..
            } => assert_eq!(text, "-1e-3"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 15_000;
        let text = format!("rule = {}0.5{}", "f(".repeat(depth), ")".repeat(depth));
        let err = parse_entries(&text).unwrap_err();
        assert!(
            err.to_string().contains("nested deeper than 16 calls"),
            "{err}"
        );
        // The 17th `f(` is where reading stops: 7 bytes of `rule = `, 2 bytes a call.
        assert_eq!(err.span, 7 + 2 * MAX_NESTING..7 + 2 * MAX_NESTING + 1);
        let ok = format!(
            "rule = {}0.5{}",
            "f(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert!(parse_entries(&ok).is_ok());
    }

    #[test]
    fn reports_unbalanced_parenthesis() {
        let err = parse_entries("rule = shrink(0.5").unwrap_err();
        assert_eq!(err.span, 17..17);
        assert!(matches!(err.kind, SchemeErrorKind::Syntax { .. }));
    }
}
