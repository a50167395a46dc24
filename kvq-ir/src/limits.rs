//! The sizes kvq accepts, in one place: every size a user gives (on the command line, in a file,
//! through the API) is checked against these up front, with checked arithmetic, before anything
//! is allocated or written.

use thiserror::Error;

/// The largest head_dim: the reference, the kernels and the cache all take 1..=1024 channels
/// per head (a multiple of 8, so that codes of every width fill whole bytes).
pub const MAX_HEAD_DIM: usize = 1024;
/// The most kv heads (or query heads) of one tensor.
pub const MAX_HEADS: usize = 4096;
/// The most tokens of one span or sequence.
pub const MAX_TOKENS: usize = 1 << 24;
/// The most sequences of one batch.
pub const MAX_BATCH: usize = 4096;
/// The most query heads per kv head.
pub const MAX_GROUP: usize = 64;
/// The most elements of one K or V tensor: the kernels index elements with 32-bit integers.
pub const MAX_ELEMENTS: u64 = u32::MAX as u64;

/// A size outside what kvq supports.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    /// One size outside its range.
    #[error("{what} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// The size's name, e.g. "head_dim".
        what: &'static str,
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// head_dim not a multiple of 8.
    #[error("head_dim = {0} is not a multiple of 8 (codes of every width fill whole bytes)")]
    HeadDimNotMultiple(u64),
    /// A tensor with more elements than the kernels address.
    #[error("{heads} heads x {tokens} tokens x {dim} channels exceed the {MAX_ELEMENTS} elements one tensor may have")]
    TooManyElements {
        /// Heads.
        heads: u64,
        /// Tokens.
        tokens: u64,
        /// Channels per head.
        dim: u64,
    },
}

/// Checks that `value` lies in `min..=max`.
pub fn check_range(what: &'static str, value: u64, min: u64, max: u64) -> Result<(), LimitError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(LimitError::OutOfRange {
            what,
            value,
            min,
            max,
        })
    }
}

/// Checks a head_dim: 8..=[`MAX_HEAD_DIM`], a multiple of 8.
pub fn check_head_dim(dim: u64) -> Result<(), LimitError> {
    check_range("head_dim", dim, 8, MAX_HEAD_DIM as u64)?;
    if dim % 8 != 0 {
        return Err(LimitError::HeadDimNotMultiple(dim));
    }
    Ok(())
}

/// Checks that a `[heads, tokens, dim]` tensor has at most [`MAX_ELEMENTS`] elements, so that
/// every element index a kernel computes in u32 arithmetic is exact (no wrap); returns the
/// count.
pub fn check_addressable(heads: u64, tokens: u64, dim: u64) -> Result<u64, LimitError> {
    heads
        .checked_mul(tokens)
        .and_then(|x| x.checked_mul(dim))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or(LimitError::TooManyElements { heads, tokens, dim })
}

/// Checks a `[heads, tokens, dim]` tensor's sizes (each in range, the head_dim as
/// [`check_head_dim`]) and returns its element count, at most [`MAX_ELEMENTS`].
pub fn check_tensor(heads: u64, tokens: u64, dim: u64) -> Result<usize, LimitError> {
    check_range("heads", heads, 1, MAX_HEADS as u64)?;
    check_range("tokens", tokens, 0, MAX_TOKENS as u64)?;
    check_head_dim(dim)?;
    let too_many = LimitError::TooManyElements { heads, tokens, dim };
    let n = heads
        .checked_mul(tokens)
        .and_then(|x| x.checked_mul(dim))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or(too_many.clone())?;
    usize::try_from(n).map_err(|_| too_many)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_without_wrapping() {
        assert_eq!(check_tensor(8, 4096, 128), Ok(8 * 4096 * 128));
        assert_eq!(check_tensor(1, 0, 64), Ok(0));
        assert!(check_head_dim(0).is_err());
        assert!(check_head_dim(12).is_err());
        assert!(check_head_dim(1 << 20).is_err());
        assert!(check_head_dim(1 << 31).is_err());
        assert!(check_tensor(4096, 1 << 24, 1024).is_err());
        assert!(check_tensor(1, u64::MAX, 128).is_err());
        // 2^32 elements: the first count a u32 index cannot address.
        assert!(check_addressable(8, 1 << 22, 128).is_err());
        assert_eq!(
            check_addressable(8, (1 << 22) - 1, 128),
            Ok(8 * ((1 << 22) - 1) * 128)
        );
        assert!(check_addressable(u64::MAX, 2, 1).is_err());
        assert!(check_tensor(0, 1, 128).is_err());
        // 2^32 elements exactly: one past what 32-bit indices address.
        assert!(matches!(
            check_tensor(256, 1 << 17, 128),
            Err(LimitError::TooManyElements { .. })
        ));
    }
}
