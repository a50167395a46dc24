//! `kvq bench attention|quantize`: kvq's generated host kernels against baselines timed in the
//! same process (medians of interleaved rounds, or back to back with `--order`), from the
//! release binary, the ratios printed last; `kvq bench compile`: compile latency (module `bench_compile`); `--json` for the figures
//! alone.

use anyhow::{Context, Result};
use kvq::bench::{self, attention, quantize};
use kvq::{Scheme, Shape3};
use kvq_ir::lower::InputType;

/// The most memory the attention comparison may take (the unquantized cache in f32 for candle
/// and in f16 for the loop, per sequence): checked before anything is allocated.
const MAX_BYTES: u64 = 12 << 30;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Decode attention, 1-bit CalibQuant (8 kv / 32 query heads, head_dim 128, 64 text
    /// tokens (`--text`) plus the span) against candle f32 and an f16 loop over the unquantized
    /// cache.
    Attention(AttentionArgs),
    /// Host quantize of an f16 span against a copy of its bytes on every core.
    Quantize(QuantizeArgs),
    /// How long the host attention kernels take to become callable: cold, warm, repeated.
    Compile(CompileArgs),
}

#[derive(Debug, clap::Args)]
struct CompileArgs {
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure in this process and print JSON (what the parent process runs).
    #[arg(long, hide = true)]
    probe: bool,
}

#[derive(Debug, clap::Args)]
struct AttentionArgs {
    /// Span tokens (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "4096,16384,65536", value_parser = super::sizes::positive_tokens)]
    tokens: Vec<usize>,
    /// Sequences (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "1,4", value_parser = super::sizes::batch)]
    batch: Vec<usize>,
    /// Full-precision (text) tokens of each sequence before the span.
    #[arg(long, default_value_t = attention::TEXT, value_parser = super::sizes::tokens)]
    text: usize,
    /// The element type kvq's cache keeps the text tokens' rows in (the baselines keep theirs:
    /// f32 for candle, f16 for the loop).
    #[arg(long, value_enum, default_value = "f32")]
    text_rows: super::Input,
    /// Timed rounds; each calls every contender once.
    #[arg(long, default_value_t = 10, value_parser = super::sizes::count)]
    rounds: usize,
    /// The order of the timed calls.
    #[arg(long, value_enum, default_value = "interleaved")]
    order: bench::Order,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct QuantizeArgs {
    /// A scheme (repeat for several; default: six covering both axes, 1-4 bits, every rule).
    #[arg(long)]
    scheme: Vec<String>,
    /// Heads of the span.
    #[arg(long, default_value_t = 8, value_parser = super::sizes::heads)]
    heads: usize,
    /// Tokens of the span.
    #[arg(long, default_value_t = 16384, value_parser = super::sizes::positive_tokens)]
    tokens: usize,
    /// Channels per head.
    #[arg(long, default_value_t = 128, value_parser = super::sizes::head_dim)]
    head_dim: u32,
    /// Timed rounds; each calls the kernel and the copy once.
    #[arg(long, default_value_t = 10, value_parser = super::sizes::count)]
    rounds: usize,
    /// The order of the timed calls.
    #[arg(long, value_enum, default_value = "interleaved")]
    order: bench::Order,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Attention(a) => run_attention(a),
        What::Quantize(q) => run_quantize(q),
        What::Compile(c) if c.probe => super::bench_compile::probe(),
        What::Compile(c) => super::bench_compile::run(c.json),
    }
}

/// Bytes the attention comparison holds for `tokens` span and `text` full-precision tokens and
/// `batch` sequences.
fn attention_bytes(tokens: usize, text: usize, batch: usize) -> Option<u64> {
    let rows = (tokens as u64)
        .checked_add(text as u64)?
        .checked_mul(batch as u64)?
        .checked_mul((attention::KV * attention::DIM) as u64)?;
    // K and V: f32 for candle, f16 for the loop.
    rows.checked_mul(2 * (4 + 2))
}

fn run_attention(args: AttentionArgs) -> Result<()> {
    for &t in &args.tokens {
        for &b in &args.batch {
            let bytes = attention_bytes(t, args.text, b).filter(|&n| n <= MAX_BYTES);
            bytes.with_context(|| {
                format!(
                    "{t} span + {} text tokens x batch {b}: the baselines' unquantized cache needs more than {} GiB",
                    args.text,
                    MAX_BYTES >> 30
                )
            })?;
        }
    }
    let rounds = bench::Rounds {
        count: args.rounds,
        order: args.order,
    };
    let mut rows = Vec::new();
    for &t in &args.tokens {
        for &b in &args.batch {
            let text = (args.text, InputType::from(args.text_rows));
            rows.push(attention::run(t, text, b, rounds)?);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("decode attention, {}", attention::SCHEME);
    println!(
        "{} kv / {} query heads, head_dim {}, {} text tokens ({} in kvq's cache) + the span; medians of {} {} rounds; {}",
        attention::KV,
        attention::KV * attention::GROUP,
        attention::DIM,
        args.text,
        InputType::from(args.text_rows).name(),
        rounds.count,
        rounds.order.name(),
        bench::machine()
    );
    println!("span mem: the span in f16 over kvq's codes and parameters; cache mem: a sequence's text tokens and span in f16 over kvq's cache");
    println!(
        "{:>8} {:>5} {:>12} {:>12} {:>10} {:>9} {:>9} {:>8} {:>10} {:>9}",
        "span",
        "batch",
        "candle f32",
        "f16 loop",
        "kvq",
        "span mem",
        "cache mem",
        "rel err",
        "vs candle",
        "vs f16"
    );
    for r in &rows {
        println!(
            "{:>8} {:>5} {:>9.3} ms {:>9.3} ms {:>7.3} ms {:>8.2}x {:>8.2}x {:>8.4} {:>9.2}x {:>8.2}x",
            r.span_tokens,
            r.batch,
            r.candle_f32_s * 1e3,
            r.f16_loop_s * 1e3,
            r.kvq_s * 1e3,
            r.span_compression(),
            r.cache_compression(),
            r.rel_error_vs_f32,
            r.candle_f32_s / r.kvq_s,
            r.f16_loop_s / r.kvq_s,
        );
    }
    Ok(())
}

fn run_quantize(args: QuantizeArgs) -> Result<()> {
    let texts: Vec<String> = if args.scheme.is_empty() {
        quantize::SCHEMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.scheme
    };
    let schemes = texts
        .iter()
        .map(|t| Scheme::parse(t).map_err(|e| anyhow::anyhow!("--scheme: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let shape = Shape3 {
        heads: args.heads,
        tokens: args.tokens,
        dim: args.head_dim as usize,
    };
    for s in &schemes {
        kvq::reference::quantize::check_shape(s, shape).with_context(|| format!("{s}"))?;
    }
    let rounds = bench::Rounds {
        count: args.rounds,
        order: args.order,
    };
    let rows = quantize::run(&schemes, shape, rounds)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "host quantize of an f16 span [{}, {}, {}] ({} MB), the tuned kernel against a copy on every core; medians of {} {} rounds; {}",
        shape.heads,
        shape.tokens,
        shape.dim,
        shape.len() * 2 / 1_000_000,
        rounds.count,
        rounds.order.name(),
        bench::machine()
    );
    println!("{:>10} {:>10} {:>10}  scheme", "kvq", "copy", "of copy");
    for r in &rows {
        println!(
            "{:>7.3} ms {:>7.3} ms {:>9.1}%  {}",
            r.kvq_s * 1e3,
            r.copy_s * 1e3,
            100.0 * r.copy_share(),
            r.scheme
        );
    }
    Ok(())
}
