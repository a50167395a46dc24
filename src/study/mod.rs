//! The multi-prompt study of a quantized span on SmolLM2: a manifest of prompts (each with its
//! span and compared positions), the ablation's entries, and their mean figures.

mod ablation;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::HostSpanQuantizer;
use crate::model::{evaluate_many, AttentionPath, Model, ModelError, ModelEval, SpanTreatment};

pub use ablation::{ablation, load_entries, Entry, CALIBRATE_D};

/// Why a study could not be read or run.
#[derive(Debug, Error)]
pub enum StudyError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is malformed.
    #[error("study manifest {path}: {what}")]
    Manifest {
        /// The manifest.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The model failed on a prompt.
    #[error("prompt {prompt}: {source}")]
    Model {
        /// The prompt's name.
        prompt: String,
        /// The cause.
        #[source]
        source: ModelError,
    },
}

/// A file's name without folder and extension (`harbour` for `docs/prompts/harbour.txt`), the
/// name prompts and captures go by in the study's output.
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// One prompt of a study: its text, the span quantized, and the positions compared after it.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyPrompt {
    /// The file's stem (`harbour` for `harbour.txt`).
    pub name: String,
    /// The prompt's text.
    pub text: String,
    /// The span, in prompt tokens.
    pub span: Range<usize>,
    /// Teacher-forced positions after the span.
    pub positions: usize,
}

#[derive(Deserialize)]
struct ManifestPrompt {
    file: PathBuf,
    span: [usize; 2],
    positions: usize,
}

#[derive(Deserialize)]
struct Manifest {
    prompts: Vec<ManifestPrompt>,
}

/// Reads a study manifest (`docs/prompts/study.json`): `{"prompts": [{"file", "span": [start,
/// end], "positions"}]}`, files relative to the manifest's folder.
pub fn load_study(path: &Path) -> Result<Vec<StudyPrompt>, StudyError> {
    let name = path.display().to_string();
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| StudyError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let bad = |what: String| StudyError::Manifest {
        path: name.clone(),
        what,
    };
    let manifest: Manifest = serde_json::from_str(&read(path)?).map_err(|e| bad(e.to_string()))?;
    if manifest.prompts.is_empty() {
        return Err(bad("no prompts".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    manifest
        .prompts
        .into_iter()
        .map(|p| {
            let [start, end] = p.span;
            if start >= end || p.positions == 0 {
                return Err(bad(format!(
                    "{}: span {start}..{end} and {} positions: need a non-empty span and \
                     at least one position",
                    p.file.display(),
                    p.positions
                )));
            }
            Ok(StudyPrompt {
                name: stem(&p.file),
                text: read(&dir.join(&p.file))?,
                span: start..end,
                positions: p.positions,
            })
        })
        .collect()
}

/// One entry's figures over a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryResult {
    /// The entry's name.
    pub name: String,
    /// What the cache keeps of the span (the scheme's canonical text, or "dropped").
    pub treatment: String,
    /// Stored bits per span element (codes and parameters; 0 for a dropped span), over all
    /// prompts.
    pub bits_per_element: f64,
    /// Mean over prompts of the top-1 agreement.
    pub mean_top1: f64,
    /// Mean over prompts of the mean KL divergence, nats.
    pub mean_kl: f64,
    /// Mean over prompts of perplexity / full-precision perplexity.
    pub mean_perplexity_ratio: f64,
    /// Per prompt, in study order.
    pub prompts: Vec<ModelEval>,
}

/// Runs every entry on every prompt (all entries of a prompt in one batched pass), attention
/// on `path`; `progress` is called after each prompt with its index.
pub fn run_study(
    model: &Model,
    prompts: &[StudyPrompt],
    entries: &[Entry],
    path: AttentionPath,
    mut progress: impl FnMut(usize),
) -> Result<Vec<EntryResult>, StudyError> {
    let treatments: Vec<SpanTreatment> = entries.iter().map(|e| e.treatment).collect();
    let mut per_prompt = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let tokens = model
            .tokenizer
            .encode(&p.text)
            .map_err(|e| StudyError::Model {
                prompt: p.name.clone(),
                source: e.into(),
            })?;
        let r = evaluate_many(
            model,
            &treatments,
            HostSpanQuantizer,
            &tokens,
            p.span.clone(),
            p.positions,
            path,
        )
        .map_err(|source| StudyError::Model {
            prompt: p.name.clone(),
            source,
        })?;
        per_prompt.push(r);
        progress(i);
    }
    let n = prompts.len() as f64;
    Ok(entries
        .iter()
        .enumerate()
        .map(|(e, entry)| {
            let evals: Vec<ModelEval> = per_prompt.iter().map(|r| r[e].clone()).collect();
            let mean = |f: &dyn Fn(&ModelEval) -> f64| evals.iter().map(f).sum::<f64>() / n;
            let bytes: usize = evals.iter().map(|r| r.span_bytes).sum();
            let f16: usize = evals.iter().map(|r| r.span_f16_bytes).sum();
            EntryResult {
                name: entry.name.clone(),
                treatment: match entry.treatment {
                    SpanTreatment::Quantized(s) => s.to_string(),
                    SpanTreatment::Dropped => "dropped".into(),
                },
                bits_per_element: 16.0 * bytes as f64 / f16.max(1) as f64,
                mean_top1: mean(&|r| r.top1_agreement),
                mean_kl: mean(&|r| r.mean_kl),
                mean_perplexity_ratio: mean(&|r| r.perplexity / r.perplexity_fp),
                prompts: evals,
            }
        })
        .collect())
}
