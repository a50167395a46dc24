//! The scheme-pair and attention-shape options shared by `kvq attention-case` and
//! `kvq tune-attention`.

use anyhow::{Context, Result};
use kvq::lower::attention::AttentionShape;
use kvq::{CacheScheme, Calibration, Scheme};

/// `--key`, `--value`, `--calibrate`, `--head-dim`, `--group`.
#[derive(Debug, clap::Args)]
pub struct PairArgs {
    /// Key scheme.
    #[arg(long)]
    key: String,
    /// Value scheme.
    #[arg(long)]
    value: String,
    /// Calibration `d` of the span's logits.
    #[arg(long)]
    calibrate: Option<f32>,
    /// Channels per head.
    #[arg(long, default_value_t = 128, value_parser = super::sizes::head_dim)]
    head_dim: u32,
    /// Query heads per kv head.
    #[arg(long, default_value_t = 4, value_parser = super::sizes::group)]
    group: u32,
}

impl PairArgs {
    /// The cache scheme the options name.
    pub fn scheme(&self) -> Result<CacheScheme> {
        let calibrate = match self.calibrate {
            None => None,
            Some(d) => Some(Calibration::new(d).context("--calibrate must be positive")?),
        };
        Ok(CacheScheme {
            key: Scheme::parse(&self.key).context("--key")?,
            value: Scheme::parse(&self.value).context("--value")?,
            calibrate,
        })
    }

    /// The attention shape class the options name.
    pub fn shape(&self) -> AttentionShape {
        AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: self.head_dim,
            group: self.group,
        }
    }
}
