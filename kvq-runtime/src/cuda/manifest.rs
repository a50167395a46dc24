//! `manifest.json` and the PTX files beside it, as `kvq compile --target sm_XX -o DIR` writes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kvq_ir::ir::Len;
use serde::{Deserialize, Serialize};

use crate::cuda::error::CudaError;
use crate::cuda::signature::{KernelSignature, ParamSpec};

/// The whole manifest: `kvq compile` writes it, the CUDA backend reads it (one type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of the kvq that wrote it.
    pub kvq: String,
    /// `sm_80`, `sm_90` or `host`.
    pub target: String,
    /// `ptx`, `ir` or `llvm`.
    pub emit: String,
    /// Channels per head the kernels are specialised for.
    pub head_dim: u32,
    /// Element type of the K/V the quantize kernels read (`f16`, `bf16`, `f32`).
    pub input: String,
    /// Query heads per kv head the attention kernels are specialised for (absent without
    /// attention kernels, and in older manifests).
    #[serde(default)]
    pub group: Option<u32>,
    /// One entry per kernel.
    pub kernels: Vec<KernelEntry>,
}

/// Which kernel of a scheme pair an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Quantizes K.
    KeyQuantize,
    /// Dequantizes K.
    KeyDequantize,
    /// Quantizes V.
    ValueQuantize,
    /// Dequantizes V.
    ValueDequantize,
    /// Decode attention: the span-logit extremes (schemes that calibrate).
    AttentionStats,
    /// Decode attention: per-chunk softmax partials.
    AttentionPartial,
    /// Decode attention: the merge into outputs.
    AttentionCombine,
}

impl Role {
    /// Whether the kernel quantizes (ABI: x, codes, zero, scale, status, heads, tokens).
    pub fn is_quantize(self) -> bool {
        matches!(self, Role::KeyQuantize | Role::ValueQuantize)
    }

    /// The manifest's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::KeyQuantize => "key_quantize",
            Role::KeyDequantize => "key_dequantize",
            Role::ValueQuantize => "value_quantize",
            Role::ValueDequantize => "value_dequantize",
            Role::AttentionStats => "attention_stats",
            Role::AttentionPartial => "attention_partial",
            Role::AttentionCombine => "attention_combine",
        }
    }
}

/// One kernel of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEntry {
    /// Which kernel of the pair.
    pub role: Role,
    /// The scheme's text form (of the pair, for the attention kernels).
    pub scheme: String,
    /// The schedule it was lowered with, as its fields (for people; the launch needs none).
    #[serde(default)]
    pub schedule: serde_json::Value,
    /// The PTX entry.
    pub entry: Entry,
}

/// `entry` of a manifest kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// PTX entry name.
    pub name: String,
    /// File in the bundle directory.
    pub file: String,
    /// Threads per block.
    pub block_size: u32,
    /// Shared memory per block (the arrays' sizes summed).
    #[serde(default)]
    pub shared_bytes: u32,
    /// Dynamic shared memory a launch passes (0 when the arrays are static, at most 48 KiB).
    #[serde(default)]
    pub dynamic_shared_bytes: u32,
    /// Parameters in ABI order.
    pub params: Vec<ParamSpec>,
    /// The most blocks a launch may have, over the scalar parameters; a launch uses exactly
    /// this many (absent in manifests older than the stated sizes).
    #[serde(default)]
    pub max_grid: Option<Len>,
    /// ptxas's resource report, when ptxas ran.
    #[serde(default)]
    pub ptxas: Option<PtxasResources>,
}

/// What ptxas reported for an entry (`ptxas -v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtxasResources {
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
    /// Bytes of stack frame.
    pub stack_frame: u32,
    /// Bytes of static shared memory.
    pub shared: u32,
}

impl KernelEntry {
    /// The kernel's signature.
    pub fn signature(&self) -> KernelSignature {
        KernelSignature {
            name: self.entry.name.clone(),
            params: self.entry.params.clone(),
            max_grid: self.entry.max_grid.clone(),
        }
    }
}

/// A loaded bundle: the manifest and the PTX text of every kernel.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
    ptx: HashMap<String, String>,
}

impl Bundle {
    /// Reads `dir/manifest.json` and every PTX file it names.
    pub fn load(dir: &Path) -> Result<Bundle, CudaError> {
        let path = dir.join("manifest.json");
        let text = read(&path)?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| CudaError::Manifest {
                path: path.clone(),
                source,
            })?;
        if manifest.emit != "ptx" || !manifest.target.starts_with("sm_") {
            return Err(CudaError::NotPtx {
                path,
                emit: manifest.emit,
                target: manifest.target,
            });
        }
        let mut ptx = HashMap::new();
        for kernel in &manifest.kernels {
            let text = read(&dir.join(&kernel.entry.file))?;
            if ptx.insert(kernel.entry.name.clone(), text).is_some() {
                return Err(CudaError::DuplicateKernel {
                    path,
                    kernel: kernel.entry.name.clone(),
                });
            }
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            ptx,
        })
    }

    /// A bundle built in memory: `ptx` maps each manifest entry's name to its PTX text.
    pub fn from_parts(
        manifest: Manifest,
        mut ptx: HashMap<String, String>,
    ) -> Result<Bundle, CudaError> {
        let dir = PathBuf::from("<in memory>");
        let mut texts = HashMap::new();
        for kernel in &manifest.kernels {
            let name = &kernel.entry.name;
            let text = ptx.remove(name).ok_or_else(|| CudaError::UnknownKernel {
                kernel: name.clone(),
                dir: dir.clone(),
            })?;
            if texts.insert(name.clone(), text).is_some() {
                return Err(CudaError::DuplicateKernel {
                    path: dir,
                    kernel: name.clone(),
                });
            }
        }
        Ok(Bundle {
            dir,
            manifest,
            ptx: texts,
        })
    }

    /// The kernel named `name`, with its PTX text.
    pub fn kernel(&self, name: &str) -> Result<(&KernelEntry, &str), CudaError> {
        let entry = self
            .manifest
            .kernels
            .iter()
            .find(|k| k.entry.name == name)
            .ok_or_else(|| CudaError::UnknownKernel {
                kernel: name.to_string(),
                dir: self.dir.clone(),
            })?;
        Ok((entry, &self.ptx[name]))
    }
}

fn read(path: &Path) -> Result<String, CudaError> {
    std::fs::read_to_string(path).map_err(|source| CudaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::signature::{Access, Elem};

    /// A manifest in exactly the shape `src/cli/compile.rs` writes (trimmed to two kernels).
    const MANIFEST: &str = r#"{
  "kvq": "0.1.0",
  "target": "sm_90",
  "emit": "ptx",
  "head_dim": 64,
  "input": "f16",
  "kernels": [
    {
      "role": "key_quantize",
      "scheme": "bits = 2, axis = channel, group = 32, rule = minmax",
      "schedule": {"block_size": 128, "channels": 1, "vector": 1},
      "entry": {
        "name": "kvq_quantize_k",
        "file": "kvq_quantize_k.ptx",
        "block_size": 128,
        "shared_bytes": 0,
        "params": [
          {"name": "x", "kind": "buffer", "elem": "f16", "access": "read", "len": {"product": [{"product": [{"scalar": 5}, {"scalar": 6}]}, {"const": 64}]}},
          {"name": "codes", "kind": "buffer", "elem": "u8", "access": "write", "len": {"product": [{"product": [{"scalar": 5}, {"scalar": 6}]}, {"const": 16}]}},
          {"name": "zero", "kind": "buffer", "elem": "f16", "access": "write", "len": {"product": [{"scalar": 5}, {"ceil_div": [{"scalar": 6}, 32]}, {"const": 64}]}},
          {"name": "scale", "kind": "buffer", "elem": "f16", "access": "write", "len": {"product": [{"scalar": 5}, {"ceil_div": [{"scalar": 6}, 32]}, {"const": 64}]}},
          {"name": "status", "kind": "buffer", "elem": "u32", "access": "read_write", "len": {"const": 1}},
          {"name": "heads", "kind": "scalar", "type": "u32"},
          {"name": "tokens", "kind": "scalar", "type": "u32"}
        ],
        "max_grid": {"ceil_div": [{"product": [{"scalar": 5}, {"const": 64}, {"ceil_div": [{"scalar": 6}, 32]}]}, 128]},
        "ptxas": null
      }
    },
    {
      "role": "value_dequantize",
      "scheme": "bits = 2, axis = token, group = 32, rule = minmax",
      "schedule": {"block_size": 256, "channels": 1, "vector": 4},
      "entry": {
        "name": "kvq_dequantize_v",
        "file": "kvq_dequantize_v.ptx",
        "block_size": 256,
        "shared_bytes": 0,
        "params": [
          {"name": "codes", "kind": "buffer", "elem": "u8", "access": "read"},
          {"name": "zero", "kind": "buffer", "elem": "f16", "access": "read"},
          {"name": "scale", "kind": "buffer", "elem": "f16", "access": "read"},
          {"name": "out", "kind": "buffer", "elem": "f32", "access": "write"},
          {"name": "heads", "kind": "scalar", "type": "u32"},
          {"name": "tokens", "kind": "scalar", "type": "u32"}
        ],
        "ptxas": {"registers": 20, "spill_stores": 0, "spill_loads": 0, "stack_frame": 0, "shared": 0}
      }
    }
  ]
}
"#;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "kvq-cuda-test-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_bundle(tag: &str, manifest: &str) -> TempDir {
        let dir = TempDir::new(tag);
        std::fs::write(dir.0.join("manifest.json"), manifest).unwrap();
        for name in ["kvq_quantize_k", "kvq_dequantize_v"] {
            std::fs::write(
                dir.0.join(format!("{name}.ptx")),
                format!(".version 8.0\n.target sm_90\n// {name}\n"),
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn parses_compile_manifest() {
        let dir = write_bundle("parse", MANIFEST);
        let bundle = Bundle::load(&dir.0).unwrap();
        assert_eq!(bundle.manifest.head_dim, 64);
        assert_eq!(bundle.manifest.input, "f16");
        assert_eq!(bundle.manifest.kernels.len(), 2);
        let (entry, ptx) = bundle.kernel("kvq_quantize_k").unwrap();
        assert!(ptx.contains("kvq_quantize_k"));
        assert_eq!(entry.role, Role::KeyQuantize);
        assert!(entry.role.is_quantize());
        assert_eq!(entry.entry.block_size, 128);
        // The grid bound, evaluated for 8 heads x 100 tokens: 8 x 64 x ceil(100 / 32) threads
        // in blocks of 128.
        let grid = entry.entry.max_grid.as_ref().unwrap();
        let sizes = |i: u32| [8, 100].get(i.wrapping_sub(5) as usize).copied();
        assert_eq!(grid.eval(&sizes, None), Ok(16));
        let sig = entry.signature();
        assert_eq!(sig.params.len(), 7);
        assert_eq!(
            sig.params[4],
            ParamSpec::Buffer {
                name: "status".into(),
                elem: Elem::U32,
                access: Access::ReadWrite,
                len: Some(kvq_ir::ir::Len::Const(1)),
            }
        );
        assert_eq!(
            sig.params[6],
            ParamSpec::Scalar {
                name: "tokens".into(),
                ty: Elem::U32
            }
        );
        let (entry, _) = bundle.kernel("kvq_dequantize_v").unwrap();
        assert!(!entry.role.is_quantize());
        // Written before the stated sizes: parsed, with nothing stated (no launch accepts it).
        assert_eq!(entry.entry.max_grid, None);
    }

    #[test]
    fn unknown_kernel() {
        let dir = write_bundle("unknown", MANIFEST);
        let bundle = Bundle::load(&dir.0).unwrap();
        let err = bundle.kernel("nope").unwrap_err();
        assert!(matches!(err, CudaError::UnknownKernel { ref kernel, .. } if kernel == "nope"));
    }

    #[test]
    fn missing_manifest() {
        let dir = TempDir::new("missing");
        let err = Bundle::load(&dir.0).unwrap_err();
        assert!(matches!(err, CudaError::Io { ref path, .. } if path.ends_with("manifest.json")));
    }

    #[test]
    fn corrupt_manifest() {
        for (i, bad) in [
            "{ not json",
            r#"{"kvq": "0.1.0"}"#,
            &MANIFEST.replace("\"access\": \"read\"", "\"access\": \"sometimes\""),
            &MANIFEST.replace("ceil_div", "floor_div"),
            &MANIFEST.replace("\"elem\": \"u8\"", "\"elem\": \"u7\""),
        ]
        .iter()
        .enumerate()
        {
            let dir = write_bundle(&format!("corrupt{i}"), bad);
            let err = Bundle::load(&dir.0).unwrap_err();
            assert!(
                matches!(err, CudaError::Manifest { .. }),
                "case {i}: {err:?}"
            );
            assert!(err.to_string().starts_with("corrupt manifest "));
        }
    }

    #[test]
    fn missing_ptx_file() {
        let dir = write_bundle("noptx", MANIFEST);
        std::fs::remove_file(dir.0.join("kvq_dequantize_v.ptx")).unwrap();
        let err = Bundle::load(&dir.0).unwrap_err();
        assert!(
            matches!(err, CudaError::Io { ref path, .. } if path.ends_with("kvq_dequantize_v.ptx"))
        );
    }

    #[test]
    fn rejects_non_ptx_bundle() {
        let dir = write_bundle(
            "llvm",
            &MANIFEST
                .replace("\"emit\": \"ptx\"", "\"emit\": \"llvm\"")
                .replace("sm_90", "host"),
        );
        assert!(matches!(
            Bundle::load(&dir.0).unwrap_err(),
            CudaError::NotPtx { .. }
        ));
    }

    #[test]
    fn roles_parse() {
        let role: Role = serde_json::from_str(r#""attention_partial""#).unwrap();
        assert_eq!(
            (role.name(), role.is_quantize()),
            ("attention_partial", false)
        );
    }
}
