//! The `kvq` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kvq::eval::evaluate;
use kvq::Scheme;
use kvq_runtime::KvFile;

/// kvq: low-bit KV-cache schemes for multimodal LLMs.
#[derive(Debug, Parser)]
#[command(name = "kvq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Quantize each layer's K and V of a capture and report the error metrics of SPEC.md section 5.
    Eval {
        /// Safetensors file with q [layers, q_heads, tokens, head_dim] and k, v [layers, kv_heads, tokens, head_dim].
        #[arg(long)]
        kv: PathBuf,
        /// Key scheme, e.g. "bits = 1, axis = channel, group = all, rule = shrink(0.5)".
        #[arg(long)]
        key: String,
        /// Value scheme, e.g. "bits = 1, axis = channel, group = all, rule = shrink(0.3)".
        #[arg(long)]
        value: String,
        /// Causal attention (also on when the file's metadata says causal = "true").
        #[arg(long)]
        causal: bool,
        /// Print exactly one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Eval {
            kv,
            key,
            value,
            causal,
            json,
        } => {
            let key = Scheme::parse(&key).context("--key")?;
            let value = Scheme::parse(&value).context("--value")?;
            let file = KvFile::load(&kv)?;
            let causal = causal || file.causal;
            let report = evaluate(&file, &key, &value, causal)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let s = file.layers[0].q.shape();
                let k = file.layers[0].k.shape();
                println!(
                    "kvq eval: {} ({} layers, {} q heads over {} kv heads, {} tokens, head_dim {}, {})",
                    kv.display(),
                    file.layers.len(),
                    s.heads,
                    k.heads,
                    k.tokens,
                    k.dim,
                    if causal { "causal" } else { "non-causal" }
                );
                println!("key:   {key}");
                println!("value: {value}\n");
                println!("{report}");
            }
            Ok(())
        }
    }
}
