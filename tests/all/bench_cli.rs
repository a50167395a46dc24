//! `kvq bench` as a user runs it: the JSON figures of a small run (sizes against SPEC's
//! formulas, kvq's output against the f32 baseline's within the quantization's error), and
//! one-line refusals of sizes it cannot hold. Times are not checked.

use std::process::{Command, Output};

use serde_json::Value;

fn kvq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvq"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_attention_reports_each_shape() {
    let out = kvq(&[
        "bench",
        "attention",
        "--tokens",
        "256,512",
        "--batch",
        "2",
        "--rounds",
        "1",
        "--json",
    ]);
    let rows = json(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, tokens) in rows.iter().zip([256u64, 512]) {
        assert_eq!(row["span_tokens"], tokens);
        assert_eq!(row["text_tokens"], 64);
        assert_eq!(row["text_rows"], "f32");
        assert_eq!(row["batch"], 2);
        assert_eq!(row["order"], "interleaved");
        // 1-bit codes for 8 heads x 128 channels per token, K and V; f16 zero and scale per
        // (head, channel), K and V.
        let codes = 2 * 8 * tokens * 16;
        assert_eq!(row["span_bytes"], codes + 2 * 2 * 8 * 128 * 2);
        assert_eq!(row["span_f16_bytes"], 2 * 8 * tokens * 128 * 2);
        // 64 text tokens' f32 rows, K and V, against their f16 size.
        assert_eq!(row["text_bytes"], 2 * 8 * 64 * 128 * 4);
        assert_eq!(row["text_f16_bytes"], 2 * 8 * 64 * 128 * 2);
        // 1-bit CalibQuant on synthetic K/V: the output is near the f32 baseline's, not equal.
        let err = row["rel_error_vs_f32"].as_f64().unwrap();
        assert!(err > 0.01 && err < 0.9, "{err}");
        for key in ["candle_f32_s", "f16_loop_s", "kvq_s"] {
            assert!(row[key].as_f64().unwrap() > 0.0, "{key}");
        }
    }
}

#[test]
fn bench_attention_takes_the_text_tokens_asked_for() {
    let mut errors = Vec::new();
    for (text, rows) in [(0u64, "f32"), (300, "f16"), (300, "bf16")] {
        let out = kvq(&[
            "bench",
            "attention",
            "--tokens",
            "128",
            "--batch",
            "1",
            "--text",
            &text.to_string(),
            "--text-rows",
            rows,
            "--rounds",
            "1",
            "--json",
        ]);
        let figures = json(&out);
        let row = &figures.as_array().unwrap()[0];
        assert_eq!(row["text_tokens"], text);
        assert_eq!(row["text_rows"], rows);
        assert_eq!(row["span_tokens"], 128);
        // The span alone is quantized: its sizes do not depend on the text.
        assert_eq!(row["span_f16_bytes"], 2 * 8 * 128 * 128 * 2);
        // The text rows are counted at the type asked for (f16 and bf16 two bytes).
        let row_bytes = if rows == "f32" { 4 } else { 2 };
        assert_eq!(row["text_bytes"], 2 * 8 * text * 128 * row_bytes);
        assert_eq!(row["text_f16_bytes"], 2 * 8 * text * 128 * 2);
        // kvq's output is near candle's over the same text and span (the span's 1-bit error).
        let err = row["rel_error_vs_f32"].as_f64().unwrap();
        assert!(
            err > 0.01 && err < 0.9,
            "--text {text} --text-rows {rows}: {err}"
        );
        errors.push(err);
    }
    // With 300 of 428 tokens full precision, kvq's output is nearer candle's than with none:
    // the text tokens reach kvq's kernels (rounded to f16 or bf16, far below the span's error).
    assert!(errors[1] < 0.5 * errors[0], "{errors:?}");
    assert!(errors[2] < 0.5 * errors[0], "{errors:?}");
}

#[test]
fn bench_quantize_reports_each_scheme() {
    let schemes = [
        "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
        "bits = 4, axis = token, group = all, rule = minmax",
    ];
    let out = kvq(&[
        "bench", "quantize", "--scheme", schemes[0], "--scheme", schemes[1], "--tokens", "256",
        "--rounds", "1", "--json",
    ]);
    let rows = json(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, text) in rows.iter().zip(schemes) {
        assert!(row["scheme"].as_str().unwrap().starts_with(text));
        assert_eq!(row["order"], "interleaved");
        assert!(row["kvq_s"].as_f64().unwrap() > 0.0);
        assert!(row["copy_s"].as_f64().unwrap() > 0.0);
    }
}

/// `--order back-to-back` times each contender's calls one after another: the same
/// computation, so the same output error as interleaved rounds, and every time still measured.
#[test]
fn bench_times_back_to_back_when_asked() {
    let attention = |order: &str| {
        let out = kvq(&[
            "bench",
            "attention",
            "--tokens",
            "256",
            "--batch",
            "1",
            "--rounds",
            "2",
            "--order",
            order,
            "--json",
        ]);
        json(&out)[0].clone()
    };
    let (apart, alone) = (attention("interleaved"), attention("back-to-back"));
    assert_eq!(alone["order"], "back-to-back");
    assert_eq!(alone["rel_error_vs_f32"], apart["rel_error_vs_f32"]);
    for key in ["candle_f32_s", "f16_loop_s", "kvq_s"] {
        assert!(alone[key].as_f64().unwrap() > 0.0, "{key}");
    }
    let out = kvq(&[
        "bench",
        "quantize",
        "--scheme",
        "bits = 1, axis = channel, group = all, rule = minmax",
        "--tokens",
        "256",
        "--rounds",
        "2",
        "--order",
        "back-to-back",
        "--json",
    ]);
    let row = &json(&out)[0];
    assert_eq!(row["order"], "back-to-back");
    assert!(row["kvq_s"].as_f64().unwrap() > 0.0);
    assert!(row["copy_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_refuses_what_it_cannot_hold() {
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "bench",
                "attention",
                "--tokens",
                "16000000",
                "--batch",
                "4000",
            ],
            "GiB",
        ),
        (&["bench", "attention", "--tokens", "0"], "tokens"),
        (&["bench", "attention", "--text", "99999999"], "tokens"),
        (&["bench", "quantize", "--scheme", "bits = 3"], "--scheme"),
        (&["bench", "quantize", "--head-dim", "60"], "head_dim"),
        (&["bench", "attention", "--order", "sideways"], "--order"),
    ];
    for (args, needle) in cases {
        let out = kvq(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
    }
}

#[test]
fn bench_compile_reports_cold_warm_and_repeated_and_leaves_no_cache_behind() {
    let out = kvq(&["bench", "compile", "--json"]);
    let figures = json(&out);
    assert!(
        figures["kernels"]
            .as_str()
            .unwrap()
            .contains("(head_dim 128, group 4)"),
        "{figures}"
    );
    for key in ["cold_s", "warm_first_s", "repeat_s"] {
        let s = figures[key].as_f64().unwrap_or(-1.0);
        assert!(s > 0.0 && s.is_finite(), "{key}: {figures}");
    }
    // The cold and warm probes ran on a compile cache of their own, removed afterwards.
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("kvq-bench-compile-")
        })
        .count();
    assert_eq!(leftovers, 0);
}
