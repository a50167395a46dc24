//! The compile cache's index of host attention kernels: a second process (here: a second
//! build through the same cache) loads the kernels without lowering them, and they are the same
//! kernels; a damaged index or a missing library is rebuilt, never trusted.

use std::path::PathBuf;

use kvq::attention::{HostAttention, SeqData};
use kvq::lower::attention::{AttentionLayout, AttentionSchedule, AttentionShape};
use kvq::lower::InputType;
use kvq::metrics::max_head_deviation as deviation;
use kvq::reference::{decode_attention, quantize, Segment};
use kvq::{CacheScheme, Tensor3};
use kvq_codegen::cache::CompileCache;
use kvq_codegen::host::KernelRecord;

const SHAPE: AttentionShape = AttentionShape {
    fp: InputType::F32,
    head_dim: 64,
    group: 2,
};
const KV: usize = 2;

const CALIBQUANT: &str = "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
    value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0";
const KIVI: &str = "key(bits = 2, axis = channel, group = 32, rule = minmax), \
    value(bits = 2, axis = token, group = 32, rule = minmax)";

fn temp_cache(name: &str) -> (PathBuf, CompileCache) {
    let dir = std::env::temp_dir().join(format!("kvq-index-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (dir.clone(), CompileCache::new(dir))
}

fn tensor(seed: u64, tokens: usize) -> Tensor3 {
    let mut x = seed;
    let data = (0..KV * tokens * SHAPE.head_dim as usize)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor3::new([KV, tokens, SHAPE.head_dim as usize], data).unwrap()
}

/// One sequence through `attn`, checked against the reference (1e-4 per query head); the
/// output is returned.
fn attend(attn: &HostAttention, scheme: &CacheScheme) -> Vec<f32> {
    let (k, v) = (tensor(1, 300), tensor(2, 300));
    let (pk, pv) = (
        quantize(&k, &scheme.key).unwrap(),
        quantize(&v, &scheme.value).unwrap(),
    );
    let q_heads = KV * SHAPE.group as usize;
    let q: Vec<f32> = tensor(3, q_heads / KV).data().to_vec();
    let seq = SeqData {
        q: &q,
        fp: None,
        span: Some((&pk, &pv)),
    };
    let out = attn.attend(KV, &[seq]).unwrap().remove(0);
    let segments = [Segment::Quantized { k: &pk, v: &pv }];
    let want = decode_attention(&q, q_heads, &segments, scheme.calibrate).unwrap();
    let dev = deviation(&out, &want, SHAPE.head_dim as usize);
    assert!(dev <= 1e-4, "{scheme}: deviation {dev:e}");
    out
}

fn records(attn: &HostAttention) -> Vec<KernelRecord> {
    attn.compiled().all().map(|k| k.record().unwrap()).collect()
}

fn small() -> AttentionSchedule {
    AttentionSchedule {
        block_size: 1,
        chunk: 128,
        tile: 32,
        tables: true,
        layout: AttentionLayout::ThreadPerItem,
    }
}

#[test]
fn a_second_build_loads_the_indexed_kernels_and_they_are_the_same() {
    let (dir, cache) = temp_cache("same");
    for (text, schedule) in [(CALIBQUANT, None), (KIVI, Some(small()))] {
        let scheme = CacheScheme::parse(text).unwrap();
        let built = HostAttention::with_cache(&scheme, SHAPE, schedule, Some(&cache)).unwrap();
        assert!(!built.indexed(), "an empty cache has no index entry");
        let loaded = HostAttention::with_cache(&scheme, SHAPE, schedule, Some(&cache)).unwrap();
        assert!(
            loaded.indexed(),
            "{scheme}: the second build was not indexed"
        );
        assert_eq!(loaded.schedule(), built.schedule());
        if let Some(s) = schedule {
            assert_eq!(loaded.schedule(), s);
        }
        // Calibrating schemes have three kernels, the others two.
        let kernels = if scheme.calibrate.is_some() { 3 } else { 2 };
        let built_records = records(&built);
        assert_eq!(built_records.len(), kernels);
        // Built at once into one library, which the entry names for each kernel.
        assert!(built_records
            .iter()
            .all(|r| r.library == built_records[0].library));
        assert_eq!(records(&loaded), built_records);
        // The same code: the same outputs bit for bit, both within 1e-4 of the reference.
        assert_eq!(attend(&loaded, &scheme), attend(&built, &scheme));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_request_has_its_own_entry() {
    let (dir, cache) = temp_cache("requests");
    let scheme = CacheScheme::parse(CALIBQUANT).unwrap();
    let tuned = HostAttention::with_cache(&scheme, SHAPE, None, Some(&cache)).unwrap();
    let other = AttentionSchedule {
        chunk: 256,
        ..small()
    };
    for schedule in [small(), other] {
        let first = HostAttention::with_cache(&scheme, SHAPE, Some(schedule), Some(&cache));
        let first = first.unwrap();
        assert!(
            !first.indexed(),
            "{schedule:?} took another request's entry"
        );
        assert_eq!(first.schedule(), schedule);
        attend(&first, &scheme);
    }
    let narrow = AttentionShape {
        fp: InputType::F16,
        ..SHAPE
    };
    let f16 = HostAttention::with_cache(&scheme, narrow, None, Some(&cache)).unwrap();
    assert!(!f16.indexed(), "another shape took the f32 rows' entry");
    let again = HostAttention::with_cache(&scheme, SHAPE, None, Some(&cache)).unwrap();
    assert!(again.indexed());
    assert_eq!(again.schedule(), tuned.schedule());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The files of `dir` whose names end with `suffix`.
fn files(dir: &PathBuf, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

#[test]
fn a_damaged_index_or_a_missing_library_is_rebuilt() {
    let (dir, cache) = temp_cache("damaged");
    let scheme = CacheScheme::parse(KIVI).unwrap();
    let build = || HostAttention::with_cache(&scheme, SHAPE, Some(small()), Some(&cache)).unwrap();
    let want = attend(&build(), &scheme);
    let index = files(&dir, ".attention.json");
    assert_eq!(index.len(), 1, "{index:?}");
    // Damaged: the checksum fails, the kernels are lowered and looked up again, and the entry
    // is stored again.
    std::fs::write(&index[0], b"{\"schedule\": 1}").unwrap();
    let rebuilt = build();
    assert!(!rebuilt.indexed());
    assert_eq!(attend(&rebuilt, &scheme), want);
    assert!(build().indexed(), "the entry was not stored again");
    // A library the entry names is gone: built again (and indexed again).
    for library in files(&dir, ".so") {
        std::fs::remove_file(library).unwrap();
    }
    let rebuilt = build();
    assert!(!rebuilt.indexed());
    assert_eq!(attend(&rebuilt, &scheme), want);
    assert!(build().indexed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tuning table that cannot be parsed is warned about by every process, the ones that find
/// their kernels indexed included (those do not parse the table otherwise).
#[test]
fn a_corrupt_tuning_table_is_warned_about_by_every_process() {
    let (dir, _) = temp_cache("corrupt-table");
    let table = dir.with_extension("json");
    std::fs::write(&table, "{").unwrap();
    let indexes = || {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".attention.json"))
                    .count()
            })
            .unwrap_or(0)
    };
    for run in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvq"))
            .args(["bench", "compile", "--probe"])
            .env("KVQ_CACHE_DIR", &dir)
            .env("KVQ_ATTENTION_TUNING", &table)
            .env_remove("KVQ_CACHE")
            .env_remove("KVQ_DUMP")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {stderr}");
        assert!(
            stderr.contains("corrupt") && stderr.contains(&*table.to_string_lossy()),
            "run {run}: {stderr}"
        );
        assert_eq!(
            indexes(),
            1,
            "run {run}: one index entry, found by the second run"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&table);
}
