//! `kvq eval`: the error metrics of a (key scheme, value scheme) pair on a real K/V capture.

use std::fmt;

use kvq_ir::metrics::{layer_metrics, LayerMetrics, MetricsError};
use kvq_ir::Scheme;
use kvq_runtime::KvFile;
use serde::Serialize;
use thiserror::Error;

/// A layer whose metrics could not be computed.
#[derive(Debug, Error)]
#[error("layer {layer}: {source}")]
pub struct EvalError {
    /// Layer index within the file.
    pub layer: usize,
    /// What went wrong.
    #[source]
    pub source: MetricsError,
}

/// One layer's figures, as `kvq eval --json` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LayerReport {
    /// Index of the layer within the file.
    pub layer_index: usize,
    /// Relative error of the dequantized keys.
    pub k_rel: f64,
    /// Relative error of the dequantized values.
    pub v_rel: f64,
    /// Relative error of the attention output.
    pub attn_out_rel: f64,
    /// With `--kernels`: the largest relative deviation of a query head's decode attention
    /// through the generated kernels from the reference ([`crate::eval_kernels`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_dev: Option<f64>,
}

/// Plain means over layers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanReport {
    /// Mean k_rel.
    pub k_rel: f64,
    /// Mean v_rel.
    pub v_rel: f64,
    /// Mean attn_out_rel.
    pub attn_out_rel: f64,
    /// Mean kernel_dev, with `--kernels`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_dev: Option<f64>,
}

/// Stored bits per element of each tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BitsReport {
    /// Keys.
    pub key: f64,
    /// Values.
    pub value: f64,
}

/// The result of `kvq eval`, serialised exactly as its `--json` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Per layer, in file order.
    pub layers: Vec<LayerReport>,
    /// Means over layers.
    pub mean: MeanReport,
    /// Bits per element (codes plus parameters).
    pub bits_per_element: BitsReport,
}

/// Quantizes every layer's K and V of `file` (each as one span) and measures SPEC.md section 5's
/// metrics; attention is causal when `causal` is set.
pub fn evaluate(
    file: &KvFile,
    key: &Scheme,
    value: &Scheme,
    causal: bool,
) -> Result<EvalReport, EvalError> {
    let mut layers = Vec::with_capacity(file.layers.len());
    for (layer, kv) in file.layers.iter().enumerate() {
        let LayerMetrics {
            k_rel,
            v_rel,
            attn_out_rel,
        } = layer_metrics(&kv.q, &kv.k, &kv.v, key, value, causal)
            .map_err(|source| EvalError { layer, source })?;
        layers.push(LayerReport {
            layer_index: layer,
            k_rel,
            v_rel,
            attn_out_rel,
            kernel_dev: None,
        });
    }
    let n = layers.len() as f64;
    let mean = MeanReport {
        k_rel: layers.iter().map(|l| l.k_rel).sum::<f64>() / n,
        v_rel: layers.iter().map(|l| l.v_rel).sum::<f64>() / n,
        attn_out_rel: layers.iter().map(|l| l.attn_out_rel).sum::<f64>() / n,
        kernel_dev: None,
    };
    let shape = file.layers[0].k.shape();
    let bits_per_element = BitsReport {
        key: key.bits_per_element(shape.tokens, shape.dim),
        value: value.bits_per_element(shape.tokens, shape.dim),
    };
    Ok(EvalReport {
        layers,
        mean,
        bits_per_element,
    })
}

impl EvalReport {
    /// The report with each layer's kernel deviation (`devs`, one per layer, in order) and
    /// their mean.
    pub fn with_kernel_dev(mut self, devs: &[f64]) -> EvalReport {
        for (l, &d) in self.layers.iter_mut().zip(devs) {
            l.kernel_dev = Some(d);
        }
        self.mean.kernel_dev =
            (!devs.is_empty()).then(|| devs.iter().sum::<f64>() / devs.len() as f64);
        self
    }

    /// Size of an f16 cache over the size of this quantized one.
    pub fn compression_vs_f16(&self) -> f64 {
        32.0 / (self.bits_per_element.key + self.bits_per_element.value)
    }
}

/// The readable table of `kvq eval`.
impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dev = |d: Option<f64>| d.map_or(String::new(), |d| format!(" {d:>12.3e}"));
        let dev_head = match self.mean.kernel_dev {
            Some(_) => format!(" {:>12}", "kernel_dev"),
            None => String::new(),
        };
        writeln!(
            f,
            "{:>6} {:>10} {:>10} {:>13}{dev_head}",
            "layer", "k_rel", "v_rel", "attn_out_rel"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "{:>6} {:>10.6} {:>10.6} {:>13.6}{}",
                l.layer_index,
                l.k_rel,
                l.v_rel,
                l.attn_out_rel,
                dev(l.kernel_dev)
            )?;
        }
        writeln!(
            f,
            "{:>6} {:>10.6} {:>10.6} {:>13.6}{}",
            "mean",
            self.mean.k_rel,
            self.mean.v_rel,
            self.mean.attn_out_rel,
            dev(self.mean.kernel_dev)
        )?;
        write!(
            f,
            "bits per element: key {:.4}, value {:.4}; compression against f16: {:.2}x",
            self.bits_per_element.key,
            self.bits_per_element.value,
            self.compression_vs_f16()
        )
    }
}
