//! The reference implementation against independently computed figures (`reference.json`).

use kvq::eval::evaluate;
use kvq::Scheme;
use kvq_runtime::KvFile;
use serde_json::Value;

use crate::fixtures::data;

fn rel_dev(ours: f64, theirs: f64) -> f64 {
    (ours - theirs).abs() / theirs.abs()
}

#[test]
fn reproduces_reference_json_for_every_pair_and_layer() {
    let text = std::fs::read_to_string(data("reference.json")).unwrap();
    let entries: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(
        entries.len() >= 14,
        "reference.json has {} entries",
        entries.len()
    );
    let mut worst = [(0.0f64, String::new()), (0.0, String::new())];
    let mut checked = 0;
    for entry in &entries {
        let file = KvFile::load(&data(entry["file"].as_str().unwrap())).unwrap();
        let key = Scheme::parse(entry["key"].as_str().unwrap()).unwrap();
        let value = Scheme::parse(entry["value"].as_str().unwrap()).unwrap();
        let causal = entry["causal"].as_bool().unwrap();
        assert_eq!(
            causal, file.causal,
            "metadata and reference disagree on causality"
        );
        let report = evaluate(&file, &key, &value, causal).unwrap();
        let layers = entry["layers"].as_array().unwrap();
        assert_eq!(layers.len(), report.layers.len());
        for (theirs, ours) in layers.iter().zip(&report.layers) {
            assert_eq!(
                theirs["layer_index"].as_u64().unwrap() as usize,
                ours.layer_index
            );
            let where_ = format!(
                "{} {} layer {}",
                entry["file"], entry["scheme"], ours.layer_index
            );
            for (name, ours, tol, slot) in [
                ("k_rel", ours.k_rel, 1e-5, 0),
                ("v_rel", ours.v_rel, 1e-5, 0),
                ("attn_out_rel", ours.attn_out_rel, 1e-4, 1),
            ] {
                let dev = rel_dev(ours, theirs[name].as_f64().unwrap());
                assert!(
                    dev <= tol,
                    "{where_}: {name} = {ours}, reference {}, deviation {dev:e}",
                    theirs[name]
                );
                if dev > worst[slot].0 {
                    worst[slot] = (dev, format!("{where_} {name}"));
                }
                checked += 1;
            }
        }
        for name in ["k_rel", "v_rel", "attn_out_rel"] {
            let ours = match name {
                "k_rel" => report.mean.k_rel,
                "v_rel" => report.mean.v_rel,
                _ => report.mean.attn_out_rel,
            };
            let dev = rel_dev(ours, entry["mean"][name].as_f64().unwrap());
            assert!(
                dev <= 1e-4,
                "{} {} mean {name}: deviation {dev:e}",
                entry["file"],
                entry["scheme"]
            );
        }
    }
    println!(
        "checked {checked} figures; largest relative deviation: k/v {:e} ({}), attn_out {:e} ({})",
        worst[0].0, worst[0].1, worst[1].0, worst[1].1
    );
}
