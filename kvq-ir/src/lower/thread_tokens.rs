//! Which of a column's tokens each thread of a block walks ([`super::Schedule::contiguous`]).

use crate::ir::{Builder, Value};

use super::quantize_abi as abi;

/// A thread's tokens: `start..end` by `step`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ThreadTokens {
    /// The first.
    pub start: Value,
    /// One past the last (the span's token count where strided).
    pub end: Value,
    /// The distance between two of them.
    pub step: u32,
}

/// The tokens thread `tid` of a block of `block_size` walks: token `t` to thread
/// `t % block_size` (strided), or where `contiguous` and the block has several threads, the
/// run of `ceil(tokens / block_size)` tokens from `tid` times that (the last runs shorter or
/// empty). Strided emits what the kernels emitted before runs existed: the `tokens` parameter,
/// nothing else.
pub(super) fn thread_tokens(
    b: &mut Builder,
    tid: Value,
    block_size: u32,
    contiguous: bool,
) -> ThreadTokens {
    let tokens = b.param(abi::TOKENS);
    if !contiguous || block_size == 1 {
        return ThreadTokens {
            start: tid,
            end: tokens,
            step: block_size,
        };
    }
    // ceil(tokens / block_size) without `tokens + block_size - 1`, which could wrap.
    let threads = b.u32(block_size);
    let whole = b.div(tokens, threads);
    let rest = b.rem(tokens, threads);
    let one = b.u32(1);
    let partial = b.min(rest, one);
    let run = b.add(whole, partial);
    // tid * run < tokens + block_size and start + run <= 2 tokens + 1: no wrap for the spans a
    // launch accepts (at most `crate::limits::MAX_TOKENS` = 2^24 tokens).
    let start = b.mul(tid, run);
    let start = b.min(start, tokens);
    let end = b.add(start, run);
    let end = b.min(end, tokens);
    ThreadTokens {
        start,
        end,
        step: 1,
    }
}
