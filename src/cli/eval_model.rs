//! `kvq eval-model`: SmolLM2-135M with a quantized span in its cache, against the
//! full-precision cache on the same prompt(s) (`kvq::model::evaluate_many`), with the span
//! dropped from attention as the baseline.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kvq::model::{Model, SpanTreatment};
use kvq::study::{load_study, run_study, stem, Entry, EntryResult, StudyPrompt};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pair: super::pair::PairArgs,
    /// A study manifest (e.g. docs/prompts/study.json): several prompts, each with its span and
    /// positions; the figures are means over them.
    #[arg(long, conflicts_with_all = ["span", "prompt_file"])]
    prompts: Option<PathBuf>,
    /// The quantized span, in prompt tokens: START..END.
    #[arg(long, required_unless_present = "prompts")]
    span: Option<String>,
    /// The prompt (text; special tokens such as <|im_start|> are kept whole).
    #[arg(long, required_unless_present = "prompts")]
    prompt_file: Option<PathBuf>,
    /// Teacher-forced positions after the span to compare (with --prompt-file).
    #[arg(long, default_value_t = 100, value_parser = super::sizes::positive_tokens)]
    positions: usize,
    #[command(flatten)]
    model: super::model_args::ModelArgs,
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
    let max = kvq_ir::limits::MAX_TOKENS;
    if b > max {
        bail!("--span {text:?} ends past {max} tokens, the most a prompt may have");
    }
    Ok(a..b)
}

fn prompts(args: &Args) -> Result<Vec<StudyPrompt>> {
    if let Some(manifest) = &args.prompts {
        return Ok(load_study(manifest)?);
    }
    let (Some(file), Some(span)) = (&args.prompt_file, &args.span) else {
        bail!("give --prompt-file and --span, or --prompts");
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(vec![StudyPrompt {
        name: stem(file),
        text,
        span: parse_span(span)?,
        positions: args.positions,
    }])
}

pub fn run(args: Args) -> Result<()> {
    let scheme = args.pair.scheme()?;
    let prompts = prompts(&args)?;
    let model = Model::load(&args.model.path()?)?;
    let entries = [
        Entry {
            name: scheme.to_string(),
            family: String::new(),
            treatment: SpanTreatment::Quantized(scheme),
        },
        Entry {
            name: "span dropped".into(),
            family: String::new(),
            treatment: SpanTreatment::Dropped,
        },
    ];
    let results = run_study(&model, &prompts, &entries, args.model.attention(), |_| {})?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    let [quantized, dropped] = &results[..] else {
        bail!("expected two results");
    };
    println!("{scheme}");
    for (i, p) in prompts.iter().enumerate() {
        let (q, d) = (&quantized.prompts[i], &dropped.prompts[i]);
        println!(
            "{:<12} span {}..{}, {} positions: top-1 {:5.1}% (span dropped {:5.1}%), \
             KL {:.4}, perplexity {:.3} (fp {:.3})",
            p.name,
            p.span.start,
            p.span.end,
            q.positions,
            100.0 * q.top1_agreement,
            100.0 * d.top1_agreement,
            q.mean_kl,
            q.perplexity,
            q.perplexity_fp
        );
    }
    summary("quantized", quantized);
    summary("span dropped", dropped);
    println!(
        "span K/V: {:.3} bits per element ({:.1}x smaller than f16)",
        quantized.bits_per_element,
        16.0 / quantized.bits_per_element.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

fn summary(what: &str, r: &EntryResult) {
    println!(
        "mean over {} prompt(s), {what:<12}: top-1 agreement {:5.1}%, KL {:.4} nats, \
         perplexity / fp {:.3}",
        r.prompts.len(),
        100.0 * r.mean_top1,
        r.mean_kl,
        r.mean_perplexity_ratio
    );
}
