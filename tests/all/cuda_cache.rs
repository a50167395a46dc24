//! The CUDA cache's bundle, built in memory (`kvq::bundle::cache_bundle`), for every catalogue
//! scheme as keys beside CalibQuant's values; and `kvq::bundle::cuda_cache` on a machine without
//! a GPU (a typed error, no panic) or with one (the cache against the host cache).

use kvq::bundle::{cache_bundle, cuda_cache};
use kvq::lower::attention::{AttentionSchedule, AttentionShape};
use kvq::lower::InputType;
use kvq::metrics::max_head_deviation;
use kvq::{CacheScheme, Calibration, Scheme, Tensor3};
use kvq_codegen::Arch;
use kvq_ir::scheme::catalogue::catalogue;
use kvq_runtime::cuda::Role;
use kvq_runtime::{ModelShape, QueryRef, VisualKvCache};

const SHAPE: ModelShape = ModelShape {
    layers: 1,
    kv_heads: 2,
    q_heads: 8,
    head_dim: 128,
};

fn calibquant_value() -> Scheme {
    Scheme::parse("bits = 1, axis = channel, group = all, rule = shrink(0.3)").unwrap()
}

/// A cache bundle for rows stored as f16 or bf16: its quantize kernels read that type and its
/// attention kernels take full-precision rows of it (what `Cuda::new` checks).
#[test]
fn narrow_cache_bundles_read_their_row_type_everywhere() {
    use kvq_runtime::cuda::{Elem, ParamSpec};
    let scheme = CacheScheme {
        key: Scheme::parse("bits = 1, axis = channel, group = all, rule = shrink(0.5)").unwrap(),
        value: calibquant_value(),
        calibrate: Calibration::new(3.0),
    };
    for (fp, elem) in [(InputType::F16, Elem::F16), (InputType::BF16, Elem::Bf16)] {
        let bundle = cache_bundle(SHAPE, &scheme, fp, Arch::Sm90).unwrap();
        assert_eq!(bundle.manifest.input, fp.name());
        let elem_of = |role: Role, param: &str| {
            let k = bundle
                .manifest
                .kernels
                .iter()
                .find(|k| k.role == role)
                .unwrap();
            k.entry.params.iter().find_map(|p| match p {
                ParamSpec::Buffer { name, elem, .. } if name == param => Some(*elem),
                _ => None,
            })
        };
        assert_eq!(elem_of(Role::KeyQuantize, "x"), Some(elem), "{fp:?}");
        for role in [Role::AttentionStats, Role::AttentionPartial] {
            for rows in ["fp_k", "fp_v"] {
                assert_eq!(elem_of(role, rows), Some(elem), "{fp:?} {rows}");
            }
        }
    }
}

#[test]
fn cache_bundles_hold_every_kernel_the_cuda_cache_loads() {
    let mut checked = 0;
    for (name, key) in catalogue() {
        let value = calibquant_value();
        let scheme = CacheScheme {
            key,
            value,
            calibrate: Calibration::new(3.0),
        };
        let Ok(bundle) = cache_bundle(SHAPE, &scheme, InputType::F32, Arch::Sm90) else {
            // A scheme that cannot pack head_dim 128 has no kernels (the compiler says why).
            continue;
        };
        let m = &bundle.manifest;
        assert_eq!(
            (m.input.as_str(), m.group, m.head_dim),
            ("f32", Some(4), 128),
            "{name}"
        );
        let role = |r: Role, text: String| {
            let k = m
                .kernels
                .iter()
                // Equal key and value schemes share one quantize kernel (as Cuda::new finds it).
                .find(|k| {
                    (k.role == r || (r.is_quantize() && k.role.is_quantize())) && k.scheme == text
                })
                .unwrap_or_else(|| panic!("{name}: no {} kernel", r.name()));
            let (_, ptx) = bundle.kernel(&k.entry.name).unwrap();
            assert!(ptx.contains(&format!(".entry {}", k.entry.name)), "{name}");
            k
        };
        role(Role::KeyQuantize, key.to_string());
        role(Role::ValueQuantize, value.to_string());
        role(Role::AttentionStats, scheme.to_string());
        role(Role::AttentionCombine, scheme.to_string());
        let partial = role(Role::AttentionPartial, scheme.to_string());
        // The runtime plans each batch with the schedule the manifest records: all of it.
        let recorded: AttentionSchedule = serde_json::from_value(partial.schedule.clone()).unwrap();
        let shape = AttentionShape {
            fp: kvq_ir::lower::InputType::F32,
            head_dim: 128,
            group: 4,
        };
        assert_eq!(
            recorded,
            AttentionSchedule::gpu_default(&scheme, shape),
            "{name}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} catalogue schemes fit");
    // Equal key and value schemes share one quantize kernel, which serves both.
    let same = CacheScheme {
        key: calibquant_value(),
        value: calibquant_value(),
        calibrate: None,
    };
    let bundle = cache_bundle(SHAPE, &same, InputType::F32, Arch::Sm90).unwrap();
    let quantize: Vec<_> = bundle
        .manifest
        .kernels
        .iter()
        .filter(|k| k.role.is_quantize())
        .collect();
    assert_eq!(quantize.len(), 1);
    assert_eq!(quantize[0].scheme, calibquant_value().to_string());
}

#[test]
fn cuda_cache_is_a_typed_error_without_a_gpu_and_matches_the_host_with_one() {
    let scheme = CacheScheme {
        key: Scheme::parse("bits = 1, axis = channel, group = all, rule = shrink(0.5)").unwrap(),
        value: calibquant_value(),
        calibrate: Calibration::new(3.0),
    };
    let mut gpu = match cuda_cache(SHAPE, scheme, 0) {
        Ok(cache) => cache,
        Err(e) => {
            let text = format!("{e:#}");
            assert!(text.contains("no CUDA driver"), "{text}");
            eprintln!("cuda_cache: skipped on this machine: {text}");
            return;
        }
    };
    let mut host = VisualKvCache::with_reference(SHAPE, scheme).unwrap();
    let n = 600;
    let data = |s: u32| {
        (0..2 * n * 128)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ s) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let k = Tensor3::new([2, n, 128], data(1)).unwrap();
    let v = Tensor3::new([2, n, 128], data(2)).unwrap();
    let (g, h) = (gpu.add_sequence(), host.add_sequence());
    gpu.prefill(0, g, &k, &v, 10..590).unwrap();
    host.prefill(0, h, &k, &v, 10..590).unwrap();
    assert_eq!(
        gpu.export_span(0, g).unwrap(),
        host.export_span(0, h).unwrap()
    );
    assert_eq!(gpu.memory(), host.memory());
    let q: Vec<f32> = (0..8 * 128).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
    let got = gpu.attend(0, &[QueryRef { seq: g, q: &q }]).unwrap();
    let want = host.attend(0, &[QueryRef { seq: h, q: &q }]).unwrap();
    assert!(max_head_deviation(&got[0], &want[0], 128) <= 1e-4);
}
