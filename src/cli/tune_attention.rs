//! `kvq tune-attention`: time every host decode-attention schedule (chunk, tile) of a scheme
//! pair on synthetic data and record the fastest in the attention tuning table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kvq::lower::attention::AttentionSchedule;
use kvq::tune::attention::{tune_attention, AttentionKey, AttentionTable};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pair: super::pair::PairArgs,
    /// Key/value heads of the synthetic sequence.
    #[arg(long, default_value_t = 8, value_parser = super::sizes::heads)]
    kv_heads: usize,
    /// Span tokens of the synthetic sequence: one or several lengths (the schedule chosen is
    /// the fastest over all of them, by the geometric mean of its time over the default's).
    #[arg(long, num_args = 1.., default_values_t = [4096, 16384, 65536],
        value_parser = super::sizes::positive_tokens)]
    tokens: Vec<usize>,
    /// Sequences of the synthetic batch: one or several sizes, each timed at every span
    /// length (the schedule chosen is the fastest over all of them, as for `--tokens`).
    #[arg(long, num_args = 1.., default_values_t = [1, 4], value_parser = super::sizes::batch)]
    batch: Vec<usize>,
    /// Timed runs per candidate (the median is kept), after one checked run.
    #[arg(long, default_value_t = 5, value_parser = super::sizes::count)]
    repeats: usize,
    /// The table to update (created if missing).
    #[arg(long, default_value = "tuning/host-attention.json")]
    table: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let scheme = args.pair.scheme()?;
    let shape = args.pair.shape();
    for &span in &args.tokens {
        // The span plus the 64 full-precision tokens tune_attention adds, every sequence's K/V;
        // a batch's sequences held at once are bounded as one tensor of all their tokens.
        let tokens = span.checked_add(64).context("--tokens")?;
        for &batch in &args.batch {
            let all = tokens
                .checked_mul(batch)
                .with_context(|| format!("{span} span tokens x batch {batch}: too many tokens"))?;
            kvq_ir::limits::check_tensor(args.kv_heads as u64, all as u64, shape.head_dim.into())?;
        }
    }
    let mut table = if args.table.exists() {
        AttentionTable::load(&args.table).unwrap_or_else(|e| {
            eprintln!("warning: {e}; starting a new table");
            AttentionTable::default()
        })
    } else {
        AttentionTable::default()
    };
    let shapes = (&args.tokens[..], &args.batch[..]);
    let result = tune_attention(&scheme, shape, args.kv_heads, shapes, args.repeats)?;
    let default = AttentionSchedule::host_default(&scheme);
    let spans: Vec<String> = result.spans.iter().map(|t| t.to_string()).collect();
    let batches: Vec<String> = result.batches.iter().map(|b| b.to_string()).collect();
    println!(
        "{scheme}\n  batches of {} sequences, each {} kv heads x g{} x d{}, spans of {} tokens + 64 fp tokens; median of {}",
        batches.join(", "),
        args.kv_heads,
        shape.group,
        shape.head_dim,
        spans.join(", "),
        args.repeats
    );
    let heads: Vec<String> = result
        .spans
        .iter()
        .flat_map(|t| {
            result
                .batches
                .iter()
                .map(move |b| format!("{:>10}", format!("{t}x{b}")))
        })
        .collect();
    println!(
        "  {:<14} {} {:>11}   (ms per span x batch; geometric mean of the ratios to the default)",
        "chunk/tile",
        heads.join(" "),
        "vs default"
    );
    let mut best_ns = f64::NAN;
    for ((s, ns), ratio) in result.timings.iter().zip(&result.ratios) {
        let mark = match (*s == result.best, *s == default) {
            (true, true) => " <- best, default",
            (true, false) => " <- best",
            (false, true) => " <- default",
            _ => "",
        };
        if *s == result.best {
            // The table records its time at the last span and batch (the largest by default).
            best_ns = ns.last().copied().unwrap_or(f64::NAN);
        }
        let ms: Vec<String> = ns.iter().map(|t| format!("{:>10.3}", t / 1e6)).collect();
        println!(
            "  {:<14} {} {:>10.3}x{mark}",
            format!("{}/{}", s.chunk, s.tile),
            ms.join(" "),
            ratio
        );
    }
    table.insert(
        &scheme,
        AttentionKey::new(&scheme, shape, &result.best),
        result.best,
        best_ns,
    );
    table.save(&args.table)?;
    println!("wrote {} ({} entries)", args.table.display(), table.len());
    Ok(())
}
