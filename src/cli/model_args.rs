//! The `--model` option of the commands that run SmolLM2.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kvq::model::default_model_path;

/// `--model FILE.gguf`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// The GGUF (default: $KVQ_SMOLLM2, else the one scripts/setup.sh installs into .venv).
    #[arg(long)]
    model: Option<PathBuf>,
}

impl ModelArgs {
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
