//! `kvq eval`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kvq::eval::evaluate;
use kvq::eval_kernels::{kernel_deviation, KernelSchedule};
use kvq::Scheme;
use kvq_runtime::KvFile;

#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// Also run each layer's decode attention (the last token's query over the layer's K/V as
    /// one quantized span) through the generated kernels of this schedule, as host code, and
    /// report their largest relative deviation from the reference per layer (`kernel_dev`).
    #[arg(long, value_enum)]
    kernels: Option<KernelSchedule>,
    /// Print exactly one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let key = Scheme::parse(&args.key).context("--key")?;
    let value = Scheme::parse(&args.value).context("--value")?;
    let file = KvFile::load(&args.kv)?;
    let causal = args.causal || file.causal;
    let mut report = evaluate(&file, &key, &value, causal)?;
    if let Some(schedule) = args.kernels {
        let devs = kernel_deviation(&file, &key, &value, schedule)?;
        report = report.with_kernel_dev(&devs);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let q = file.layers[0].q.shape();
    let k = file.layers[0].k.shape();
    println!(
        "kvq eval: {} ({} layers, {} q heads over {} kv heads, {} tokens, head_dim {}, {})",
        args.kv.display(),
        file.layers.len(),
        q.heads,
        k.heads,
        k.tokens,
        k.dim,
        if causal { "causal" } else { "non-causal" }
    );
    println!("key:   {key}");
    println!("value: {value}\n");
    println!("{report}");
    Ok(())
}
