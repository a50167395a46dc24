//! The `--model` and `--attention` options of the commands that run SmolLM2.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kvq::model::{default_model_path, AttentionPath};

/// `--model FILE.gguf`, `--attention`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// The GGUF (default: $KVQ_SMOLLM2, else the one scripts/setup.sh installs into .venv).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The decode attention: the cache's hand-written one, or kvq's generated host kernels.
    #[arg(long, value_enum, default_value = "hand-written")]
    attention: Attention,
}

/// The command line's names of [`AttentionPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Attention {
    HandWritten,
    Generated,
}

impl ModelArgs {
    /// The attention the decode steps run.
    pub fn attention(&self) -> AttentionPath {
        match self.attention {
            Attention::HandWritten => AttentionPath::HandWritten,
            Attention::Generated => AttentionPath::Generated,
        }
    }

    /// The GGUF's path, or why there is none.
    pub fn path(&self) -> Result<PathBuf> {
        match self.model.clone().or_else(default_model_path) {
            Some(p) => Ok(p),
            None => {
                bail!("the SmolLM2 GGUF is not installed: run scripts/setup.sh, or pass --model")
            }
        }
    }
}
