//! Subcommands of `kvq`.

mod compile;
mod eval;
mod quantize;
mod tune;

use clap::{Parser, Subcommand};

/// kvq: low-bit KV-cache schemes for multimodal LLMs.
#[derive(Debug, Parser)]
#[command(name = "kvq", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Quantize each layer's K and V of a capture and report the error metrics of SPEC.md section 5.
    Eval(eval::Args),
    /// Compile a scheme pair's kernels for a GPU architecture or the host, with a manifest.
    Compile(compile::Args),
    /// Quantize one layer's K or V of a capture and write codes and parameters (SPEC.md section 3).
    Quantize(quantize::Args),
    /// Time every host quantize schedule of a scheme and record the fastest in a tuning table.
    Tune(tune::Args),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Eval(args) => eval::run(args),
        Command::Compile(args) => compile::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Tune(args) => tune::run(args),
    }
}
