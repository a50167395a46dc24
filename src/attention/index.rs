//! The compile cache's index of host attention kernels: one entry per request (scheme, shape,
//! requested schedule, else the tuning table's text and this machine's tuning target) and build
//! (the sources of kvq and kvq-ir, kvq-codegen's build for this CPU), holding the schedule
//! chosen and the kernels' records ([`KernelRecord`]). A process that finds its entry loads the kernels' libraries
//! without lowering, printing or hashing a kernel: the lowering is deterministic, and the key
//! covers everything it depends on.

use std::sync::Arc;

use kvq_codegen::cache::{CacheKey, CompileCache};
use kvq_codegen::host::{load_records, HostKernel, KernelRecord};
use kvq_ir::lower::attention::{AttentionKernels, AttentionSchedule, AttentionShape};
use kvq_ir::CacheScheme;
use serde::{Deserialize, Serialize};

use super::ATTENTION_PASSES;

/// The file extension of index entries in the compile cache.
const EXT: &str = "attention.json";

/// One index entry.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The schedule the kernels were lowered at.
    schedule: AttentionSchedule,
    /// Whether the tuning table held an entry for the request that was not taken (stale or
    /// invalid) or could not be parsed: the default schedule was taken, and a process that
    /// finds the entry repeats the table's warning.
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

/// The index key of a request: `requested` is the caller's schedule, `table` the attention
/// tuning table's text when there is none (with this machine's tuning target, which picks the
/// table's entry), so that a found entry needs no table lookup.
pub(super) fn key(
    scheme: &CacheScheme,
    shape: AttentionShape,
    requested: Option<AttentionSchedule>,
    table: Option<&str>,
) -> CacheKey {
    let tuning = match (requested, table) {
        (Some(s), _) => format!("requested {s:?}"),
        (None, Some(text)) => format!("table for {}\n{text}", crate::tune::host_target()),
        (None, None) => "no table".to_string(),
    };
    CacheKey::of(&[
        "kvq host attention index 2",
        env!("KVQ_SOURCES"),
        &kvq_codegen::host::build_id(ATTENTION_PASSES),
        &scheme.to_string(),
        &format!("{shape:?}"),
        &tuning,
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvq_ir::lower::attention::AttentionLayout;
    use kvq_ir::lower::InputType;

    /// An entry is found again only for the same tuning table and this machine's target; a
    /// requested schedule makes the table irrelevant.
    #[test]
    fn the_key_follows_the_tuning_table_unless_a_schedule_is_requested() {
        let scheme = CacheScheme::parse(
            "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
             value(bits = 1, axis = channel, group = all, rule = shrink(0.3))",
        )
        .unwrap();
        let shape = AttentionShape {
            fp: InputType::F32,
            head_dim: 64,
            group: 2,
        };
        let schedule = AttentionSchedule {
            block_size: 1,
            chunk: 128,
            tile: 32,
            tables: true,
            layout: AttentionLayout::ThreadPerItem,
        };
        let table = |text| key(&scheme, shape, None, text);
        assert_eq!(table(Some("a")), table(Some("a")));
        assert_ne!(table(Some("a")), table(Some("b")));
        assert_ne!(table(Some("a")), table(None));
        let requested = |text| key(&scheme, shape, Some(schedule), text);
        assert_eq!(requested(Some("a")), requested(Some("b")));
        assert_eq!(requested(Some("a")), requested(None));
        assert_ne!(requested(None), table(None));
        let wider = AttentionShape { group: 4, ..shape };
        assert_ne!(key(&scheme, wider, None, Some("a")), table(Some("a")));
    }
}
