//! `kvq eval-model`: SmolLM2-135M with a quantized span in its cache, against the
//! full-precision cache on the same prompt (`kvq::model::evaluate`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kvq::backend::HostSpanQuantizer;
use kvq::model::{default_model_path, evaluate, Model};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pair: super::pair::PairArgs,
    /// The quantized span, in prompt tokens: START..END.
    #[arg(long)]
    span: String,
    /// The prompt (text; special tokens such as <|im_start|> are kept whole).
    #[arg(long)]
    prompt_file: PathBuf,
    /// Teacher-forced positions after the span to compare.
    #[arg(long, default_value_t = 100)]
    positions: usize,
    /// The GGUF (default: $KVQ_SMOLLM2, else the one scripts/setup.sh installs into .venv).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_span(text: &str) -> Result<std::ops::Range<usize>> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--span {text:?}: expected START..END"))?;
    let (a, b): (usize, usize) = (
        a.trim().parse().context("--span start")?,
        b.trim().parse().context("--span end")?,
    );
    if a >= b {
        bail!("--span {text:?} is empty");
    }
    Ok(a..b)
}

pub fn run(args: Args) -> Result<()> {
    let scheme = args.pair.scheme()?;
    let span = parse_span(&args.span)?;
    let path = match args.model.or_else(default_model_path) {
        Some(p) => p,
        None => bail!("the SmolLM2 GGUF is not installed: run scripts/setup.sh, or pass --model"),
    };
    let text = std::fs::read_to_string(&args.prompt_file)
        .with_context(|| format!("reading {}", args.prompt_file.display()))?;
    let model = Model::load(&path)?;
    let tokens = model.tokenizer.encode(&text);
    let r = evaluate(
        &model,
        scheme,
        HostSpanQuantizer,
        &tokens,
        span.clone(),
        args.positions,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("{scheme}");
    println!(
        "prompt {} tokens, span {}..{} quantized, {} teacher-forced positions after it",
        tokens.len(),
        span.start,
        span.end,
        r.positions
    );
    println!(
        "  top-1 agreement with full precision  {:.1}%",
        100.0 * r.top1_agreement
    );
    println!(
        "  mean KL(full || quantized)           {:.4} nats",
        r.mean_kl
    );
    println!(
        "  perplexity of the continuation       {:.3} (full precision {:.3})",
        r.perplexity, r.perplexity_fp
    );
    println!(
        "  span K/V bytes                       {} vs {} in f16 ({:.1}x smaller)",
        r.span_bytes,
        r.span_f16_bytes,
        r.span_f16_bytes as f64 / r.span_bytes.max(1) as f64
    );
    Ok(())
}
