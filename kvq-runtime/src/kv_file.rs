//! Reading a K/V capture: a safetensors file with `q` `[layers, q_heads, tokens, head_dim]` and
//! `k`, `v` `[layers, kv_heads, tokens, head_dim]` in f16, bf16 or f32, and an optional `causal`
//! metadata entry ("true"/"false").

use std::path::{Path, PathBuf};

use kvq_ir::{Tensor3, TensorError};
use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

/// Why a K/V file cannot be used. Every variant names the file's problem precisely.
#[derive(Debug, Error)]
pub enum KvFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid safetensors file.
    #[error("{path} is not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser found wrong, in words ([`safetensors_reason`]).
        reason: String,
    },
    /// A required tensor is absent.
    #[error("tensor `{name}` is missing (a K/V file holds q, k and v)")]
    Missing {
        /// The tensor's name.
        name: &'static str,
    },
    /// A tensor has an unsupported element type.
    #[error("tensor `{name}` has dtype {dtype}, expected F16, BF16 or F32")]
    Dtype {
        /// The tensor's name.
        name: &'static str,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor has the wrong rank or an empty dimension.
    #[error("tensor `{name}` has shape {shape:?}, expected 4 non-zero dimensions [layers, heads, tokens, head_dim]")]
    Rank {
        /// The tensor's name.
        name: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Tensors disagree in shape.
    #[error("shape mismatch: q {q:?}, k {k:?}, v {v:?} (k and v must be equal; q must share layers, tokens and head_dim, with q heads a multiple of kv heads)")]
    Mismatch {
        /// Shape of q.
        q: Vec<usize>,
        /// Shape of k.
        k: Vec<usize>,
        /// Shape of v.
        v: Vec<usize>,
    },
    /// A NaN or infinity.
    #[error("tensor `{name}` has non-finite value {value} at layer {layer}, head {head}, token {token}, channel {channel}")]
    NonFinite {
        /// The tensor's name.
        name: &'static str,
        /// Layer index within the file.
        layer: usize,
        /// Head.
        head: usize,
        /// Token.
        token: usize,
        /// Channel.
        channel: usize,
        /// The value.
        value: f32,
    },
    /// The `causal` metadata is neither "true" nor "false".
    #[error("metadata `causal` is {0:?}, expected \"true\" or \"false\"")]
    Causal(String),
    /// A tensor could not be formed.
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// One layer's tensors, as f32.
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Queries `[q_heads, tokens, head_dim]`.
    pub q: Tensor3,
    /// Keys `[kv_heads, tokens, head_dim]`.
    pub k: Tensor3,
    /// Values `[kv_heads, tokens, head_dim]`.
    pub v: Tensor3,
}

/// A loaded K/V capture.
#[derive(Debug, Clone)]
pub struct KvFile {
    /// Per layer, in file order.
    pub layers: Vec<LayerKv>,
    /// The file's `causal` metadata (false when absent).
    pub causal: bool,
}

impl KvFile {
    /// Reads and checks `path`: dtypes, shapes, finiteness.
    pub fn load(path: &Path) -> Result<KvFile, KvFileError> {
        let bytes = std::fs::read(path).map_err(|source| KvFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            KvFileError::Format { reason, .. } => KvFileError::Format {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses a safetensors buffer.
    pub fn from_bytes(bytes: &[u8]) -> Result<KvFile, KvFileError> {
        let format = |e| KvFileError::Format {
            path: PathBuf::from("<buffer>"),
            reason: safetensors_reason(&e),
        };
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(format)?;
        let causal = match metadata.metadata().as_ref().and_then(|m| m.get("causal")) {
            None => false,
            Some(s) if s == "true" => true,
            Some(s) if s == "false" => false,
            Some(s) => return Err(KvFileError::Causal(s.clone())),
        };
        let st = SafeTensors::deserialize(bytes).map_err(format)?;
        let (q_shape, q) = read_f32(&st, "q")?;
        let (k_shape, k) = read_f32(&st, "k")?;
        let (v_shape, v) = read_f32(&st, "v")?;
        let agree = k_shape == v_shape
            && q_shape[0] == k_shape[0]
            && q_shape[2] == k_shape[2]
            && q_shape[3] == k_shape[3]
            && q_shape[1] % k_shape[1] == 0;
        if !agree {
            return Err(KvFileError::Mismatch {
                q: q_shape,
                k: k_shape,
                v: v_shape,
            });
        }
        let layers = q_shape[0];
        let split = |name: &'static str, shape: &[usize], data: &[f32]| {
            let per = data.len() / layers;
            (0..layers)
                .map(|l| {
                    let t = Tensor3::new(
                        [shape[1], shape[2], shape[3]],
                        data[l * per..(l + 1) * per].to_vec(),
                    )?;
                    match t.first_non_finite() {
                        Some(([head, token, channel], value)) => Err(KvFileError::NonFinite {
                            name,
                            layer: l,
                            head,
                            token,
                            channel,
                            value,
                        }),
                        None => Ok(t),
                    }
                })
                .collect::<Result<Vec<_>, KvFileError>>()
        };
        let qs = split("q", &q_shape, &q)?;
        let ks = split("k", &k_shape, &k)?;
        let vs = split("v", &v_shape, &v)?;
        let layers = qs
            .into_iter()
            .zip(ks)
            .zip(vs)
            .map(|((q, k), v)| LayerKv { q, k, v })
            .collect();
        Ok(KvFile { layers, causal })
    }
}

/// A rank-4 tensor converted exactly to f32, with its shape.
fn read_f32(
    st: &SafeTensors<'_>,
    name: &'static str,
) -> Result<(Vec<usize>, Vec<f32>), KvFileError> {
    let view = st.tensor(name).map_err(|_| KvFileError::Missing { name })?;
    let shape = view.shape().to_vec();
    if shape.len() != 4 || shape.contains(&0) {
        return Err(KvFileError::Rank { name, shape });
    }
    let bytes = view.data();
    let data = match view.dtype() {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => {
            return Err(KvFileError::Dtype {
                name,
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok((shape, data))
}

/// The safetensors parser's error in words (its own `Display` prints the variant's name).
pub fn safetensors_reason(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidHeader => "the header is not valid UTF-8".to_string(),
        E::InvalidHeaderStart => "the header does not start with `{`".to_string(),
        E::InvalidHeaderDeserialization => "the header is not the expected JSON".to_string(),
        E::HeaderTooLarge => "the header is larger than 100 MB".to_string(),
        E::HeaderTooSmall => "the file is shorter than its 8-byte header length".to_string(),
        E::InvalidHeaderLength => "the header length runs past the end of the file".to_string(),
        E::TensorNotFound(name) => format!("no tensor `{name}`"),
        E::TensorInvalidInfo => "a tensor's shape and byte range disagree".to_string(),
        E::InvalidOffset(name) => format!("tensor `{name}` has invalid data offsets"),
        E::IoError(io) => io.to_string(),
        E::JsonError(json) => format!("header JSON: {json}"),
        E::InvalidTensorView(dtype, shape, len) => {
            format!("{len} bytes do not hold a {dtype:?} tensor of shape {shape:?}")
        }
        E::MetadataIncompleteBuffer => "the tensors' data is cut short".to_string(),
        E::ValidationOverflow => "a tensor's size overflows".to_string(),
    }
}
