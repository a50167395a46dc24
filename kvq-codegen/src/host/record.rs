//! Records of compiled kernels: what a [`HostKernel`] keeps of its lowered kernel (signature,
//! buffer alignment, stack, cluster size) and the compile cache entry of its code. A caller
//! that keys a whole lowering itself (kvq's decode attention: scheme, shape, schedule and the
//! sources of every crate that lowers it) stores the records and, in a later process, loads the
//! kernels from them without lowering, printing or hashing the kernels again.
//!
//! A record is trusted as far as the library it names: both come from the compile cache,
//! checksummed, under keys that cover everything that determines them.

use std::path::{Path, PathBuf};

use kvq_ir::ir::{Len, Param};
use serde::{Deserialize, Serialize};

use super::{link, HostKernel};
use crate::cache::{CacheKey, CompileCache, Lookup};

/// A compiled kernel as the compile cache keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRecord {
    /// The compile cache key of the kernel's shared library.
    pub library: String,
    /// The kernel's name (its entry is `kvq_<name>`).
    pub name: String,
    /// Its parameters, in ABI order.
    pub params: Vec<Param>,
    /// Its grid bound.
    pub max_grid: Option<Len>,
    /// The base alignment each buffer argument needs, in bytes, one per parameter.
    pub align: Vec<u32>,
    /// Stack bytes one launch thread needs.
    pub stack: usize,
    /// Blocks per cluster.
    pub cluster_size: u32,
}

impl HostKernel {
    /// The kernel's record, when its library is a compile cache entry (`None` for a kernel
    /// built without a cache, or whose cache could not be written).
    pub fn record(&self) -> Option<KernelRecord> {
        Some(KernelRecord {
            library: self.library.as_ref()?.as_str().to_string(),
            name: self.name.clone(),
            params: self.params.clone(),
            max_grid: self.max_grid.clone(),
            align: self.align.clone(),
            stack: self.stack,
            cluster_size: self.cluster_size,
        })
    }
}

/// Loads kernels from their records, each library from `cache` (checksummed) and opened:
/// `None` when a record is malformed or a library is missing, corrupt or does not load, so that
/// the caller builds the kernels instead.
pub fn load_records(records: &[KernelRecord], cache: &CompileCache) -> Option<Vec<HostKernel>> {
    // Kernels built together share one library: it is checked once.
    let mut checked: Vec<(CacheKey, PathBuf)> = Vec::new();
    records
        .iter()
        .map(|record| {
            let key = CacheKey::from_hex(&record.library)?;
            let path = match checked.iter().find(|(k, _)| *k == key) {
                Some((_, path)) => path.clone(),
                None => {
                    let Lookup::Hit(path) = cache.lookup(&key, "so") else {
                        return None;
                    };
                    checked.push((key.clone(), path.clone()));
                    path
                }
            };
            load_record(record, key, &path)
        })
        .collect()
}

/// The kernel of `record` from the checked library at `path` (the entry of `key`).
fn load_record(record: &KernelRecord, key: CacheKey, path: &Path) -> Option<HostKernel> {
    let well_formed = record.align.len() == record.params.len()
        && record.cluster_size >= 1
        && !record.name.is_empty()
        && record
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !well_formed {
        return None;
    }
    let symbol = crate::llvm::host_symbol(&record.name);
    let loaded = link::open_kept(&record.name, path, &symbol).ok()?;
    Some(HostKernel {
        name: record.name.clone(),
        params: record.params.clone(),
        max_grid: record.max_grid.clone(),
        align: record.align.clone(),
        stack: record.stack,
        cluster_size: record.cluster_size,
        library: Some(key),
        loaded,
    })
}
