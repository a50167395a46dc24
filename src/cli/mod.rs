//! Subcommands of `kvq`.

mod attention_case;
mod bench;
mod bench_compile;
mod compile;
mod demo;
mod demo_cuda;
mod eval;
mod eval_model;
mod model_args;
mod pair;
mod profile;
mod profile_attention;
mod profile_report;
mod quantize;
mod report;
mod sizes;
mod tune;
mod tune_attention;

use clap::{Parser, Subcommand};
use kvq_ir::lower::InputType;

/// The element type of the K/V a kernel reads, as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Input {
    F16,
    Bf16,
    F32,
}

impl From<Input> for InputType {
    fn from(input: Input) -> InputType {
        match input {
            Input::F16 => InputType::F16,
            Input::Bf16 => InputType::BF16,
            Input::F32 => InputType::F32,
        }
    }
}

/// kvq: low-bit KV-cache schemes for multimodal LLMs.
#[derive(Debug, Parser)]
#[command(name = "kvq", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a decode-attention case (inputs and host results) for `kvq-gpu-check`.
    AttentionCase(attention_case::Args),
    /// kvq's host kernels against baselines timed in the same process: decode attention
    /// (candle f32, an f16 loop) and quantize (a copy of the bytes); ratios printed last.
    Bench(bench::Args),
    /// The main job: CalibQuant's kernels compiled, a cache of real DINOv2 K/V plus a long
    /// synthetic span, decode attention on the CPU against full precision.
    Demo(demo::Args),
    /// SmolLM2-135M with a quantized span in its cache, against the full-precision cache.
    EvalModel(eval_model::Args),
    /// Quantize each layer's K and V of a capture and report the error metrics of SPEC.md section 5.
    Eval(eval::Args),
    /// Compile a scheme pair's kernels for a GPU architecture or the host, with a manifest.
    Compile(compile::Args),
    /// A scheme pair's GPU kernels through the GPU cost model, without a GPU: occupancy,
    /// coalescing, bank conflicts, predicted time against a bandwidth bound.
    Profile(profile::Args),
    /// The ablation on SmolLM2 (multi-prompt study) and on K/V captures, as an HTML report.
    Report(report::Args),
    /// Quantize one layer's K or V of a capture and write codes and parameters (SPEC.md section 3).
    Quantize(quantize::Args),
    /// Time every host quantize schedule of a scheme and record the fastest in a tuning table.
    Tune(tune::Args),
    /// Time every host decode-attention schedule of a scheme pair and record the fastest.
    TuneAttention(tune_attention::Args),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::AttentionCase(args) => attention_case::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Eval(args) => eval::run(args),
        Command::EvalModel(args) => eval_model::run(args),
        Command::Compile(args) => compile::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Report(args) => report::run(args),
        Command::Tune(args) => tune::run(args),
        Command::TuneAttention(args) => tune_attention::run(args),
    }
}
