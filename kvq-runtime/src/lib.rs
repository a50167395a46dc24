//! `kvq-runtime`: what runs kvq's kernels and serves a cache.
//!
//! It reads K/V captures ([`kv_file`]) and serves the visual KV cache ([`cache`]): full-precision
//! prefix and suffix around a quantized visual span, with post-scaled decode attention; and, with
//! the default `cuda` feature, launches `kvq compile` PTX bundles on an NVIDIA GPU ([`cuda`]).
//! Nothing here links LLVM, so `kvq-gpu-check` runs on a bare GPU machine.

pub mod cache;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kv_file;

pub use cache::{
    AttentionKernel, CacheError, Device, DeviceError, Host, KvPart, LayerMemory, MemoryReport,
    ModelShape, ParamView, PartView, QueryRef, ReferenceQuantizer, SeqId, SeqView, SpanQuantizer,
    VisualKvCache,
};
pub use kv_file::{KvFile, KvFileError, LayerKv};
