//! `kvq report` and `kvq eval-model --prompts`: the study manifest's errors, the report's files,
//! its capture metrics against the independent `reference.json`, and its model figures' shape.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use crate::fixtures::{data, dinov2};

fn kvq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvq"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvq-report-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn prompt(name: &str) -> String {
    format!("{}/docs/prompts/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

#[test]
fn bad_manifests_fail_cleanly() {
    let harbour = prompt("harbour.txt");
    for (name, text, needle) in [
        ("broken.json", "{\"prompts\": [".to_string(), "broken.json"),
        ("empty.json", "{\"prompts\": []}".to_string(), "no prompts"),
        (
            "reversed.json",
            format!(
                r#"{{"prompts": [{{"file": "{harbour}", "span": [50, 10], "positions": 5}}]}}"#
            ),
            "non-empty span",
        ),
        (
            "missing.json",
            r#"{"prompts": [{"file": "nowhere.txt", "span": [1, 2], "positions": 5}]}"#.into(),
            "nowhere.txt",
        ),
    ] {
        let manifest = scratch(name, &text);
        let m = manifest.to_str().unwrap();
        failure(
            &kvq(&["report", "--prompts", m, "--out", "/tmp/unused"]),
            needle,
        );
        failure(
            &kvq(&[
                "eval-model",
                "--key",
                "bits = 1, axis = channel, group = all, rule = minmax",
                "--value",
                "bits = 1, axis = channel, group = all, rule = minmax",
                "--prompts",
                m,
            ]),
            needle,
        );
    }
}

#[test]
fn bad_entry_files_fail_cleanly() {
    let manifest = prompt("study.json");
    for (name, text, needle) in [
        ("e_empty.json", r#"{"entries": []}"#, "no entries"),
        (
            "e_scheme.json",
            r#"{"entries": [{"name": "x", "cache": "key(bits = 3, axis = channel, group = all, rule = mse), value(bits = 1, axis = channel, group = all, rule = mse)"}]}"#,
            "bits = 3",
        ),
        (
            "e_both.json",
            r#"{"entries": [{"name": "y", "dropped": true, "cache": "key(bits = 1, axis = channel, group = all, rule = mse), value(bits = 1, axis = channel, group = all, rule = mse)"}]}"#,
            "either",
        ),
        (
            "e_neither.json",
            r#"{"entries": [{"name": "z"}]}"#,
            "either",
        ),
        (
            "e_typo.json",
            r#"{"entries": [{"name": "z", "drop": true}]}"#,
            "drop",
        ),
    ] {
        let entries = scratch(name, text);
        let out = kvq(&[
            "report",
            "--entries",
            entries.to_str().unwrap(),
            "--prompts",
            &manifest,
            "--out",
            "/tmp/unused",
        ]);
        failure(&out, needle);
    }
}

/// The reference.json entry of `capture` with exactly these key and value schemes.
fn reference_mean(reference: &Value, capture: &str, key: &str, value: &str) -> Option<Value> {
    let canon = |s: &str| kvq::Scheme::parse(s).unwrap();
    reference.as_array().unwrap().iter().find_map(|e| {
        let same = e["file"].as_str()?.starts_with(capture)
            && canon(e["key"].as_str()?) == canon(key)
            && canon(e["value"].as_str()?) == canon(value);
        same.then(|| e["mean"].clone())
    })
}

#[test]
fn report_writes_charts_and_figures() {
    if kvq::model::default_model_path().is_none() {
        eprintln!("SKIPPED: the SmolLM2 GGUF is not installed (run scripts/setup.sh)");
        return;
    }
    let manifest = scratch(
        "one.json",
        &format!(
            r#"{{"prompts": [{{"file": "{}", "span": [120, 550], "positions": 300}}]}}"#,
            prompt("harbour.txt")
        ),
    );
    let out_dir = manifest.parent().unwrap().join("report");
    let out = kvq(&[
        "report",
        "--prompts",
        manifest.to_str().unwrap(),
        "--max-positions",
        "4",
        "--captures",
        dinov2().to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    let entries = kvq::study::ablation();
    let model = r["model"].as_array().unwrap();
    assert_eq!(model.len(), entries.len());
    for (e, m) in entries.iter().zip(model) {
        assert_eq!(m["name"], e.name.as_str());
        let p = &m["prompts"][0];
        assert_eq!(p["positions"], 4);
        let top1 = m["mean_top1"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&top1) && m["mean_kl"].as_f64().unwrap() >= 0.0,
            "{m}"
        );
        // 1-bit codes plus f16 parameters per channel over the span: just over 1 bit; dropped:
        // nothing.
        let bits = m["bits_per_element"].as_f64().unwrap();
        match m["treatment"].as_str().unwrap() {
            "dropped" => assert_eq!(bits, 0.0),
            t if t.matches("bits = 1, axis = channel, group = all").count() == 2 => {
                assert!((1.0..1.2).contains(&bits), "{m}")
            }
            _ => assert!(bits > 1.0, "{m}"),
        }
    }
    // The capture metrics of every pair that reference.json has (computed outside kvq).
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(data("reference.json")).unwrap()).unwrap();
    let mut checked = 0;
    for row in r["captures"].as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        let treatment = model.iter().find(|m| m["name"] == name).unwrap()["treatment"]
            .as_str()
            .unwrap();
        let (key, value) = split_pair(treatment);
        if let Some(mean) = reference_mean(&reference, "dinov2", &key, &value) {
            for (metric, tol) in [("k_rel", 1e-5), ("v_rel", 1e-5), ("attn_out_rel", 1e-4)] {
                let (ours, want) = (
                    row[metric].as_f64().unwrap(),
                    mean[metric].as_f64().unwrap(),
                );
                assert!(
                    (ours - want).abs() <= tol * want.max(1.0),
                    "{name} {metric}: {ours} vs {want}"
                );
            }
            checked += 1;
        }
    }
    // CalibQuant, shrink mid, quantile(0.2/0.25), KIVI-like, 4-bit, minmax.
    assert_eq!(checked, 6);
    let page = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    assert!(page.matches("<svg").count() >= 4, "charts missing");
    for e in &entries {
        assert!(
            page.contains(&e.name.replace('<', "&lt;")),
            "{} missing",
            e.name
        );
    }
}

/// `key(...), value(...)[, calibrate = d]` as the key and value scheme texts.
fn split_pair(text: &str) -> (String, String) {
    let key = text.strip_prefix("key(").unwrap();
    let (key, rest) = key.split_once("), value(").unwrap();
    let value = match rest.split_once("), calibrate") {
        Some((v, _)) => v,
        None => rest.strip_suffix(')').unwrap(),
    };
    (key.to_string(), value.to_string())
}

/// `--render-only` on figures a chart cannot place (±1e308, which overflow any axis range) writes
/// a page whose SVG coordinates are all numbers, and rewrites index.html atomically.
#[test]
fn render_only_keeps_extreme_values_out_of_the_coordinates() {
    let committed = format!("{}/docs/report/results.json", env!("CARGO_MANIFEST_DIR"));
    let mut report: Value =
        serde_json::from_str(&std::fs::read_to_string(committed).unwrap()).unwrap();
    let model = report["model"].as_array_mut().unwrap();
    model[0]["mean_top1"] = Value::from(1e308);
    model[1]["mean_kl"] = Value::from(-1e308);
    model[2]["bits_per_element"] = Value::from(1e308);
    let captures = report["captures"].as_array_mut().unwrap();
    captures[0]["k_rel"] = Value::from(1e308);
    captures[1]["attn_out_rel"] = Value::from(-1e308);
    let dir = std::env::temp_dir().join(format!("kvq-render-extreme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("results.json"), report.to_string()).unwrap();
    let out = kvq(&["report", "--render-only", "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(page.matches("<svg").count() >= 4, "charts missing");
    for attr in [
        "x", "y", "cx", "cy", "x1", "x2", "y1", "y2", "width", "height",
    ] {
        for value in page.split(&format!(" {attr}=\"")).skip(1) {
            let v = value.split('"').next().unwrap();
            let n: f64 = v.parse().unwrap_or_else(|_| panic!("{attr}=\"{v}\""));
            assert!(n.is_finite() && n.abs() < 1e6, "{attr}=\"{v}\"");
        }
    }
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(names.len(), 2, "no temporary file is left");
    let _ = std::fs::remove_dir_all(&dir);
}
