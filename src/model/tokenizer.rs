//! GPT-2 style byte-level BPE from a GGUF vocabulary (`tokenizer.ggml.tokens`) and merge list
//! (`tokenizer.ggml.merges`), with SmolLM2's pre-tokenization: every digit alone, then
//! GPT-2's contractions, ` ?letters`, ` ?digits`, ` ?other symbols` and whitespace runs.
//!
//! It serves prompts for evaluation; token ids of a fixed prompt are recorded in fixtures, so an
//! exact match with other tokenizers is not required for the tests' cross-checks.

use std::collections::HashMap;

/// A byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    /// Control and user-defined tokens (`<|im_start|>`, ...), matched literally before BPE,
    /// longest first.
    special: Vec<(String, u32)>,
    ids: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
}

/// GPT-2's reversible map of bytes to printable characters.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    map
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// Splits `text` into pre-tokens (SmolLM2: digits one by one).
fn pre_tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Contractions.
        if c == '\'' {
            let rest: String = chars[i + 1..chars.len().min(i + 3)].iter().collect();
            let hit = ["re", "ve", "ll", "s", "t", "m", "d"]
                .into_iter()
                .find(|s| rest.starts_with(s));
            if let Some(s) = hit {
                out.push(format!("'{s}"));
                i += 1 + s.len();
                continue;
            }
        }
        let start = i;
        // An optional leading space joins a following letter/other run.
        let lead = c == ' '
            && i + 1 < chars.len()
            && matches!(class(chars[i + 1]), Class::Letter | Class::Other);
        let j = if lead { i + 1 } else { i };
        match class(chars[j]) {
            Class::Digit => {
                out.push(chars[j].to_string());
                i = j + 1;
                continue;
            }
            Class::Space => {
                // Whitespace runs; the last space before a non-space starts the next token.
                let mut k = j;
                while k < chars.len() && class(chars[k]) == Class::Space {
                    k += 1;
                }
                if k < chars.len() && k - j > 1 && chars[k - 1] == ' ' {
                    k -= 1;
                }
                out.push(chars[start..k].iter().collect());
                i = k;
                continue;
            }
            cls => {
                let mut k = j + 1;
                while k < chars.len() && class(chars[k]) == cls {
                    k += 1;
                }
                out.push(chars[start..k].iter().collect());
                i = k;
            }
        }
    }
    out
}

impl Tokenizer {
    /// A tokenizer from the vocabulary (id order), the merges (`"a b"`, by rank) and the ids of
    /// special tokens (GGUF token types 3 and 4: control and user-defined).
    pub fn new(tokens: Vec<String>, merges: &[String], special: &[u32]) -> Tokenizer {
        let mut special: Vec<(String, u32)> = special
            .iter()
            .filter_map(|&i| tokens.get(i as usize).map(|t| (t.clone(), i)))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        special.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let ranks = merges
            .iter()
            .enumerate()
            .filter_map(|(r, m)| {
                m.split_once(' ')
                    .map(|(a, b)| ((a.to_string(), b.to_string()), r))
            })
            .collect();
        let byte_to_char = byte_chars();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Tokenizer {
            tokens,
            special,
            ids,
            ranks,
            byte_to_char,
            char_to_byte,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Token ids of `text` (no BOS is added); special tokens written in the text are kept whole.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .special
                .iter()
                .filter_map(|(t, id)| rest.find(t.as_str()).map(|at| (at, t.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let (plain, special) = match next {
                Some((at, len, id)) => (&rest[..at], Some((len, id))),
                None => (rest, None),
            };
            self.encode_plain(plain, &mut out);
            match special {
                Some((len, id)) => {
                    out.push(id);
                    rest = &rest[plain.len() + len..];
                }
                None => rest = "",
            }
        }
        out
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        for piece in pre_tokenize(text) {
            let mapped: Vec<String> = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize].to_string())
                .collect();
            for symbol in self.bpe(mapped) {
                // Every byte is in a byte-level vocabulary; fall back to the unknown id 0.
                out.push(self.ids.get(&symbol).copied().unwrap_or(0));
            }
        }
    }

    /// Merges the lowest-ranked adjacent pair until none is in the merge list.
    fn bpe(&self, mut parts: Vec<String>) -> Vec<String> {
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else {
                return parts;
            };
            let merged = format!("{}{}", parts[i], parts[i + 1]);
            parts.splice(i..i + 2, [merged]);
        }
    }

    /// The text of `ids` (unknown ids are skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&i| self.tokens.get(i as usize))
            .flat_map(|t| t.chars().filter_map(|c| self.char_to_byte.get(&c).copied()))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenization_splits_digits_words_and_spaces() {
        assert_eq!(
            pre_tokenize("Hello world, it's 2024!"),
            ["Hello", " world", ",", " it", "'s", " ", "2", "0", "2", "4", "!"]
        );
        assert_eq!(pre_tokenize("a  b"), ["a", " ", " b"]);
    }

    #[test]
    fn bpe_merges_by_rank_and_round_trips() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "Ġ", "Ġa", "<x>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let merges: Vec<String> = ["a b", "ab c", "Ġ a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t = Tokenizer::new(tokens, &merges, &[7]);
        assert_eq!(t.encode("abc"), [4]);
        assert_eq!(t.encode("ab a"), [3, 6]);
        // A special token in the text is kept whole, and splits the text around it.
        assert_eq!(t.encode("a<x>abc"), [0, 7, 4]);
        assert_eq!(t.decode(&[3, 6]), "ab a");
        assert_eq!(t.decode(&[0, 7, 4]), "a<x>abc");
    }
}
