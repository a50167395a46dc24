//! `kvq profile` against a GPU: its predictions for the kernels measured on an NVIDIA H200
//! (docs/gpu/h200-2026-12-04, CUDA events around one launch, median of 50) must lie within a
//! factor of 2 of the measured times. The measurements are the independent reference; the model
//! was corrected with them (additive terms, a measured launch cost), so this test keeps later
//! changes to the model or the kernels from drifting away from what the GPU did.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const KEY: &str = "bits = 1, axis = channel, group = all, rule = shrink(0.5)";
const VALUE: &str = "bits = 1, axis = channel, group = all, rule = shrink(0.3)";
const RUN: &str = "docs/gpu/h200-2026-12-04";

/// The time in µs a results.md table row of the run gives: the row holding `row` (first
/// match), its `column`-th `|`-separated cell.
fn measured(file: &str, row: &str, column: usize) -> f64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(RUN).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let line = text
        .lines()
        .find(|l| l.contains(row))
        .unwrap_or_else(|| panic!("no row {row:?} in {path:?}"));
    line.split('|')
        .nth(column)
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number in column {column} of {line:?}"))
}

/// `kvq profile --gpu h200 --json` of the CalibQuant pair with `extra` options; `None` (and a
/// message) when ptxas is missing: without registers the model's occupancy is not the GPU's.
fn profile(extra: &[&str]) -> Option<Value> {
    let mut args = vec![
        "profile",
        "--key",
        KEY,
        "--value",
        VALUE,
        "--target",
        "sm_90",
        "--gpu",
        "h200",
        "--json",
        "--kv-heads",
        "8",
        "--head-dim",
        "128",
        "--tokens",
        "16384",
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_kvq"))
        .args(args)
        .env("KVQ_CACHE", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    if j["ptxas"] != true {
        eprintln!("ptxas not found (scripts/setup.sh installs it): the model is not checked against the H200");
        return None;
    }
    Some(j)
}

fn predicted_us(j: &Value, name_part: &str) -> f64 {
    j["kernels"]
        .as_array()
        .expect("kernels")
        .iter()
        .find(|k| k["name"].as_str().is_some_and(|n| n.contains(name_part)))
        .and_then(|k| k["predicted_us"].as_f64())
        .unwrap_or_else(|| panic!("no kernel {name_part}"))
}

fn assert_within_2x(what: &str, predicted: f64, measured: f64) {
    let ratio = predicted / measured;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "{what}: predicted {predicted:.1} µs, measured {measured:.1} µs on the H200 (x{ratio:.2})"
    );
}

#[test]
fn quantize_predictions_are_within_2x_of_the_h200() {
    let Some(j) = profile(&["--input", "f16"]) else {
        return;
    };
    for kernel in [
        "kvq_quantize_cluster_b1call_shrink3f000000_hm_d128_f16",
        "kvq_quantize_cluster_b1call_shrink3e99999a_hm_d128_f16",
    ] {
        let m = measured("shape_8x16384/results.md", kernel, 5);
        assert_within_2x(kernel, predicted_us(&j, kernel), m);
    }
}

#[test]
fn attention_predictions_are_within_2x_of_the_h200() {
    let Some(j) = profile(&[
        "--attention",
        "--calibrate",
        "3",
        "--group",
        "4",
        "--fp-tokens",
        "64",
    ]) else {
        return;
    };
    // "| 1 x (16384 span + 64 fp) tok, ... | stats 15.6, partial 36.1, combine 9.1 |"
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(RUN)
        .join("calibquant_attn_bench/results.md");
    let text = std::fs::read_to_string(path).unwrap();
    let row = text
        .lines()
        .find(|l| l.contains("| 1 x (16384 span + 64 fp) tok"))
        .expect("the 16k / batch 1 row");
    let per_kernel = row.rsplit('|').nth(1).expect("per-kernel cell");
    for part in per_kernel.split(',') {
        let mut words = part.split_whitespace();
        let (role, m) = (words.next().unwrap(), words.next().unwrap());
        let m: f64 = m.parse().unwrap();
        let p = predicted_us(&j, &format!("attend_{role}_"));
        assert_within_2x(&format!("attention {role}, 16k / batch 1"), p, m);
    }
    let total = measured("calibquant_attn_bench/results.md", "| 1 x (16384 span", 4);
    let p = j["attention"]["predicted_us"].as_f64().unwrap();
    assert_within_2x("attention, 16k / batch 1, all kernels", p, total);
}
