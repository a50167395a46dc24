//! `--cache BUNDLE`: the visual KV cache on the GPU (`VisualKvCache<Cuda>`, the bundle's pair)
//! through kvq-runtime's conformance suite (`kvq_runtime::cache::conformance`), the same one
//! the crate's tests run on the host: ragged batches against kvq-ir's reference attention
//! within 1e-4, exported spans bit-identical to the reference quantizer's, refused calls that
//! change nothing, export/import, suffix growth and memory accounting.

use std::fmt::Write as _;

use anyhow::{anyhow, Context, Result};
use kvq_ir::CacheScheme;
use kvq_runtime::cache::{conformance, Cuda};
use kvq_runtime::cuda::{Bundle, CudaRuntime, Role};
use kvq_runtime::{Device, ModelShape, VisualKvCache};

/// The result of one bundle's suite.
pub struct CacheRow {
    pub scheme: String,
    pub device: String,
    pub report: conformance::Report,
}

/// Runs the suite on device `device` with `bundle` (compiled with `--input T --fp T --group G`:
/// a cache storing its full-precision rows as T).
pub fn run(device: usize, bundle: &Bundle, log: &mut String) -> Result<CacheRow> {
    let pair = bundle
        .manifest
        .kernels
        .iter()
        .find(|k| k.role == Role::AttentionPartial)
        .map(|k| k.scheme.clone())
        .context("the bundle has no attention kernels")?;
    let scheme = CacheScheme::parse(&pair).map_err(|e| anyhow!("{e}"))?;
    let group = bundle
        .manifest
        .group
        .context("the manifest states no group")? as usize;
    let shape = ModelShape {
        layers: 2,
        kv_heads: 2,
        q_heads: 2 * group,
        head_dim: bundle.manifest.head_dim as usize,
    };
    let cuda = Cuda::new(CudaRuntime::new(device)?, bundle, &scheme)?;
    let name = format!("{}, {} rows", cuda.name(), cuda.fp().name());
    // Each scenario gets a fresh cache, and each cache its own context handle and kernels.
    let make = || {
        let cuda = CudaRuntime::new(device)
            .and_then(|rt| Cuda::new(rt, bundle, &scheme))
            .map_err(|e| kvq_runtime::CacheError::Device {
                source: kvq_runtime::DeviceError::new("opening the CUDA device", e),
            })?;
        VisualKvCache::on_device_storing(shape, scheme, cuda.fp(), cuda)
    };
    let report = conformance::run(&make).map_err(|e| anyhow!("{pair}: {e}"))?;
    let _ = writeln!(
        log,
        "cache {pair} on {name}: {} checks passed, {} spans bit-identical to the reference, attention deviation {:.2e}",
        report.checks, report.spans, report.deviation
    );
    Ok(CacheRow {
        scheme: pair,
        device: name,
        report,
    })
}

/// The markdown table of cache rows.
pub fn table(rows: &[CacheRow]) -> String {
    let mut s = String::from(
        "| cache scheme | device | checks passed | spans bit-identical | attention deviation |\n| --- | --- | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2e} |",
            r.scheme, r.device, r.report.checks, r.report.spans, r.report.deviation
        );
    }
    s
}
