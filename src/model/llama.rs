//! The Llama forward pass of SmolLM2 on candle-core tensors (f32, CPU): a full-precision causal
//! prefill that returns every layer's keys and values, and decode steps whose attention is
//! kvq's [`VisualKvCache`].

use std::io::Seek;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor, D};
use kvq_ir::lower::attention::AttentionShape;
use kvq_runtime::{CacheError, Host, ModelShape, QueryRef, SeqId, SpanQuantizer, VisualKvCache};
use rayon::prelude::*;
use thiserror::Error;

use super::Tokenizer;
use crate::attention::HostAttention;
use crate::Tensor3;

/// Why loading or running the model failed.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("model file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The GGUF is malformed or lacks a tensor or key.
    #[error("model file {path}: {what}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// A tensor operation failed.
    #[error("model: {0}")]
    Tensor(String),
    /// The cache refused an operation.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The generated attention kernels could not be built or run.
    #[error("generated attention: {0}")]
    Attention(#[from] crate::backend::BackendError),
    /// A token id outside the vocabulary, or an empty prompt.
    #[error("token input: {0}")]
    Input(String),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
}

fn t_err(e: candle_core::Error) -> ModelError {
    ModelError::Tensor(e.to_string())
}

/// The model's hyperparameters, from the GGUF metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f64,
}

/// The largest model kvq's forward pass accepts, per hyperparameter.
const MAX_LAYERS: usize = 1024;
const MAX_HIDDEN: usize = 65_536;
const MAX_HEADS: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;

impl Config {
    /// Checks the hyperparameters before any weight is read: every count positive and bounded,
    /// the hidden size split evenly over the query heads into an even head_dim (rotary pairs)
    /// within [`kvq_ir::limits::MAX_HEAD_DIM`], the query heads a multiple of the kv heads, and
    /// finite positive RoPE base and epsilon.
    pub fn validate(&self) -> Result<(), String> {
        let within = |name: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} is outside 1..={max}"))
            }
        };
        within("llama.block_count", self.layers, MAX_LAYERS)?;
        within("llama.embedding_length", self.hidden, MAX_HIDDEN)?;
        within("llama.attention.head_count", self.q_heads, MAX_HEADS)?;
        within("llama.attention.head_count_kv", self.kv_heads, self.q_heads)?;
        within("the vocabulary size", self.vocab, MAX_VOCAB)?;
        if self.hidden % self.q_heads != 0 {
            return Err(format!(
                "llama.embedding_length = {} is not a multiple of llama.attention.head_count = {}",
                self.hidden, self.q_heads
            ));
        }
        if self.q_heads % self.kv_heads != 0 {
            return Err(format!(
                "llama.attention.head_count = {} is not a multiple of head_count_kv = {}",
                self.q_heads, self.kv_heads
            ));
        }
        let max_dim = kvq_ir::limits::MAX_HEAD_DIM;
        if self.head_dim % 8 != 0 || self.head_dim > max_dim {
            return Err(format!(
                "head_dim {} (embedding_length / head_count) must be a multiple of 8 up to {max_dim}",
                self.head_dim
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(format!(
                "llama.rope.freq_base = {} must be positive",
                self.rope_base
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!(
                "llama.attention.layer_norm_rms_epsilon = {} must be positive",
                self.eps
            ));
        }
        Ok(())
    }

    /// The shape of a [`VisualKvCache`] for this model.
    pub fn cache_shape(&self) -> ModelShape {
        ModelShape {
            layers: self.layers,
            kv_heads: self.kv_heads,
            q_heads: self.q_heads,
            head_dim: self.head_dim,
        }
    }

    /// The shape class of this model's generated decode attention.
    pub fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: self.head_dim as u32,
            group: self.q_heads.checked_div(self.kv_heads).unwrap_or(0) as u32,
        }
    }
}

/// What [`Model::prefill`] returns: every layer's (keys, values) `[kv_heads, tokens,
/// head_dim]` (keys after the rotary embedding) and the last position's logits.
pub type Prefill = (Vec<(Tensor3, Tensor3)>, Vec<f32>);

/// One decoder layer; the projection matrices are stored transposed (`[in, out]`, contiguous),
/// the layout the matrix products read fastest.
struct Layer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// SmolLM2 with f32 weights.
pub struct Model {
    /// Hyperparameters.
    pub config: Config,
    /// The GGUF's tokenizer.
    pub tokenizer: Tokenizer,
    embed: Tensor,
    /// The output projection (tied to the embeddings), `[hidden, vocab]`.
    embed_t: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish()
    }
}

/// Checks that every weight the forward pass reads is in the file with the shape `config` implies
/// (`[out, in]` as candle reports GGUF's dimensions), before any is read.
fn check_shapes(content: &gguf_file::Content, config: &Config) -> Result<(), String> {
    let dims = |name: &str| -> Result<Vec<usize>, String> {
        content
            .tensor_infos
            .get(name)
            .map(|info| info.shape.dims().to_vec())
            .ok_or_else(|| format!("missing tensor {name}"))
    };
    let (h, q, kv) = (
        config.hidden,
        config.q_heads * config.head_dim,
        config.kv_heads * config.head_dim,
    );
    let ffn = dims("blk.0.ffn_gate.weight")?.first().copied().unwrap_or(0);
    let mut want: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![config.vocab, h]),
        ("output_norm.weight".into(), vec![h]),
    ];
    for i in 0..config.layers {
        let w = |n: &str, shape: Vec<usize>| (format!("blk.{i}.{n}.weight"), shape);
        want.extend([
            w("attn_q", vec![q, h]),
            w("attn_k", vec![kv, h]),
            w("attn_v", vec![kv, h]),
            w("attn_output", vec![h, q]),
            w("ffn_gate", vec![ffn, h]),
            w("ffn_up", vec![ffn, h]),
            w("ffn_down", vec![h, ffn]),
            w("attn_norm", vec![h]),
            w("ffn_norm", vec![h]),
        ]);
    }
    for (name, shape) in want {
        let got = dims(&name)?;
        if got != shape || got.contains(&0) {
            return Err(format!(
                "tensor {name} has shape {got:?}, expected {shape:?}"
            ));
        }
    }
    Ok(())
}

impl Model {
    /// Reads a Llama-architecture GGUF and dequantizes its weights to f32.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let name = path.display().to_string();
        let io = |source| ModelError::Io {
            path: name.clone(),
            source,
        };
        let fmt = |what: String| ModelError::Format {
            path: name.clone(),
            what,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // candle allocates what the header claims: bound every length by the file first.
        super::gguf_check::check_header(&file, len).map_err(fmt)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| fmt(e.to_string()))?;
        let md = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| fmt(format!("missing metadata {key}")))
        };
        let int = |key: &str| -> Result<usize, ModelError> {
            md(key)?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| fmt(format!("{key}: {e}")))
        };
        let float = |key: &str| -> Result<f32, ModelError> {
            md(key)?.to_f32().map_err(|e| fmt(format!("{key}: {e}")))
        };
        let strings = |key: &str| -> Result<Vec<String>, ModelError> {
            md(key)?
                .to_vec()
                .map_err(|e| fmt(format!("{key}: {e}")))?
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| fmt(format!("{key}: {e}")))
                })
                .collect()
        };
        let hidden = int("llama.embedding_length")?;
        let q_heads = int("llama.attention.head_count")?;
        let tokens = strings("tokenizer.ggml.tokens")?;
        let config = Config {
            layers: int("llama.block_count")?,
            hidden,
            q_heads,
            kv_heads: int("llama.attention.head_count_kv")?,
            head_dim: hidden.checked_div(q_heads).unwrap_or(0),
            vocab: tokens.len(),
            rope_base: float("llama.rope.freq_base")?,
            eps: f64::from(float("llama.attention.layer_norm_rms_epsilon")?),
        };
        config.validate().map_err(fmt)?;
        let token_types: Vec<i32> = md("tokenizer.ggml.token_type")?
            .to_vec()
            .map_err(|e| fmt(format!("token types: {e}")))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(0))
            .collect();
        let tokenizer =
            Tokenizer::from_gguf(tokens, &strings("tokenizer.ggml.merges")?, &token_types)
                .map_err(|e| fmt(e.to_string()))?;
        let dev = Device::Cpu;
        check_shapes(&content, &config).map_err(fmt)?;
        let mut tensor = |n: &str| -> Result<Tensor, ModelError> {
            if let Some(info) = content.tensor_infos.get(n) {
                super::gguf_check::check_tensor_data(n, info, content.tensor_data_offset, len)
                    .map_err(fmt)?;
            }
            content
                .tensor(&mut file, n, &dev)
                .and_then(|q| q.dequantize(&dev))
                .map_err(|e| fmt(format!("tensor {n}: {e}")))
        };
        let embed = tensor("token_embd.weight")?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut w = |n: &str| tensor(&format!("blk.{i}.{n}.weight"));
            let mut wt = |n: &str| transposed(w(n)?);
            layers.push(Layer {
                q: wt("attn_q")?,
                k: wt("attn_k")?,
                v: wt("attn_v")?,
                o: wt("attn_output")?,
                gate: wt("ffn_gate")?,
                up: wt("ffn_up")?,
                down: wt("ffn_down")?,
                attn_norm: w("attn_norm")?,
                ffn_norm: w("ffn_norm")?,
            });
        }
        let norm = tensor("output_norm.weight")?;
        Ok(Model {
            config,
            tokenizer,
            embed_t: transposed(embed.clone())?,
            embed,
            layers,
            norm,
        })
    }

    fn embed_tokens(&self, tokens: &[u32]) -> Result<Tensor, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Input("no tokens".into()));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(ModelError::Input(format!(
                "token id {t} outside the vocabulary of {}",
                self.config.vocab
            )));
        }
        let ids = Tensor::new(tokens, &Device::Cpu).map_err(t_err)?;
        self.embed.index_select(&ids, 0).map_err(t_err)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor, ModelError> {
        (|| {
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            let inv = (ms + self.config.eps)?.sqrt()?.recip()?;
            x.broadcast_mul(&inv)?.broadcast_mul(w)
        })()
        .map_err(t_err)
    }

    /// Rotary embedding on interleaved pairs of `x` = `[rows, heads * head_dim]`, row `i` at
    /// position `position(i)`.
    fn rope(&self, x: &Tensor, position: impl Fn(usize) -> usize) -> Result<Tensor, ModelError> {
        let (t, width) = x.dims2().map_err(t_err)?;
        let d = self.config.head_dim;
        let mut data = x
            .flatten_all()
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(t_err)?;
        for (i, row) in data.chunks_mut(width).enumerate() {
            let pos = position(i) as f32;
            for head in row.chunks_mut(d) {
                for (j, pair) in head.chunks_mut(2).enumerate() {
                    let freq = self.config.rope_base.powf(-2.0 * j as f32 / d as f32);
                    let (sin, cos) = (pos * freq).sin_cos();
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * cos - b * sin;
                    pair[1] = a * sin + b * cos;
                }
            }
        }
        Tensor::from_vec(data, (t, width), &Device::Cpu).map_err(t_err)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.rms_norm(x, &layer.ffn_norm)?;
        (|| {
            let g = h.matmul(&layer.gate)?.silu()?;
            let u = h.matmul(&layer.up)?;
            (g * u)?.matmul(&layer.down)
        })()
        .map_err(t_err)
    }

    /// `[tokens, width]` as `[heads, tokens, head_dim]`.
    fn heads(&self, x: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
        let (t, _) = x.dims2().map_err(t_err)?;
        x.reshape((t, heads, self.config.head_dim))
            .and_then(|x| x.transpose(0, 1))
            .and_then(|x| x.contiguous())
            .map_err(t_err)
    }

    /// The full-precision causal forward over `tokens` (positions 0..): every layer's keys
    /// (after the rotary embedding) and values `[kv_heads, tokens, head_dim]`, and the logits of
    /// the last position.
    pub fn prefill(&self, tokens: &[u32]) -> Result<Prefill, ModelError> {
        let c = self.config;
        let t = tokens.len();
        let g = c.q_heads / c.kv_heads;
        let mut x = self.embed_tokens(tokens)?;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).map_err(t_err)?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let mut kv = Vec::with_capacity(c.layers);
        for layer in &self.layers {
            let h = self.rms_norm(&x, &layer.attn_norm)?;
            let proj = |w: &Tensor| h.matmul(w);
            let q = self.rope(&proj(&layer.q).map_err(t_err)?, |i| i)?;
            let k = self.rope(&proj(&layer.k).map_err(t_err)?, |i| i)?;
            let v = proj(&layer.v).map_err(t_err)?;
            let (q, k, v) = (
                self.heads(&q, c.q_heads)?,
                self.heads(&k, c.kv_heads)?,
                self.heads(&v, c.kv_heads)?,
            );
            kv.push((to_tensor3(&k)?, to_tensor3(&v)?));
            let attn = (|| {
                // Each kv head serves `g` consecutive query heads.
                let kr = k
                    .unsqueeze(1)?
                    .expand((c.kv_heads, g, t, c.head_dim))?
                    .reshape((c.q_heads, t, c.head_dim))?;
                let vr = v
                    .unsqueeze(1)?
                    .expand((c.kv_heads, g, t, c.head_dim))?
                    .reshape((c.q_heads, t, c.head_dim))?;
                let s = (q.matmul(&kr.t()?)? * scale)?.broadcast_add(&mask)?;
                let m = s.max_keepdim(D::Minus1)?;
                let e = s.broadcast_sub(&m)?.exp()?;
                let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
                p.matmul(&vr)?
                    .transpose(0, 1)?
                    .reshape((t, c.q_heads * c.head_dim))
            })()
            .map_err(t_err)?;
            let o = attn.matmul(&layer.o).map_err(t_err)?;
            x = (x + o).map_err(t_err)?;
            x = (&x + self.mlp(layer, &x)?).map_err(t_err)?;
        }
        let last = x.narrow(0, t - 1, 1).map_err(t_err)?;
        Ok((kv, self.logits(&last)?))
    }

    fn logits(&self, x: &Tensor) -> Result<Vec<f32>, ModelError> {
        let h = self.rms_norm(x, &self.norm)?;
        h.matmul(&self.embed_t)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(t_err)
    }

    /// One decode step of `token` at position `pos` for `seq`: its keys and values are appended
    /// to the cache at every layer and its attention is the cache's; returns the logits.
    pub fn decode<Q: SpanQuantizer + Send>(
        &self,
        cache: &mut VisualKvCache<Host<Q>>,
        seq: SeqId,
        token: u32,
        pos: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let mut lanes = [Lane {
            cache,
            seq,
            kernel: None,
        }];
        Ok(self.decode_lanes(&mut lanes, token, pos)?.remove(0))
    }

    /// One decode step of the same `token` at position `pos` in several caches at once (the
    /// projections run as one matrix product over the lanes, so the weights are read once);
    /// each lane's attention is its own cache's, hand-written or through its generated kernels.
    /// Returns each lane's logits.
    pub fn decode_lanes<Q: SpanQuantizer + Send>(
        &self,
        lanes: &mut [Lane<'_, Q>],
        token: u32,
        pos: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = self.config;
        let n = lanes.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (kv_width, q_width) = (c.kv_heads * c.head_dim, c.q_heads * c.head_dim);
        let mut x = self
            .embed_tokens(&[token])?
            .broadcast_as((n, c.hidden))
            .and_then(|x| x.contiguous())
            .map_err(t_err)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &layer.attn_norm)?;
            let proj = |w: &Tensor| h.matmul(w);
            let rows = |x: Tensor| -> Result<Vec<f32>, ModelError> {
                x.flatten_all()
                    .and_then(|x| x.to_vec1::<f32>())
                    .map_err(t_err)
            };
            let q = rows(self.rope(&proj(&layer.q).map_err(t_err)?, |_| pos)?)?;
            let k = rows(self.rope(&proj(&layer.k).map_err(t_err)?, |_| pos)?)?;
            let v = rows(proj(&layer.v).map_err(t_err)?)?;
            // Each lane appends to and attends over its own cache, lanes in parallel.
            let per_lane = lanes
                .par_iter_mut()
                .enumerate()
                .map(|(i, lane)| -> Result<Vec<f32>, ModelError> {
                    let as3 = |x: &[f32]| {
                        Tensor3::new([c.kv_heads, 1, c.head_dim], x.to_vec())
                            .map_err(|e| ModelError::Tensor(e.to_string()))
                    };
                    let row = i * kv_width..(i + 1) * kv_width;
                    lane.cache
                        .append(l, lane.seq, &as3(&k[row.clone()])?, &as3(&v[row])?)?;
                    let q = &q[i * q_width..(i + 1) * q_width];
                    let query = [QueryRef { seq: lane.seq, q }];
                    let out = match lane.kernel {
                        Some(kernel) => lane.cache.attend_with(l, &query, kernel)?,
                        None => lane.cache.attend(l, &query)?,
                    };
                    Ok(out.concat())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = per_lane.concat();
            let attn = Tensor::from_vec(out, (n, q_width), &Device::Cpu).map_err(t_err)?;
            let o = attn.matmul(&layer.o).map_err(t_err)?;
            x = (x + o).map_err(t_err)?;
            x = (&x + self.mlp(layer, &x)?).map_err(t_err)?;
        }
        let logits = self.logits(&x)?;
        Ok(logits.chunks(c.vocab).map(<[f32]>::to_vec).collect())
    }
}

/// One cache and sequence that a [`Model::decode_lanes`] step runs in.
pub struct Lane<'a, Q: SpanQuantizer> {
    /// The cache.
    pub cache: &'a mut VisualKvCache<Host<Q>>,
    /// The sequence within it.
    pub seq: SeqId,
    /// The generated attention kernels of the cache's scheme, or `None` for the cache's own
    /// (hand-written) attention.
    pub kernel: Option<&'a HostAttention>,
}

fn transposed(w: Tensor) -> Result<Tensor, ModelError> {
    w.t().and_then(|w| w.contiguous()).map_err(t_err)
}

fn to_tensor3(x: &Tensor) -> Result<Tensor3, ModelError> {
    let dims: [usize; 3] = x.dims3().map(|(a, b, c)| [a, b, c]).map_err(t_err)?;
    let data = x
        .to_dtype(DType::F32)
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.to_vec1::<f32>())
        .map_err(t_err)?;
    Tensor3::new(dims, data).map_err(|e| ModelError::Tensor(e.to_string()))
}

impl<Q: SpanQuantizer> std::fmt::Debug for Lane<'_, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("seq", &self.seq).finish()
    }
}
