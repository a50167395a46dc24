//! `--cache BUNDLE`: the visual KV cache on the GPU (`VisualKvCache<Cuda>`) against the same
//! cache on the host with kvq-ir's reference quantizer and hand-written attention, over one
//! scenario: ragged sequences (prefix + span + suffix, span only, text only), decode appends
//! that grow the suffix, imported spans, and a refused call.
//!
//! Checked: spans quantized on the GPU and exported equal the reference's bit for bit (SPEC.md
//! section 3); tokens, suffix capacities and memory reports are equal; attention agrees within
//! 1e-4 relative per query head; an error leaves the GPU cache as it was.

use std::fmt::Write as _;

use anyhow::{ensure, Context, Result};
use kvq_ir::metrics::max_head_deviation;
use kvq_ir::{CacheScheme, Tensor3};
use kvq_runtime::cache::Cuda;
use kvq_runtime::cuda::{Bundle, CudaRuntime, Role};
use kvq_runtime::{CacheError, Device, ModelShape, QueryRef, SeqId, VisualKvCache};

use crate::attention::TOLERANCE;
use crate::synthetic::uniform;

/// The result of one bundle's scenario.
pub struct CacheRow {
    pub scheme: String,
    pub device: String,
    /// Largest attention deviation over layers and batches.
    pub deviation: f64,
    /// Spans compared bit for bit.
    pub spans: usize,
}

fn tensor(seed: &mut u64, heads: usize, tokens: usize, dim: usize) -> Result<Tensor3> {
    let data = (0..heads * tokens * dim)
        .map(|_| uniform(seed) * 2.0)
        .collect();
    Ok(Tensor3::new([heads, tokens, dim], data)?)
}

/// Both caches, driven in step.
struct Pair {
    gpu: VisualKvCache<Cuda>,
    host: VisualKvCache,
    ids: Vec<(SeqId, SeqId)>,
}

impl Pair {
    fn add(&mut self) -> usize {
        self.ids
            .push((self.gpu.add_sequence(), self.host.add_sequence()));
        self.ids.len() - 1
    }

    fn prefill(
        &mut self,
        i: usize,
        layer: usize,
        k: &Tensor3,
        v: &Tensor3,
        visual: std::ops::Range<usize>,
    ) -> Result<()> {
        let (g, h) = self.ids[i];
        self.gpu.prefill(layer, g, k, v, visual.clone())?;
        self.host.prefill(layer, h, k, v, visual)?;
        Ok(())
    }

    fn append(&mut self, i: usize, layer: usize, k: &Tensor3, v: &Tensor3) -> Result<()> {
        let (g, h) = self.ids[i];
        self.gpu.append(layer, g, k, v)?;
        self.host.append(layer, h, k, v)?;
        Ok(())
    }

    /// Attention of every sequence at `layer` on both; the largest deviation.
    fn attend(&self, layer: usize, queries: &[Vec<f32>], dim: usize) -> Result<f64> {
        let gq: Vec<QueryRef<'_>> = self
            .ids
            .iter()
            .zip(queries)
            .map(|((g, _), q)| QueryRef { seq: *g, q })
            .collect();
        let hq: Vec<QueryRef<'_>> = self
            .ids
            .iter()
            .zip(queries)
            .map(|((_, h), q)| QueryRef { seq: *h, q })
            .collect();
        let got: Vec<f32> = self.gpu.attend(layer, &gq)?.concat();
        let want: Vec<f32> = self.host.attend(layer, &hq)?.concat();
        Ok(max_head_deviation(&got, &want, dim))
    }

    /// Tokens, suffix capacity and exported spans of every sequence at `layer` agree; returns
    /// the spans compared.
    fn same_state(&self, layer: usize) -> Result<usize> {
        let mut spans = 0;
        for (i, &(g, h)) in self.ids.iter().enumerate() {
            ensure!(
                self.gpu.tokens(layer, g)? == self.host.tokens(layer, h)?,
                "sequence {i}: tokens differ"
            );
            ensure!(
                self.gpu.suffix_capacity(layer, g)? == self.host.suffix_capacity(layer, h)?,
                "sequence {i}: suffix capacities differ"
            );
            match (
                self.gpu.export_span(layer, g),
                self.host.export_span(layer, h),
            ) {
                (Ok((gk, gv)), Ok((hk, hv))) => {
                    ensure!(
                        gk == hk,
                        "layer {layer} sequence {i}: key span differs from the reference"
                    );
                    ensure!(
                        gv == hv,
                        "layer {layer} sequence {i}: value span differs from the reference"
                    );
                    spans += 2;
                }
                (Err(a), Err(b)) => ensure!(a == b, "sequence {i}: {a} vs {b}"),
                (a, b) => anyhow::bail!("sequence {i}: export {:?} vs {:?}", a.err(), b.err()),
            }
        }
        ensure!(
            self.gpu.memory() == self.host.memory(),
            "memory reports differ"
        );
        Ok(spans)
    }
}

/// Runs the scenario for `bundle` (compiled with `--input f32 --group G`).
pub fn run(device: usize, bundle: &Bundle, log: &mut String) -> Result<CacheRow> {
    let pair_text = bundle
        .manifest
        .kernels
        .iter()
        .find(|k| k.role == Role::AttentionPartial)
        .map(|k| k.scheme.clone())
        .context("the bundle has no attention kernels")?;
    let scheme = CacheScheme::parse(&pair_text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dim = bundle.manifest.head_dim as usize;
    let group = bundle
        .manifest
        .group
        .context("the manifest states no group")? as usize;
    let rt = CudaRuntime::new(device)?;
    let cuda = Cuda::new(rt, bundle, &scheme)?;
    let name = cuda.name();
    let shape = ModelShape {
        layers: 2,
        kv_heads: 2,
        q_heads: 2 * group,
        head_dim: dim,
    };
    let mut p = Pair {
        gpu: VisualKvCache::on_device(shape, scheme, cuda)?,
        host: VisualKvCache::with_reference(shape, scheme)?,
        ids: Vec::new(),
    };
    let mut seed = 0x5eed_u64;
    // (prefix, span, suffix) tokens: a full prompt, a span only, text only, a long span.
    let prompts = [(5, 300, 7), (0, 1000, 0), (40, 0, 0), (64, 4096, 3)];
    for &(a, s, b) in &prompts {
        let i = p.add();
        for layer in 0..shape.layers {
            let n = a + s + b;
            let k = tensor(&mut seed, 2, n, dim)?;
            let v = tensor(&mut seed, 2, n, dim)?;
            p.prefill(i, layer, &k, &v, a..a + s)?;
        }
    }
    // Decode steps: one token at a time into every sequence (suffix growth by doubling).
    for _ in 0..20 {
        for i in 0..prompts.len() {
            for layer in 0..shape.layers {
                let k = tensor(&mut seed, 2, 1, dim)?;
                let v = tensor(&mut seed, 2, 1, dim)?;
                p.append(i, layer, &k, &v)?;
            }
        }
    }
    // An imported span (the host's export of sequence 0) after a prefix.
    let i = p.add();
    let (g, h) = p.ids[i];
    for layer in 0..shape.layers {
        let (keys, values) = p.host.export_span(layer, p.ids[0].1)?;
        let k = tensor(&mut seed, 2, 9, dim)?;
        let v = tensor(&mut seed, 2, 9, dim)?;
        p.gpu
            .import_span(layer, g, Some((&k, &v)), keys.clone(), values.clone())?;
        p.host.import_span(layer, h, Some((&k, &v)), keys, values)?;
    }
    let mut spans = 0;
    let mut deviation = 0f64;
    for layer in 0..shape.layers {
        spans += p.same_state(layer)?;
        let queries: Vec<Vec<f32>> = (0..p.ids.len())
            .map(|_| {
                (0..shape.q_heads * dim)
                    .map(|_| uniform(&mut seed))
                    .collect()
            })
            .collect();
        deviation = deviation.max(p.attend(layer, &queries, dim)?);
    }
    // A refused call: a query of the wrong length; nothing changes.
    let before = p.gpu.memory();
    let short = vec![0.0; dim];
    let err = p
        .gpu
        .attend(0, &[QueryRef { seq: g, q: &short }])
        .unwrap_err();
    ensure!(
        matches!(err, CacheError::Shape { .. }),
        "unexpected error {err}"
    );
    ensure!(p.gpu.memory() == before, "a refused call changed the cache");
    let _ = writeln!(
        log,
        "cache {pair_text} on {name}: {spans} spans bit-identical to the reference, attention deviation {deviation:.2e}"
    );
    Ok(CacheRow {
        scheme: pair_text,
        device: name,
        deviation,
        spans,
    })
}

/// The markdown table of cache rows.
pub fn table(rows: &[CacheRow]) -> String {
    let mut s = String::from(
        "| cache scheme | device | spans bit-identical | attention deviation | within 1e-4 |\n| --- | --- | ---: | ---: | --- |\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2e} | {} |",
            r.scheme,
            r.device,
            r.spans,
            r.deviation,
            if r.deviation <= TOLERANCE {
                "yes"
            } else {
                "no"
            }
        );
    }
    s
}
