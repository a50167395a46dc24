//! The compile cache's index of host attention kernels: one entry per request (scheme, shape,
//! requested schedule, the tuning table's entry for them) and build (the sources of kvq and
//! kvq-ir, kvq-codegen's build for this CPU), holding the schedule chosen and the kernels'
//! records ([`KernelRecord`]). A process that finds its entry loads the kernels' libraries
//! without lowering, printing or hashing a kernel: the lowering is deterministic, and the key
//! covers everything it depends on.

use std::sync::Arc;

use kvq_codegen::cache::{CacheKey, CompileCache};
use kvq_codegen::host::{load_records, HostKernel, KernelRecord};
use kvq_ir::lower::attention::{AttentionKernels, AttentionSchedule, AttentionShape};
use kvq_ir::CacheScheme;
use serde::{Deserialize, Serialize};

use super::ATTENTION_PASSES;
use crate::tune::attention::Tuned;

/// The file extension of index entries in the compile cache.
const EXT: &str = "attention.json";

/// One index entry.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The schedule the kernels were lowered at.
    schedule: AttentionSchedule,
    /// Whether the tuning table's entry was stale (the default schedule taken instead).
    stale_tuning: bool,
    /// The kernels, in launch order.
    kernels: Vec<KernelRecord>,
}

/// What an index entry gives back.
pub(super) struct Indexed {
    /// The schedule the kernels were lowered at.
    pub schedule: AttentionSchedule,
    /// Whether the tuning table's entry was stale when the entry was written.
    pub stale_tuning: bool,
    /// The kernels, loaded.
    pub kernels: AttentionKernels<Arc<HostKernel>>,
}

/// The index key of a request: `requested` is the caller's schedule, `tuned` the tuning table's
/// entry when there is none.
pub(super) fn key(
    scheme: &CacheScheme,
    shape: AttentionShape,
    requested: Option<AttentionSchedule>,
    tuned: Option<Tuned<'_>>,
) -> CacheKey {
    CacheKey::of(&[
        "kvq host attention index 1",
        env!("KVQ_SOURCES"),
        &kvq_codegen::host::build_id(ATTENTION_PASSES),
        &scheme.to_string(),
        &format!("{shape:?}"),
        &format!("{requested:?}"),
        &format!("{tuned:?}"),
    ])
}

/// The kernels `cache` indexes under `key`, loaded; `None` when there is no valid entry or a
/// library it names is missing or does not load (the caller builds them, and stores the entry
/// again).
pub(super) fn load(cache: &CompileCache, key: &CacheKey) -> Option<Indexed> {
    let entry: Entry = serde_json::from_slice(&cache.read(key, EXT)?).ok()?;
    let kernels = load_records(&entry.kernels, cache)?;
    Some(Indexed {
        schedule: entry.schedule,
        stale_tuning: entry.stale_tuning,
        kernels: AttentionKernels::from_launch_order(kernels.into_iter().map(Arc::new))?,
    })
}

/// Indexes `kernels` (lowered at `schedule`) under `key`, when every one of them is a compile
/// cache entry; a cache that cannot be written is skipped with a warning.
pub(super) fn store(
    cache: &CompileCache,
    key: &CacheKey,
    schedule: AttentionSchedule,
    stale_tuning: bool,
    kernels: &AttentionKernels<Arc<HostKernel>>,
) {
    let Some(records) = kernels.all().map(|k| k.record()).collect() else {
        return;
    };
    let entry = Entry {
        schedule,
        stale_tuning,
        kernels: records,
    };
    let stored = serde_json::to_vec(&entry)
        .map_err(std::io::Error::other)
        .and_then(|bytes| cache.store(key, EXT, &bytes));
    if let Err(e) = stored {
        eprintln!(
            "kvq: cannot index the attention kernels in {}: {e}",
            cache.dir().display()
        );
    }
}
