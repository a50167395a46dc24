//! `kvq tune`: time every host quantize schedule of a scheme on synthetic data and record the
//! fastest in a tuning table (`kvq::tune`).

use std::path::PathBuf;
use std::time::Duration;

use super::Input;
use anyhow::{Context, Result};
use kvq::tune::{self, TuningKey, TuningTable};
use kvq::Scheme;
use kvq_ir::lower::{InputType, Schedule, ShapeClass};
use kvq_ir::scheme::catalogue::CATALOGUE;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scheme, e.g. "bits = 2, axis = channel, group = 32, rule = minmax" (repeatable).
    #[arg(long, required_unless_present = "catalogue")]
    scheme: Vec<String>,
    /// Tune every scheme of the catalogue instead.
    #[arg(long, conflicts_with = "scheme")]
    catalogue: bool,
    /// Channels per head.
    #[arg(long, default_value_t = 128, value_parser = super::sizes::head_dim)]
    head_dim: u32,
    /// Heads of the synthetic span.
    #[arg(long, default_value_t = 8, value_parser = super::sizes::heads)]
    heads: usize,
    /// Tokens of the synthetic span.
    #[arg(long, default_value_t = 16384, value_parser = super::sizes::positive_tokens)]
    tokens: usize,
    /// Timed runs per candidate (the median is kept), after one warm-up.
    #[arg(long, default_value_t = 5, value_parser = super::sizes::count)]
    repeats: usize,
    /// Seconds of timed rounds per scheme at most: slow schemes get fewer rounds (at least one).
    #[arg(long, default_value_t = 60.0)]
    budget_s: f64,
    /// Input element type.
    #[arg(long, value_enum, default_value = "f16")]
    input: Input,
    /// The tuning table to update (created if missing).
    #[arg(long, default_value = "tuning/host.json")]
    table: PathBuf,
}

/// `c<channels> v<vector>`, led by `b<block size>` for a block of several threads (the quantile
/// rule's whole-warp selection) and followed by `runs` where each thread walks a contiguous run
/// of the tokens ([`Schedule::contiguous`]).
fn show(s: &Schedule) -> String {
    let runs = match s.contiguous && s.block_size > 1 {
        true => " runs",
        false => "",
    };
    match s.block_size {
        1 => format!("c{} v{}", s.channels, s.vector),
        b => format!("b{b} c{} v{}{runs}", s.channels, s.vector),
    }
}

pub fn run(args: Args) -> Result<()> {
    let schemes: Vec<(String, Scheme)> = if args.catalogue {
        CATALOGUE
            .iter()
            .map(|&(name, text)| Ok((name.to_string(), Scheme::parse(text)?)))
            .collect::<Result<_>>()?
    } else {
        args.scheme
            .iter()
            .map(|t| Ok((t.clone(), Scheme::parse(t).context("--scheme")?)))
            .collect::<Result<_>>()?
    };
    kvq_ir::limits::check_tensor(args.heads as u64, args.tokens as u64, args.head_dim.into())?;
    let shape = ShapeClass {
        head_dim: args.head_dim,
        input: InputType::from(args.input),
    };
    let budget = Duration::try_from_secs_f64(args.budget_s).context("--budget-s")?;
    let mut table = if args.table.exists() {
        match TuningTable::load(&args.table) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("warning: {e}; starting a new table");
                TuningTable::new()
            }
        }
    } else {
        TuningTable::new()
    };
    for (name, scheme) in &schemes {
        let result =
            tune::tune_within(scheme, shape, args.heads, args.tokens, args.repeats, budget)
                .with_context(|| format!("tuning {name}"))?;
        let default = Schedule::host_default(scheme, shape);
        println!(
            "{name}: {scheme}\n  [{} x {} x {}] {}, {} candidates, median of {}",
            args.heads,
            args.tokens,
            args.head_dim,
            shape.input.name(),
            result.timings.len(),
            result.rounds
        );
        println!(
            "  {:<12} {:>12} {:>8} {:>10}",
            "schedule", "median ms", "GB/s", "vs default"
        );
        for ((s, ns), ratio) in result.timings.iter().zip(&result.ratios) {
            let mark = match (*s == result.best, *s == default) {
                (true, true) => " <- best, default",
                (true, false) => " <- best",
                (false, true) => " <- default",
                _ => "",
            };
            println!(
                "  {:<12} {:>12.3} {:>8.2} {:>9.3}x{mark}",
                show(s),
                ns / 1e6,
                result.bytes as f64 / ns,
                ratio
            );
        }
        let best_ns = result.median_of(&result.best).unwrap_or(f64::NAN);
        println!(
            "  winner {} vs default {}: {:.3}x the default's time (median of per-round ratios)\n",
            show(&result.best),
            show(&default),
            result.ratio_of(&result.best).unwrap_or(f64::NAN)
        );
        let key = TuningKey::quantize(scheme, shape, args.heads, args.tokens);
        table.insert_scheme(scheme, key, result.best, best_ns);
    }
    table.save(&args.table)?;
    println!("wrote {} ({} entries)", args.table.display(), table.len());
    Ok(())
}
