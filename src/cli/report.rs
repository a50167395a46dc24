//! `kvq report`: the ablation on SmolLM2 over the study's prompts and on the K/V captures,
//! written as `index.html` (charts) and `results.json` under `--out`, and printed as a table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kvq::model::Model;
use kvq::output;
use kvq::report::{capture_rows, html, PromptInfo, Report};
use kvq::study::{ablation, load_entries, load_study, run_study, stem};
use kvq_runtime::KvFile;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The study manifest.
    #[arg(long, default_value = "docs/prompts/study.json")]
    prompts: PathBuf,
    /// K/V captures for the error metrics (safetensors, as `kvq eval --kv` reads).
    #[arg(
        long,
        num_args = 1..,
        default_values = [
            "tests/data/dinov2s_astronaut_qkv_f16.safetensors",
            "tests/data/smollm2_zen_qkv_f16.safetensors",
        ]
    )]
    captures: Vec<PathBuf>,
    /// The ablation's entries from a file (`{"entries": [{"name", "family", "cache":
    /// "key(...), value(...)[, calibrate = d]"} or {"name", "dropped": true}]}`) instead of the
    /// default ablation.
    #[arg(long)]
    entries: Option<PathBuf>,
    /// At most this many positions per prompt (default: the manifest's).
    #[arg(long, value_parser = super::sizes::positive_tokens)]
    max_positions: Option<usize>,
    /// Output folder.
    #[arg(long, default_value = "docs/report")]
    out: PathBuf,
    /// Only write index.html again from the folder's results.json (no model run).
    #[arg(long)]
    render_only: bool,
    #[command(flatten)]
    model: super::model_args::ModelArgs,
}

pub fn run(args: Args) -> Result<()> {
    let entries = match &args.entries {
        Some(path) => load_entries(path)?,
        None => ablation(),
    };
    let page = args.out.join("index.html");
    let json = args.out.join("results.json");
    if args.render_only {
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a kvq report", json.display()))?;
        output::write_file(&page, html(&report, &entries).as_bytes())?;
        println!("wrote {}", page.display());
        return Ok(());
    }
    let mut prompts = load_study(&args.prompts)?;
    if let Some(cap) = args.max_positions {
        for p in &mut prompts {
            p.positions = p.positions.min(cap.max(1));
        }
    }
    let mut captures = Vec::new();
    for path in &args.captures {
        let file = KvFile::load(path)?;
        captures.extend(capture_rows(&stem(path), &file, &entries)?);
    }
    let model = Model::load(&args.model.path()?)?;
    eprintln!(
        "{} entries on {} prompts (each prompt: one prefill, then all entries' caches decode \
         together)",
        entries.len(),
        prompts.len()
    );
    let results = run_study(&model, &prompts, &entries, args.model.attention(), |i| {
        eprintln!("  prompt {} ({}) done", i + 1, prompts[i].name);
    })?;
    let report = Report {
        prompts: prompts.iter().map(PromptInfo::from).collect(),
        model: results,
        captures,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    output::write_file(
        &json,
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )?;
    output::write_file(&page, html(&report, &entries).as_bytes())?;
    println!("| entry | bits/elt | mean top-1 | mean KL | ppl ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for r in &report.model {
        println!(
            "| {} | {:.3} | {:.1}% | {:.4} | {:.3} |",
            r.name,
            r.bits_per_element,
            100.0 * r.mean_top1,
            r.mean_kl,
            r.mean_perplexity_ratio
        );
    }
    println!("wrote {} and {}", page.display(), json.display());
    Ok(())
}
