//! SmolLM2's tokenizer from a GGUF's vocabulary, through Hugging Face's `tokenizers` crate.
//!
//! The GGUF holds the byte-level vocabulary (`tokenizer.ggml.tokens`), the merges
//! (`tokenizer.ggml.merges`) and the token types (`tokenizer.ggml.token_type`: 3 control, 4
//! user-defined). Its pre-tokenizer is named `smollm` (`tokenizer.ggml.pre`): SmolLM2's published
//! `tokenizer.json` splits every digit alone, then applies GPT-2's byte-level expression
//! (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`), as llama.cpp
//! does for `smollm`. Control tokens are special (kept whole wherever they are written in the
//! text); user-defined tokens are kept whole too. `tests/data/smollm2_tokens.json`, recorded by
//! `scripts/smollm2_tokenizer_reference.py` from transformers, checks it token for token.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

/// GGUF token type of a control token (`<|im_start|>`, ...).
const CONTROL: i32 = 3;
/// GGUF token type of a user-defined token, matched whole like a control token.
const USER_DEFINED: i32 = 4;

/// Why a tokenizer could not be built, or could not encode or decode.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizerError(String);

/// SmolLM2's byte-level BPE tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab)
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer of a GGUF: the vocabulary in id order, the merges (`"a b"`, by rank) and
    /// each token's GGUF type (`token_types[i]` for token `i`; missing entries are normal).
    pub fn from_gguf(
        tokens: Vec<String>,
        merges: &[String],
        token_types: &[i32],
    ) -> Result<Tokenizer, TokenizerError> {
        let err = |what: String| TokenizerError(what);
        let count = tokens.len();
        let id = |i: usize| u32::try_from(i).map_err(|_| err(format!("{count} tokens")));
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert(t.clone(), id(i)?).is_some() {
                return Err(err(format!("token {i} ({t:?}) appears twice")));
            }
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(rank, m)| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(err(format!("merge {rank} ({m:?}) is not two tokens"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre: Vec<PreTokenizerWrapper> = vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ];
        inner.with_pre_tokenizer(Some(Sequence::new(pre)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let typed = |kind: i32| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(token_types)
                .filter(|&(t, &ty)| ty == kind && !t.is_empty())
                .map(|(t, _)| AddedToken::from(t.clone(), kind == CONTROL).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&typed(CONTROL));
        inner.add_tokens(&typed(USER_DEFINED));
        Ok(Tokenizer {
            inner,
            vocab: count,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Token ids of `text` (no BOS is added); special tokens written in the text are kept whole.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError(e.to_string()))
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Tokenizer {
        // Byte-level spellings: `Ġ` is the space byte.
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "Ġ", "Ġa", "<x>", "1", "2", "12"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let merges: Vec<String> = ["a b", "ab c", "Ġ a", "1 2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut types = vec![1; tokens.len()];
        types[7] = CONTROL;
        Tokenizer::from_gguf(tokens, &merges, &types).unwrap()
    }

    #[test]
    fn bpe_merges_by_rank_and_round_trips() {
        let t = toy();
        assert_eq!(t.encode("abc").unwrap(), [4]);
        assert_eq!(t.encode("ab a").unwrap(), [3, 6]);
        // A control token in the text is kept whole, and splits the text around it.
        assert_eq!(t.encode("a<x>abc").unwrap(), [0, 7, 4]);
        assert_eq!(t.decode(&[3, 6]).unwrap(), "ab a");
        assert_eq!(t.decode(&[0, 7, 4]).unwrap(), "a<x>abc");
    }

    #[test]
    fn digits_are_split_before_merging() {
        // "1 2" is a merge, but SmolLM2 splits every digit alone first.
        assert_eq!(toy().encode("12").unwrap(), [8, 9]);
    }

    #[test]
    fn malformed_vocabularies_are_errors() {
        let two = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
        assert!(Tokenizer::from_gguf(two("a", "a"), &[], &[]).is_err());
        assert!(Tokenizer::from_gguf(two("a", "b"), &["ab".to_string()], &[]).is_err());
    }
}
