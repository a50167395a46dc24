//! `manifest.json` and the PTX files beside it, as `kvq compile --target sm_XX -o DIR` writes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cuda::error::CudaError;
use crate::cuda::signature::{KernelSignature, ParamSpec};

/// The whole manifest. Fields the CUDA backend does not use (`schedule`, `ptxas`, the launch rule's
/// `blocks` text) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// One entry per kernel.
    pub kernels: Vec<KernelEntry>,
}

/// Which kernel of a scheme pair an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
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

/// How many blocks a kernel is launched with (`kvq_ir::lower::Launch`, reimplemented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LaunchRule {
    /// `heads * columns` blocks.
    BlockPerColumn {
        /// Columns per head.
        columns: u32,
    },
    /// `ceil(heads * columns * ceil(tokens / group) / block_size)` blocks.
    ThreadPerGroup {
        /// Columns per head.
        columns: u32,
        /// Tokens per group.
        group: u32,
    },
    /// `ceil(heads * tokens / block_size)` blocks.
    ThreadPerRow,
    /// `heads * columns * cluster` blocks, in clusters of `cluster` (the PTX declares them).
    ClusterPerColumn {
        /// Columns per head.
        columns: u32,
        /// Blocks per cluster.
        cluster: u32,
    },
    /// `ceil(chunks * kv_heads / block_size)` blocks: a thread per attention work item.
    AttentionItems,
    /// `chunks * kv_heads` blocks: a block per attention work item.
    AttentionBlocks,
    /// `ceil(batch * kv_heads * group / block_size)` blocks: a thread per (sequence, query head).
    AttentionHeads {
        /// Query heads per kv head.
        group: u32,
    },
    /// `batch * kv_heads * group` blocks: a block per (sequence, query head).
    AttentionHeadBlocks {
        /// Query heads per kv head.
        group: u32,
    },
}

impl LaunchRule {
    /// The names of the two u32 scalar parameters the grid depends on, in [`Self::grid`]'s order.
    pub fn sizes(&self) -> [&'static str; 2] {
        match self {
            LaunchRule::AttentionItems | LaunchRule::AttentionBlocks => ["chunks", "kv_heads"],
            LaunchRule::AttentionHeads { .. } | LaunchRule::AttentionHeadBlocks { .. } => {
                ["batch", "kv_heads"]
            }
            _ => ["heads", "tokens"],
        }
    }

    /// Number of blocks for the two sizes of [`Self::sizes`] (heads x tokens for the quantize
    /// kernels) with `block_size` threads per block.
    pub fn grid(&self, heads: u32, tokens: u32, block_size: u32) -> u64 {
        let (h, t, b) = (heads as u64, tokens as u64, block_size.max(1) as u64);
        match *self {
            LaunchRule::AttentionItems => (h * t).div_ceil(b),
            LaunchRule::AttentionBlocks => h * t,
            LaunchRule::AttentionHeads { group } => (h * t * group as u64).div_ceil(b),
            LaunchRule::AttentionHeadBlocks { group } => h * t * group as u64,
            LaunchRule::BlockPerColumn { columns } => h * columns as u64,
            LaunchRule::ThreadPerGroup { columns, group } => {
                (h * columns as u64 * t.div_ceil(group.max(1) as u64)).div_ceil(b)
            }
            LaunchRule::ThreadPerRow => (h * t).div_ceil(b),
            LaunchRule::ClusterPerColumn { columns, cluster } => {
                h * columns as u64 * cluster as u64
            }
        }
    }
}

/// One kernel of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KernelEntry {
    /// Which kernel of the pair.
    pub role: Role,
    /// The scheme's text form.
    pub scheme: String,
    /// Its launch rule.
    pub launch: LaunchRule,
    /// The PTX entry.
    pub entry: Entry,
}

/// `entry` of a manifest kernel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
}

impl KernelEntry {
    /// The kernel's signature.
    pub fn signature(&self) -> KernelSignature {
        KernelSignature {
            name: self.entry.name.clone(),
            params: self.entry.params.clone(),
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
      "launch": {"kind": "thread_per_group", "blocks": "ceil(heads * columns * ceil(tokens / group) / block_size)", "columns": 64, "group": 32},
      "entry": {
        "name": "kvq_quantize_k",
        "file": "kvq_quantize_k.ptx",
        "block_size": 128,
        "shared_bytes": 0,
        "params": [
          {"name": "x", "kind": "buffer", "elem": "f16", "access": "read"},
          {"name": "codes", "kind": "buffer", "elem": "u8", "access": "write"},
          {"name": "zero", "kind": "buffer", "elem": "f16", "access": "write"},
          {"name": "scale", "kind": "buffer", "elem": "f16", "access": "write"},
          {"name": "status", "kind": "buffer", "elem": "u32", "access": "read_write"},
          {"name": "heads", "kind": "scalar", "type": "u32"},
          {"name": "tokens", "kind": "scalar", "type": "u32"}
        ],
        "ptxas": null
      }
    },
    {
      "role": "value_dequantize",
      "scheme": "bits = 2, axis = token, group = 32, rule = minmax",
      "schedule": {"block_size": 256, "channels": 1, "vector": 4},
      "launch": {"kind": "thread_per_row", "blocks": "ceil(heads * tokens / block_size)"},
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
        assert_eq!(
            entry.launch,
            LaunchRule::ThreadPerGroup {
                columns: 64,
                group: 32
            }
        );
        assert_eq!(entry.entry.block_size, 128);
        let sig = entry.signature();
        assert_eq!(sig.params.len(), 7);
        assert_eq!(
            sig.params[4],
            ParamSpec::Buffer {
                name: "status".into(),
                elem: Elem::U32,
                access: Access::ReadWrite
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
        assert_eq!(entry.launch, LaunchRule::ThreadPerRow);
        assert!(!entry.role.is_quantize());
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
            &MANIFEST.replace("thread_per_row", "thread_per_warp"),
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

    /// `kvq compile`'s cluster rule: heads x columns x cluster blocks, whatever the tokens.
    #[test]
    fn cluster_rule_counts_whole_clusters() {
        let parsed: LaunchRule = serde_json::from_str(
            r#"{"kind": "cluster_per_column", "blocks": "heads * columns * cluster", "columns": 8, "cluster": 8}"#,
        )
        .unwrap();
        assert_eq!(
            parsed,
            LaunchRule::ClusterPerColumn {
                columns: 8,
                cluster: 8
            }
        );
        assert_eq!(parsed.sizes(), ["heads", "tokens"]);
        for tokens in [1, 16384, 65536] {
            assert_eq!(parsed.grid(8, tokens, 256), 512);
        }
    }

    #[test]
    fn attention_rules_read_their_own_sizes() {
        // The numbers of AttentionSchedule::item_blocks and combine_blocks: chunks * kv_heads
        // work items and batch * kv_heads * group (sequence, query head) pairs, a thread or a
        // block each.
        let items = LaunchRule::AttentionItems;
        assert_eq!(items.sizes(), ["chunks", "kv_heads"]);
        assert_eq!(items.grid(65, 8, 64), 9); // 520 items
        let blocks = LaunchRule::AttentionBlocks;
        assert_eq!(blocks.sizes(), ["chunks", "kv_heads"]);
        assert_eq!(blocks.grid(65, 8, 128), 520);
        let heads = LaunchRule::AttentionHeads { group: 4 };
        assert_eq!(heads.sizes(), ["batch", "kv_heads"]);
        assert_eq!(heads.grid(3, 8, 64), 2); // 96 (sequence, query head) pairs
        let head_blocks = LaunchRule::AttentionHeadBlocks { group: 4 };
        assert_eq!(head_blocks.sizes(), ["batch", "kv_heads"]);
        assert_eq!(head_blocks.grid(3, 8, 1024), 96);
        assert_eq!(LaunchRule::ThreadPerRow.sizes(), ["heads", "tokens"]);
        let parsed: LaunchRule =
            serde_json::from_str(r#"{"kind": "attention_heads", "group": 4, "blocks": "..."}"#)
                .unwrap();
        assert_eq!(parsed, heads);
        let role: Role = serde_json::from_str(r#""attention_partial""#).unwrap();
        assert_eq!(
            (role.name(), role.is_quantize()),
            ("attention_partial", false)
        );
    }

    #[test]
    fn grid_formulas() {
        // Same numbers as kvq_ir::lower::Launch::grid.
        let per_column = LaunchRule::BlockPerColumn { columns: 64 };
        assert_eq!(per_column.grid(6, 257, 128), 6 * 64);
        assert_eq!(per_column.grid(3, 1, 256), 3 * 64);
        let per_group = LaunchRule::ThreadPerGroup {
            columns: 64,
            group: 32,
        };
        // 6 heads * 64 columns * ceil(257 / 32) = 9 groups -> 3456 threads -> 27 blocks of 128.
        assert_eq!(per_group.grid(6, 257, 128), 27);
        // 3 * 64 * ceil(245 / 32) = 8 -> 1536 threads -> 6 blocks of 256.
        assert_eq!(per_group.grid(3, 245, 256), 6);
        assert_eq!(per_group.grid(1, 1, 1024), 1);
        let per_row = LaunchRule::ThreadPerRow;
        assert_eq!(
            per_row.grid(6, 257, 128),
            (6 * 257usize).div_ceil(128) as u64
        );
        assert_eq!(per_row.grid(3, 245, 256), 3);
        assert_eq!(per_row.grid(1, 256, 256), 1);
        assert_eq!(per_row.grid(1, 257, 256), 2);
        assert_eq!(per_row.grid(0, 257, 256), 0);
    }
}
