//! Value parsers for every size option: each is checked against `kvq_ir::limits` while the
//! command line is read, so no command starts (or creates an output) with a size it cannot run.

use kvq_ir::limits::{self, MAX_BATCH, MAX_GROUP, MAX_HEADS, MAX_TOKENS};

/// The most repetitions or decode steps a command takes.
const MAX_REPEATS: u64 = 1_000_000;

fn number(text: &str) -> Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| {
        format!(
            "`{}` is not a non-negative integer",
            kvq_ir::scheme::error::echo(text)
        )
    })
}

fn within(text: &str, what: &'static str, min: u64, max: u64) -> Result<u64, String> {
    let v = number(text)?;
    limits::check_range(what, v, min, max).map_err(|e| e.to_string())?;
    Ok(v)
}

/// `--head-dim`: 8..=1024, a multiple of 8.
pub fn head_dim(text: &str) -> Result<u32, String> {
    let v = number(text)?;
    limits::check_head_dim(v).map_err(|e| e.to_string())?;
    u32::try_from(v).map_err(|e| e.to_string())
}

/// `--kv-heads`, `--heads`: 1..=4096.
pub fn heads(text: &str) -> Result<usize, String> {
    Ok(within(text, "heads", 1, MAX_HEADS as u64)? as usize)
}

/// A token count that may be zero (a sequence without a span): 0..=2^24.
pub fn tokens(text: &str) -> Result<usize, String> {
    Ok(within(text, "tokens", 0, MAX_TOKENS as u64)? as usize)
}

/// A token count that must be positive: 1..=2^24.
pub fn positive_tokens(text: &str) -> Result<usize, String> {
    Ok(within(text, "tokens", 1, MAX_TOKENS as u64)? as usize)
}

/// `--batch`: 1..=4096.
pub fn batch(text: &str) -> Result<usize, String> {
    Ok(within(text, "batch", 1, MAX_BATCH as u64)? as usize)
}

/// `--group` (query heads per kv head): 1..=64.
pub fn group(text: &str) -> Result<u32, String> {
    Ok(within(text, "group", 1, MAX_GROUP as u64)? as u32)
}

/// `--steps`, `--repeats`: 1..=1,000,000.
pub fn count(text: &str) -> Result<usize, String> {
    Ok(within(text, "count", 1, MAX_REPEATS)? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded_up_front() {
        assert_eq!(head_dim("128"), Ok(128));
        for bad in [
            "0",
            "12",
            "1048576",
            "2147483648",
            "18446744073709551616",
            "-1",
            "x",
        ] {
            assert!(head_dim(bad).is_err(), "{bad}");
        }
        assert!(tokens("18446744073709551615").is_err());
        assert_eq!(tokens("0"), Ok(0));
        assert!(positive_tokens("0").is_err());
        assert!(heads("0").is_err());
        assert!(batch("5000").is_err());
        assert!(group("65").is_err());
        assert!(count("0").is_err());
    }
}
