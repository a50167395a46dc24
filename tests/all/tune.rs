//! `kvq::tune`: the search space, the table file (round trip, stale and corrupt files fall back
//! to the default schedule), and that a tuned schedule never changes the bits a span quantizes
//! to.

use std::path::PathBuf;

use kvq::backend::run_host;
use kvq::tune::{
    self, candidate_checksum, candidates, schedule_for, ShapeBucket, TuningKey, TuningTable,
};
use kvq::{Scheme, Tensor3};
use kvq_ir::lower::io::quantize_with;
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_ir::reference::PackedSpan;
use kvq_ir::scheme::catalogue::catalogue;
use kvq_ir::scheme::{Axis, Group, Rule};

const SHAPE: ShapeClass = ShapeClass {
    head_dim: 128,
    input: InputType::F16,
};

fn kivi2_k() -> Scheme {
    Scheme::parse("bits = 2, axis = channel, group = 32, rule = minmax").unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvq-tune-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A candidate other than the default, so a table hit is observable.
fn other_candidate(scheme: &Scheme, shape: ShapeClass) -> Schedule {
    let default = Schedule::host_default(scheme, shape);
    *candidates(scheme, shape)
        .iter()
        .find(|&&s| s != default)
        .expect("more than one candidate")
}

#[test]
fn candidates_pass_check_and_include_the_default() {
    for (name, scheme) in catalogue() {
        for head_dim in [32, 64, 128] {
            let shape = ShapeClass {
                head_dim,
                input: InputType::F16,
            };
            let list = candidates(&scheme, shape);
            assert!(!list.is_empty(), "{name}");
            let select = Schedule::host_select(&scheme, shape);
            for s in &list {
                assert_eq!(s.check(&scheme, shape), Ok(()), "{name} {s:?}");
                // One thread per block, or one warp selecting the quantile rule's statistics.
                match s.cooperative {
                    false => assert_eq!(s.block_size, 1),
                    true => assert_eq!(select.map(|sel| sel.block_size), Some(s.block_size)),
                }
            }
            // The quantile rule with group = all selects together by default.
            let quantile_all = matches!(
                (scheme.axis, scheme.group, scheme.rule),
                (Axis::Channel, Group::All, Rule::Quantile(_))
            );
            assert_eq!(select.is_some(), quantile_all, "{name}");
            if let Some(sel) = select {
                assert_eq!(Schedule::host_default(&scheme, shape), sel);
                assert!(list.iter().filter(|s| s.cooperative).count() > 1, "{name}");
            }
            assert!(list.contains(&Schedule::host_default(&scheme, shape)));
            assert_eq!(list, candidates(&scheme, shape), "deterministic order");
        }
    }
    // 1-bit channel columns of 8..=128 that divide 128, each with the vectors dividing them.
    let calib = Scheme::parse("bits = 1, axis = channel, group = all, rule = minmax").unwrap();
    assert_eq!(candidates(&calib, SHAPE).len(), 2 + 3 + 3 + 3 + 3);
}

#[test]
fn checksum_is_stable_and_tracks_the_list() {
    let list = candidates(&kivi2_k(), SHAPE);
    let sum = candidate_checksum(&list);
    assert_eq!(sum, candidate_checksum(&candidates(&kivi2_k(), SHAPE)));
    assert_eq!(sum, candidate_checksum(&list.clone()));
    assert_ne!(sum, candidate_checksum(&list[1..]));
    let mut reversed = list.clone();
    reversed.reverse();
    assert_ne!(sum, candidate_checksum(&reversed));
    let mut changed = list.clone();
    changed[0].vector = 2;
    assert_ne!(sum, candidate_checksum(&changed));
}

#[test]
fn tokens_bucket_to_powers_of_two() {
    assert_eq!(ShapeBucket::new(8, 4096).tokens_bucket, 4096);
    assert_eq!(ShapeBucket::new(8, 4097).tokens_bucket, 8192);
    assert_eq!(ShapeBucket::new(8, 16000).tokens_bucket, 16384);
    assert_eq!(ShapeBucket::new(8, 65536).tokens_bucket, 65536);
    assert_eq!(ShapeBucket::new(3, 1).heads, 3);
    assert_eq!(
        TuningKey::quantize(&kivi2_k(), SHAPE, 8, 10000),
        TuningKey::quantize(&kivi2_k(), SHAPE, 8, 16384)
    );
    assert_ne!(
        TuningKey::quantize(&kivi2_k(), SHAPE, 8, 16384),
        TuningKey::quantize(&kivi2_k(), SHAPE, 4, 16384)
    );
}

#[test]
fn table_round_trips_and_hits() {
    let scheme = kivi2_k();
    let tuned = other_candidate(&scheme, SHAPE);
    let key = TuningKey::quantize(&scheme, SHAPE, 8, 16384);
    let mut table = TuningTable::new();
    table.insert(key.clone(), tuned, 1234.5);
    let path = temp("round_trip.json");
    table.save(&path).unwrap();
    let back = TuningTable::load(&path).unwrap();
    assert_eq!(back, table);
    assert_eq!(back.lookup(&key), Some(tuned));
    assert_eq!(back.median_ns(&key), Some(1234.5));
    // Any token count of the same bucket hits; another bucket or no table gets the default.
    assert_eq!(schedule_for(Some(&back), &scheme, SHAPE, 8, 9000), tuned);
    let default = Schedule::host_default(&scheme, SHAPE);
    assert_eq!(schedule_for(Some(&back), &scheme, SHAPE, 8, 70000), default);
    assert_eq!(schedule_for(None, &scheme, SHAPE, 8, 16384), default);
    // Saving leaves no temporary files beside the table.
    let dir = path.parent().unwrap();
    assert!(std::fs::read_dir(dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".tmp")));
}

#[test]
fn a_changed_lowering_makes_entries_stale() {
    let scheme = kivi2_k();
    let fresh = TuningKey::quantize(&scheme, SHAPE, 8, 16384);
    assert_eq!(fresh.lowering, tune::lowering_checksum(&scheme, SHAPE));
    let other = Scheme::parse("bits = 2, axis = channel, group = 16, rule = minmax").unwrap();
    assert_ne!(fresh.lowering, tune::lowering_checksum(&other, SHAPE));
    let mut old = fresh.clone();
    old.lowering = "fnv1a64:0000000000000000".to_string();
    let mut table = TuningTable::new();
    table.insert(old, other_candidate(&scheme, SHAPE), 1.0);
    assert_eq!(
        schedule_for(Some(&table), &scheme, SHAPE, 8, 16384),
        Schedule::host_default(&scheme, SHAPE)
    );
}

#[test]
fn stale_table_falls_back_to_the_default() {
    let scheme = kivi2_k();
    let mut key = TuningKey::quantize(&scheme, SHAPE, 8, 16384);
    key.candidates_checksum = candidate_checksum(&candidates(&scheme, SHAPE)[1..]);
    let mut table = TuningTable::new();
    table.insert(key.clone(), other_candidate(&scheme, SHAPE), 1.0);
    assert_eq!(
        schedule_for(Some(&table), &scheme, SHAPE, 8, 16384),
        Schedule::host_default(&scheme, SHAPE)
    );
    // A fresh result replaces the stale one.
    let fresh = TuningKey::quantize(&scheme, SHAPE, 8, 16384);
    table.insert(fresh.clone(), Schedule::host_default(&scheme, SHAPE), 1.0);
    assert_eq!(table.len(), 1);
    assert_eq!(table.lookup(&key), None);
}

#[test]
fn invalid_entry_falls_back_to_the_default() {
    let scheme = kivi2_k();
    let mut table = TuningTable::new();
    let bad = Schedule {
        block_size: 1,
        channels: 24,
        vector: 8,
        cooperative: false,
        cluster: 1,
        contiguous: false,
    };
    table.insert(TuningKey::quantize(&scheme, SHAPE, 8, 16384), bad, 1.0);
    assert_eq!(
        schedule_for(Some(&table), &scheme, SHAPE, 8, 16384),
        Schedule::host_default(&scheme, SHAPE)
    );
}

/// A block of 512 or 1024 threads over 32 channels needs more shared memory than a block has:
/// every launch of it would fail, so the table's entry is refused and the default used.
#[test]
fn an_entry_over_the_shared_memory_limit_falls_back_to_the_default() {
    let scheme =
        Scheme::parse("bits = 1, axis = channel, group = all, rule = shrink(0.5)").unwrap();
    for block_size in [512, 1024] {
        let mut table = TuningTable::new();
        let big = Schedule {
            block_size,
            channels: 32,
            vector: 16,
            cooperative: false,
            cluster: 1,
            contiguous: false,
        };
        assert!(big.check(&scheme, SHAPE).is_err());
        table.insert(TuningKey::quantize(&scheme, SHAPE, 8, 16384), big, 1.0);
        assert_eq!(
            schedule_for(Some(&table), &scheme, SHAPE, 8, 16384),
            Schedule::host_default(&scheme, SHAPE)
        );
    }
}

#[test]
fn corrupt_files_are_errors_not_panics() {
    for (name, text) in [
        ("garbage.json", "{ this is not json"),
        ("wrong_shape.json", r#"{"version": 1, "entries": 3}"#),
        ("future.json", r#"{"version": 99, "entries": []}"#),
        ("no_version.json", r#"{"entries": []}"#),
    ] {
        let path = temp(name);
        std::fs::write(&path, text).unwrap();
        let err = TuningTable::load(&path).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{name}: {err}");
    }
    assert!(TuningTable::load(&temp("missing.json")).is_err());
}

#[test]
fn corrupt_or_missing_tables_load_as_none() {
    let path = temp("runtime_garbage.json");
    std::fs::write(&path, "garbage").unwrap();
    assert!(tune::load_table_at(&path).is_none());
    assert!(tune::load_table_at(&temp("does_not_exist.json")).is_none());
    // Without a table the runtime gets the default schedule.
    let scheme = kivi2_k();
    let table = tune::load_table_at(&path);
    assert_eq!(
        schedule_for(table.as_ref(), &scheme, SHAPE, 8, 16384),
        Schedule::host_default(&scheme, SHAPE)
    );
    if std::env::var_os("KVQ_TUNING").is_none() {
        assert!(tune::default_table_path().ends_with("tuning/host.json"));
    }
}

fn quantize_host(scheme: &Scheme, schedule: &Schedule, x: &Tensor3) -> PackedSpan {
    let shape = ShapeClass {
        head_dim: x.shape().dim as u32,
        input: InputType::F16,
    };
    let lowered = lower::quantize(scheme, shape, schedule).unwrap();
    quantize_with(&lowered, scheme, x, InputType::F16, run_host).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn tuned_schedules_give_the_default_bits() {
    let dims = [2, 77, 64];
    let n = dims.iter().product::<usize>();
    let data = (0..n)
        .map(|i| ((i * 7919 % 1013) as f32 / 97.0).sin() + (i % 64) as f32 * 0.05)
        .collect();
    let x = Tensor3::new(dims, data).unwrap();
    let shape = ShapeClass {
        head_dim: 64,
        input: InputType::F16,
    };
    for (name, scheme) in catalogue() {
        let mut table = TuningTable::new();
        let tuned = *candidates(&scheme, shape).last().unwrap();
        table.insert(TuningKey::quantize(&scheme, shape, 2, 77), tuned, 1.0);
        let chosen = schedule_for(Some(&table), &scheme, shape, 2, 77);
        assert_eq!(chosen, tuned, "{name}");
        let want = quantize_host(&scheme, &Schedule::host_default(&scheme, shape), &x);
        let got = quantize_host(&scheme, &chosen, &x);
        assert_eq!(got.codes, want.codes, "{name} {chosen:?}");
        assert_eq!(bits(&got.zero), bits(&want.zero), "{name} {chosen:?}");
        assert_eq!(bits(&got.scale), bits(&want.scale), "{name} {chosen:?}");
    }
}

/// The group = N kernels and the token-axis group = all ones under every host candidate (column
/// and vector widths; their parameters, and for 1- and 2-bit f16 schemes the thresholds their
/// codes are compared with, come from a loop over a column's channels, a row's groups or a run
/// of 16 rows) against the reference: the same bits (154 rows, a short last run, a flat row),
/// a group whose f16 parameters overflow flagged as the reference rejects it, and a NaN
/// reported as the reference reports it.
#[test]
fn every_group_candidate_gives_the_reference_bits_and_flags_overflow() {
    let dims = [2, 77, 64];
    let n = dims.iter().product::<usize>();
    // f16 values (the kernels read f16), with signed zeros and a flat channel.
    let data: Vec<f32> = (0..n)
        .map(|i| match i % 64 {
            _ if i / 64 == 20 => -1.25,
            5 => 0.75,
            9 if i % 3 == 0 => -0.0,
            c => ((i * 7919 % 1013) as f32 / 97.0).sin() * (1.0 + c as f32 * 0.1),
        })
        .map(|v| half::f16::from_f32(v).to_f32())
        .collect();
    let x = Tensor3::new(dims, data.clone()).unwrap();
    // Head 1, channel 37, tokens 32..64: +-60000, a 1-bit scale of 120000, beyond f16; and
    // the same within token 40's row (channel 36).
    let mut wide = data;
    for t in 32..64 {
        wide[(77 + t) * 64 + 37] = if t % 2 == 0 { 60000.0 } else { -60000.0 };
    }
    wide[(77 + 40) * 64 + 36] = -60000.0;
    let wide = Tensor3::new(dims, wide).unwrap();
    let mut nan = x.data().to_vec();
    nan[(77 + 41) * 64 + 3] = f32::NAN;
    let nan = Tensor3::new(dims, nan).unwrap();
    let shape = ShapeClass {
        head_dim: 64,
        input: InputType::F16,
    };
    let schemes = [
        "bits = 2, axis = channel, group = 32, rule = minmax",
        "bits = 2, axis = channel, group = 32, rule = minmax, params = f32, order = lsb",
        "bits = 1, axis = channel, group = 32, rule = minmax",
        "bits = 1, axis = channel, group = 16, rule = shrink(0.5, center = mid)",
        "bits = 4, axis = channel, group = 8, rule = shrink(0.7)",
        "bits = 2, axis = token, group = 16, rule = minmax",
        "bits = 2, axis = token, group = 32, rule = minmax, params = f32, order = lsb",
        "bits = 1, axis = token, group = 8, rule = minmax",
        "bits = 1, axis = token, group = 16, rule = shrink(0.5, center = mid)",
        "bits = 8, axis = token, group = 32, rule = minmax",
        "bits = 1, axis = token, group = all, rule = minmax",
        "bits = 4, axis = token, group = all, rule = minmax",
        "bits = 2, axis = token, group = all, rule = minmax, params = f32, order = lsb",
        "bits = 8, axis = token, group = all, rule = shrink(0.5, center = mid)",
    ];
    for text in schemes {
        let scheme = Scheme::parse(text).unwrap();
        let list = candidates(&scheme, shape);
        assert!(list.len() >= 2, "{text}: {list:?}");
        for schedule in list {
            let lowered = lower::quantize(&scheme, shape, &schedule).unwrap();
            let got = quantize_with(&lowered, &scheme, &x, InputType::F16, run_host).unwrap();
            let want = kvq_ir::reference::quantize::quantize(&x, &scheme).unwrap();
            assert_eq!(got.codes, want.codes, "{text} {schedule:?}");
            assert_eq!(bits(&got.zero), bits(&want.zero), "{text} {schedule:?}");
            assert_eq!(bits(&got.scale), bits(&want.scale), "{text} {schedule:?}");
            let got = quantize_with(&lowered, &scheme, &wide, InputType::F16, run_host);
            match kvq_ir::reference::quantize::quantize(&wide, &scheme) {
                Ok(want) => assert_eq!(got.unwrap().codes, want.codes, "{text} {schedule:?}"),
                Err(want) => {
                    let Err(got) = got.map(|_| ()) else {
                        panic!("{text} {schedule:?}: the overflow was not flagged");
                    };
                    let got = got.to_string();
                    assert_eq!(got, want.to_string(), "{text} {schedule:?}");
                    assert!(got.contains("use params = f32"), "{got}");
                }
            }
            let got = quantize_with(&lowered, &scheme, &nan, InputType::F16, run_host);
            let want = kvq_ir::reference::quantize::quantize(&nan, &scheme).unwrap_err();
            let Err(got) = got.map(|_| ()) else {
                panic!("{text} {schedule:?}: the NaN was not reported");
            };
            assert_eq!(got.to_string(), want.to_string(), "{text} {schedule:?}");
        }
    }
}

#[test]
fn tune_picks_a_candidate_on_a_tiny_shape() {
    let scheme = kivi2_k();
    let shape = ShapeClass {
        head_dim: 32,
        input: InputType::F16,
    };
    let result = tune::tune(&scheme, shape, 1, 64, 1).unwrap();
    let list = candidates(&scheme, shape);
    assert!(list.contains(&result.best));
    assert_eq!(result.timings.iter().map(|t| t.0).collect::<Vec<_>>(), list);
    assert!(result.timings.iter().all(|t| t.1 > 0.0));
}

mod attention {
    //! The attention tuning table: candidates, round trip, stale / invalid / corrupt fallbacks,
    //! and the committed table's entry being what `HostAttention` uses.

    use kvq::attention::HostAttention;
    use kvq::lower::attention::{AttentionSchedule, AttentionShape};
    use kvq::tune::attention::{
        attention_candidates, default_attention_table, AttentionKey, AttentionTable,
    };
    use kvq::CacheScheme;

    use super::temp;

    const SHAPE: AttentionShape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 128,
        group: 4,
    };

    fn calibquant() -> CacheScheme {
        CacheScheme::parse(
            "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
             value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
        )
        .unwrap()
    }

    fn other(scheme: &CacheScheme) -> AttentionSchedule {
        let default = AttentionSchedule::host_default(scheme);
        *attention_candidates(scheme)
            .iter()
            .find(|&&s| s != default)
            .unwrap()
    }

    #[test]
    fn candidates_check_and_include_the_default() {
        let kivi = CacheScheme::parse(
            "key(bits = 2, axis = channel, group = 32, rule = minmax), \
             value(bits = 2, axis = token, group = 32, rule = minmax)",
        )
        .unwrap();
        for scheme in [calibquant(), kivi] {
            let c = attention_candidates(&scheme);
            assert!(c.len() > 4);
            assert!(c.contains(&AttentionSchedule::host_default(&scheme)));
            assert!(c.iter().all(|s| s.check(&scheme).is_ok()));
        }
    }

    #[test]
    fn table_round_trips_and_falls_back_when_stale_invalid_or_corrupt() {
        let scheme = calibquant();
        let default = AttentionSchedule::host_default(&scheme);
        let mut table = AttentionTable::default();
        table.insert(
            &scheme,
            AttentionKey::new(&scheme, SHAPE, &other(&scheme)),
            other(&scheme),
            5.0,
        );
        let path = temp("attention.json");
        table.save(&path).unwrap();
        let loaded = AttentionTable::load(&path).unwrap();
        assert_eq!(loaded, table);
        assert_eq!(loaded.schedule_for(&scheme, SHAPE), other(&scheme));
        // Kernels of f16 or bf16 full-precision rows take the entry tuned over f32 rows.
        for fp in [
            kvq_ir::lower::InputType::F16,
            kvq_ir::lower::InputType::BF16,
        ] {
            let narrow = AttentionShape { fp, ..SHAPE };
            assert_eq!(loaded.schedule_for(&scheme, narrow), other(&scheme));
        }
        // Another shape class has no entry.
        let g2 = AttentionShape { group: 2, ..SHAPE };
        assert_eq!(loaded.schedule_for(&scheme, g2), default);
        // Stale: the lowering changed since the entry was written.
        let mut stale = AttentionKey::new(&scheme, SHAPE, &other(&scheme));
        stale.lowering = "fnv1a64:0000000000000000".into();
        let mut t = AttentionTable::default();
        t.insert(&scheme, stale, other(&scheme), 5.0);
        assert_eq!(t.schedule_for(&scheme, SHAPE), default);
        // The checksum is of the entry's own schedule's kernel: one taken from another
        // schedule's kernel (here the default's) does not vouch for it.
        let mut t = AttentionTable::default();
        let key = AttentionKey::new(&scheme, SHAPE, &default);
        t.insert(&scheme, key, other(&scheme), 5.0);
        assert_eq!(t.schedule_for(&scheme, SHAPE), default);
        // Invalid: a tile that does not divide the chunk.
        let mut t = AttentionTable::default();
        let bad = AttentionSchedule {
            chunk: 100,
            ..default
        };
        t.insert(&scheme, AttentionKey::new(&scheme, SHAPE, &bad), bad, 5.0);
        assert_eq!(t.schedule_for(&scheme, SHAPE), default);
        // Corrupt files are errors, not panics.
        for text in [
            "{ nope",
            r#"{"version": 7, "entries": []}"#,
            r#"{"version": 1}"#,
        ] {
            let p = temp("attention_bad.json");
            std::fs::write(&p, text).unwrap();
            assert!(AttentionTable::load(&p).is_err(), "{text}");
        }
    }

    /// What `HostAttention::new` compiles: the texts are the kernels' printed IR in launch
    /// order, at the entry's schedule when its lowering checksum matches (also for narrow
    /// rows, whose kernels differ from the f32 ones the checksum is of), else the default.
    #[test]
    fn lower_tuned_checks_the_entry_on_the_kernels_it_prints() {
        use kvq::tune::attention::lower_tuned;
        let scheme = calibquant();
        let default = AttentionSchedule::host_default(&scheme);
        let mut table = AttentionTable::default();
        let key = AttentionKey::new(&scheme, SHAPE, &other(&scheme));
        table.insert(&scheme, key.clone(), other(&scheme), 5.0);
        for fp in [
            kvq_ir::lower::InputType::F32,
            kvq_ir::lower::InputType::F16,
            kvq_ir::lower::InputType::BF16,
        ] {
            let shape = AttentionShape { fp, ..SHAPE };
            let (schedule, kernels, texts) = lower_tuned(Some(&table), &scheme, shape).unwrap();
            assert_eq!(schedule, other(&scheme), "{fp:?}");
            let expected = kvq::lower::attention::attention(&scheme, shape, &schedule).unwrap();
            assert_eq!(kernels, expected);
            let printed: Vec<String> = expected.all().map(kvq_ir::ir::print).collect();
            assert_eq!(texts, printed);
            assert_eq!(texts.len(), 3, "stats, partial, combine");
        }
        let mut stale = key;
        stale.lowering = "fnv1a64:0000000000000000".into();
        let mut t = AttentionTable::default();
        t.insert(&scheme, stale, other(&scheme), 5.0);
        for table in [Some(&t), None] {
            let (schedule, kernels, _) = lower_tuned(table, &scheme, SHAPE).unwrap();
            assert_eq!(schedule, default);
            let expected = kvq::lower::attention::attention(&scheme, SHAPE, &default).unwrap();
            assert_eq!(kernels, expected);
        }
    }

    #[test]
    fn host_attention_uses_the_committed_entry() {
        // The committed table holds CalibQuant at d128 g4 for the machine that tuned it: there
        // `HostAttention` must take the entry's schedule (a table left stale by a lowering
        // change falls back to the default and fails here); on another machine (another
        // target key) the default applies.
        let scheme = calibquant();
        let entry = default_attention_table().and_then(|t| t.tuned(&scheme, SHAPE));
        let expected = entry.map_or(AttentionSchedule::host_default(&scheme), |t| t.schedule);
        for fp in [
            kvq_ir::lower::InputType::F32,
            kvq_ir::lower::InputType::BF16,
        ] {
            let shape = AttentionShape { fp, ..SHAPE };
            let attn = HostAttention::new(&scheme, shape, None).unwrap();
            assert_eq!(attn.schedule(), expected, "{fp:?}");
        }
    }
}

/// The attention tuner times every candidate at every span length and batch size it is given, scores each by
/// the geometric mean of its time over the default's (the default scores 1), and picks the
/// lowest score among candidates whose outputs agree with the default's; no figure is asserted
/// beyond being a positive time.
#[test]
fn tune_attention_times_every_candidate_at_every_span() {
    use kvq::lower::attention::{AttentionSchedule, AttentionShape};
    use kvq::tune::attention::{attention_candidates, tune_attention};
    let scheme = kvq::CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
    )
    .unwrap();
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 64,
        group: 2,
    };
    let (spans, batches) = ([200, 700], [1, 3]);
    let result = tune_attention(&scheme, shape, 2, (&spans, &batches), 1).unwrap();
    let listed = attention_candidates(&scheme);
    assert_eq!(result.spans, spans);
    assert_eq!(result.batches, batches);
    let timed: Vec<AttentionSchedule> = result.timings.iter().map(|t| t.0).collect();
    assert_eq!(timed, listed);
    for (s, times) in &result.timings {
        assert_eq!(times.len(), spans.len() * batches.len(), "{s:?}");
        assert!(times.iter().all(|&t| t.is_finite() && t > 0.0), "{s:?}");
    }
    let default = AttentionSchedule::host_default(&scheme);
    let at = |s: AttentionSchedule| listed.iter().position(|&c| c == s).unwrap();
    assert_eq!(result.ratios[at(default)], 1.0);
    let lowest = result.ratios.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(result.ratios[at(result.best)], lowest);
}

/// The committed tuning tables hold no stale entry, whatever machine tuned it: a stale entry is
/// never used (its machine silently gets the default schedule, and the benchmarks with it), so a
/// change to the lowering or the candidates must re-tune or drop the entries it staled. And the
/// check finds an entry whose lowering checksum was changed.
#[test]
fn committed_tuning_tables_hold_no_stale_entry() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let quantize = TuningTable::load(&dir.join("host.json")).unwrap();
    let attention =
        tune::attention::AttentionTable::load(&dir.join("host-attention.json")).unwrap();
    assert!(!quantize.is_empty() && !attention.is_empty());
    assert_eq!(quantize.stale_entries(), Vec::<String>::new(), "host.json");
    assert_eq!(
        attention.stale_entries(),
        Vec::<String>::new(),
        "host-attention.json"
    );

    for (name, len) in [
        ("host.json", quantize.len()),
        ("host-attention.json", attention.len()),
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let at = text.find("\"lowering\": \"fnv1a64:").unwrap() + "\"lowering\": \"fnv1a64:".len();
        let digit = if text.as_bytes()[at] == b'0' {
            "1"
        } else {
            "0"
        };
        let damaged = format!("{}{digit}{}", &text[..at], &text[at + 1..]);
        let path = temp(&format!("damaged-{name}"));
        std::fs::write(&path, damaged).unwrap();
        let stale = if name == "host.json" {
            TuningTable::load(&path).unwrap().stale_entries()
        } else {
            tune::attention::AttentionTable::load(&path)
                .unwrap()
                .stale_entries()
        };
        assert_eq!(stale.len(), 1, "{name}: {stale:?} of {len}");
    }
}
