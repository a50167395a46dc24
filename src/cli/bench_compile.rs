//! `kvq bench compile`: how long the host attention kernels of 1-bit CalibQuant (head_dim 128,
//! group 4: three kernels) take to become callable, each figure in a fresh process of this
//! binary: cold (an empty compile cache), the first call with the cache filled (the median of
//! several processes), and a repeated call in one process.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kvq::attention::HostAttention;
use kvq::lower::attention::AttentionShape;
use serde::{Deserialize, Serialize};

/// Calls of `HostAttention::new` timed for the repeated figure (the median is kept).
const REPEATS: usize = 101;

/// New processes timed with the cache filled (the medians of their figures are kept: a single
/// process's first call varies by 1.5x on a busy machine).
const WARM_PROCESSES: usize = 7;

/// What one probe process measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Probe {
    /// The first `HostAttention::new` of the process, seconds.
    pub first_s: f64,
    /// Median of the repeated calls after it, seconds.
    pub repeat_s: f64,
}

/// The figures of a run.
#[derive(Debug, Serialize)]
struct Figures {
    kernels: String,
    /// An empty compile cache: lowering, LLVM, linking, loading.
    cold_s: f64,
    /// The cache filled by the cold run: the median over new processes.
    warm_first_s: f64,
    /// A repeated call in one process (the median over the same processes).
    repeat_s: f64,
}

/// The probe: times `HostAttention::new` once and then [`REPEATS`] times; prints JSON.
pub fn probe() -> Result<()> {
    let scheme = kvq::CacheScheme::parse(kvq::bench::attention::SCHEME)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: kvq::bench::attention::DIM as u32,
        group: kvq::bench::attention::GROUP as u32,
    };
    let t = Instant::now();
    HostAttention::new(&scheme, shape, None)?;
    let first_s = t.elapsed().as_secs_f64();
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            HostAttention::new(&scheme, shape, None).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    let repeat_s = times[times.len() / 2];
    println!("{}", serde_json::to_string(&Probe { first_s, repeat_s })?);
    Ok(())
}

/// Runs the probe in a new process of this binary with the compile cache at `cache`.
fn run_probe(cache: &Path) -> Result<Probe> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let out = Command::new(exe)
        .args(["bench", "compile", "--probe"])
        .env("KVQ_CACHE_DIR", cache)
        .env_remove("KVQ_CACHE")
        .env_remove("KVQ_DUMP")
        .output()
        .context("running the probe")?;
    if !out.status.success() {
        bail!(
            "the probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading the probe's figures")
}

/// Cold, then warm ([`WARM_PROCESSES`] times), each in a new process, with a compile cache of
/// its own.
pub fn run(json: bool) -> Result<()> {
    let cache = std::env::temp_dir().join(format!("kvq-bench-compile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let result = (|| -> Result<(Probe, Vec<Probe>)> {
        let cold = run_probe(&cache)?;
        let warm = (0..WARM_PROCESSES)
            .map(|_| run_probe(&cache))
            .collect::<Result<_>>()?;
        Ok((cold, warm))
    })();
    let _ = std::fs::remove_dir_all(&cache);
    let (cold, warm) = result?;
    let median = |f: fn(&Probe) -> f64| {
        let mut v: Vec<f64> = warm.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let figures = Figures {
        kernels: format!(
            "host decode attention of {} (head_dim {}, group {})",
            kvq::bench::attention::SCHEME,
            kvq::bench::attention::DIM,
            kvq::bench::attention::GROUP
        ),
        cold_s: cold.first_s,
        warm_first_s: median(|p| p.first_s),
        repeat_s: median(|p| p.repeat_s),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    println!("compile: {}; {}", figures.kernels, kvq::bench::machine());
    println!(
        "  cold, an empty compile cache (new process):  {:>10.3} ms",
        figures.cold_s * 1e3
    );
    println!(
        "  warm, the first call (median of {WARM_PROCESSES} processes):{:>10.3} ms",
        figures.warm_first_s * 1e3
    );
    println!(
        "  warm, a repeated call (median of {REPEATS}):        {:>10.4} ms",
        figures.repeat_s * 1e3
    );
    Ok(())
}
