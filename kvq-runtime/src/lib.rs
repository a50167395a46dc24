//! `kvq-runtime`: what runs kvq's kernels and serves a cache.
//!
//! Today it reads K/V captures ([`kv_file`]); the visual KV cache and kernel loading come with the
//! compiler.

pub mod kv_file;

pub use kv_file::{KvFile, KvFileError, LayerKv};
