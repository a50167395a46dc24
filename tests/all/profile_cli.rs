//! `kvq profile` as a user runs it: the JSON's structure and hand-checkable facts, labels, and
//! clean one-line failures.

use std::process::{Command, Output};

use kvq::Scheme;
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use serde_json::Value;

const KEY: &str = "bits = 1, axis = channel, group = all, rule = shrink(0.5)";
const VALUE: &str = "bits = 2, axis = token, group = 32, rule = minmax";

fn profile(extra: &[&str]) -> Output {
    profile_with(extra, None)
}

/// `kvq profile`, with `KVQ_PTXAS` set to `ptxas` when given.
fn profile_with(extra: &[&str], ptxas: Option<&str>) -> Output {
    let env: Vec<(&str, &str)> = ptxas.iter().map(|&p| ("KVQ_PTXAS", p)).collect();
    profile_env(extra, &env)
}

/// `kvq profile` with the environment variables `env` set.
fn profile_env(extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["profile", "--key", KEY, "--value", VALUE];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvq"));
    cmd.args(args).env("KVQ_CACHE", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The JSON of a successful `kvq profile --target sm_90 --json` at [`SHAPE`].
fn sm90_json(env: &[(&str, &str)]) -> (Output, Value) {
    let mut args = vec!["--target", "sm_90", "--json"];
    args.extend_from_slice(&SHAPE);
    let out = profile_env(&args, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    (out, j)
}

/// A clean failure: exit status 1, nothing on stdout, one `error:` line, no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

const SHAPE: [&str; 6] = ["--kv-heads", "2", "--tokens", "1024", "--head-dim", "64"];

#[test]
fn json_has_every_kernel_with_checkable_facts() {
    let (out, j) = sm90_json(&[]);
    assert_eq!(j["target"], "sm_90");
    assert_eq!(j["gpu"], "h100");
    // K and V of 2 heads x 1024 tokens x 64 channels in bf16: 2 x 131072 x 2 bytes.
    assert_eq!(j["sdpa_bf16"]["bytes"], 524_288);
    let kernels = j["kernels"].as_array().expect("kernels");
    let roles: Vec<&str> = kernels
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "key quantize",
            "key dequantize",
            "value quantize",
            "value dequantize"
        ]
    );
    // By hand: the key (axis = channel, group = all) takes a cluster of 8 blocks per (head,
    // column of 16 channels) on sm_90: 2 heads x 64 / 16 x 8 = 64. Every grid is its kernel's
    // Launch rule for the shape.
    let grids: Vec<u64> = kernels
        .iter()
        .map(|k| k["grid"].as_u64().unwrap())
        .collect();
    assert_eq!(grids[0], 64);
    let class = ShapeClass {
        head_dim: 64,
        input: InputType::F16,
    };
    let mut clusters = Vec::new();
    for (n, text) in [KEY, KEY, VALUE, VALUE].into_iter().enumerate() {
        let s = Scheme::parse(text).unwrap();
        let schedule = Schedule::gpu_default(&s, class);
        let l = match n % 2 {
            0 => lower::quantize(&s, class, &schedule),
            _ => lower::dequantize(&s, class, &schedule),
        }
        .unwrap();
        assert_eq!(l.launch.grid(2, 1024, l.kernel.block_size), grids[n]);
        assert_eq!(kernels[n]["block"], l.kernel.block_size);
        clusters.push(u64::from(l.kernel.cluster_size));
    }
    for (k, &c) in kernels.iter().zip(&clusters) {
        let g = k["grid"].as_u64().unwrap();
        let sample: Vec<u64> = k["sample_blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .collect();
        // The first, middle and last blocks, each with its whole cluster.
        let mut want: Vec<u64> = [0, g / 2, g - 1]
            .iter()
            .flat_map(|&b| (b - b % c)..(b - b % c + c))
            .collect();
        want.dedup();
        assert_eq!(sample, want);
        for which in ["global_loads", "global_stores"] {
            let e = k[which]["efficiency"].as_f64().expect("efficiency");
            assert!(e > 0.0 && e <= 1.0, "{which} {e}");
        }
        let occupancy = k["occupancy"].as_f64().unwrap();
        assert!(occupancy > 0.0 && occupancy <= 1.0);
        let total = k["predicted_us"].as_f64().unwrap();
        for term in [
            "predicted_dram_us",
            "predicted_l2_us",
            "predicted_latency_us",
            "predicted_issue_us",
        ] {
            assert!(k[term].as_f64().unwrap() <= total, "{term}");
        }
        assert!(k["predicted_copy_bound_us"].as_f64().unwrap() > 0.0);
        assert!(k["predicted_ratio"].as_f64().unwrap() > 0.0);
    }
    // Deterministic: the same bytes again.
    assert_eq!(sm90_json(&[]).0.stdout, out.stdout);
}

/// The text report of a successful `kvq profile --target <target>` at [`SHAPE`].
fn text_report(target: &str) -> String {
    let mut args = vec!["--target", target];
    args.extend_from_slice(&SHAPE);
    let out = profile(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn text_labels_every_time_predicted() {
    let text = text_report("sm_80");
    assert!(text.contains("sm_80 on a100"));
    for line in text.lines().filter(|l| l.contains(" us")) {
        assert!(line.contains("predicted"), "unlabelled: {line}");
    }
}

/// With ptxas and nvdisasm (scripts/setup.sh installs both), every kernel's trace is weighed by
/// the machine instructions ptxas made of each body; without nvdisasm it counts IR instructions.
#[test]
fn instructions_are_weighed_by_the_machine_code_when_nvdisasm_is_found() {
    let (_, j) = sm90_json(&[]);
    if j["ptxas"] != true || j["nvdisasm"] != true {
        eprintln!("ptxas or nvdisasm not found: the weighing is not checked here");
        return;
    }
    for k in j["kernels"].as_array().unwrap() {
        let r = k["sass_per_ir"].as_f64().expect("a ratio");
        // Every IR instruction becomes at least a fraction of one machine instruction and no
        // kvq kernel expands ten-fold (a division is about 10), statically and as run.
        assert!(r > 0.25 && r < 10.0, "{}: {r}", k["name"]);
        let ir = k["ir_insts_per_warp"].as_f64().unwrap();
        let weighed = k["warp_insts_per_warp"].as_f64().unwrap();
        let run = weighed / ir;
        assert!(run > 0.25 && run < 10.0, "{}: {weighed} vs {ir}", k["name"]);
    }
    let (out, j) = sm90_json(&[("KVQ_NVDISASM", "/nonexistent/nvdisasm")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nvdisasm not found"));
    assert_eq!(j["nvdisasm"], false);
    for k in j["kernels"].as_array().unwrap() {
        assert!(k["sass_per_ir"].is_null());
        assert_eq!(k["warp_insts_per_warp"], k["ir_insts_per_warp"]);
    }
}

#[test]
fn without_ptxas_the_model_still_reports() {
    let mut args = vec!["--target", "sm_90", "--json"];
    args.extend_from_slice(&SHAPE);
    let out = profile_with(&args, Some("/nonexistent/ptxas"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ptxas not found"));
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(j["ptxas"], false);
    for k in j["kernels"].as_array().unwrap() {
        assert!(k["registers"].is_null());
        assert!(k["occupancy"].as_f64().unwrap() > 0.0);
        assert!(k["predicted_us"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bad_options_are_one_line_errors() {
    assert_clean_failure(&profile(&["--target", "sm_70"]), "sm_70");
    assert_clean_failure(
        &profile(&["--target", "sm_90", "--gpu", "a100"]),
        "--gpu a100 is sm_80",
    );
    let huge = ["--target", "sm_90", "--batch", "4096", "--kv-heads", "4096"];
    assert_clean_failure(&profile(&huge), "exceed the 4294967295 elements");
    // 2^30 f32 elements: addressable, but input and output would take 4 GiB each.
    let big = [
        "--target",
        "sm_90",
        "--kv-heads",
        "4096",
        "--tokens",
        "2048",
        "--input",
        "f32",
    ];
    assert_clean_failure(&profile(&big), "bytes of host memory");
}

/// The JSON report of a successful `kvq profile` run with `args`.
fn profile_json(args: &[&str]) -> Value {
    let out = profile(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `--attention` adds the decode-attention kernels (logit statistics when calibrated, partials,
/// combine) of a synthetic batch; the combine runs one thread per (sequence, query head), so one
/// block of 64 for 1 x 2 x 4 query heads, and the statistics read the chunks the partials read.
#[test]
fn attention_kernels_are_profiled_on_request() {
    for calibrate in [Some("3"), None] {
        let mut args = vec!["--target", "sm_90", "--json", "--attention"];
        args.extend_from_slice(&["--kv-heads", "2", "--tokens", "600", "--fp-tokens", "40"]);
        if let Some(d) = calibrate {
            args.extend_from_slice(&["--calibrate", d]);
        }
        let j = profile_json(&args);
        let kernels = j["kernels"].as_array().expect("kernels");
        let by_role = |role: &str| kernels.iter().find(|k| k["role"] == role);
        let partial = by_role("attention partial").expect("partial");
        let combine = by_role("attention combine").expect("combine");
        // `partial`'s sample is stratified: span chunks and full-precision chunks, each class's
        // sampled blocks standing for all of its blocks (together the whole grid).
        let stands: Vec<f64> = partial["sample_stands_for"]
            .as_array()
            .expect("stands for")
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let grid = partial["grid"].as_f64().unwrap();
        assert!((stands.iter().sum::<f64>() - grid).abs() <= 0.1 * stands.len() as f64);
        // 600 span tokens in chunks of 256 and 40 fp tokens in chunks of 16, x 2 kv heads:
        // 6 blocks of each class (span first), the first, middle and last of each sampled.
        assert_eq!(
            partial["sample_blocks"],
            serde_json::json!([0, 3, 5, 6, 9, 11])
        );
        assert_eq!(stands, [2.0; 6]);
        // The block layout (token-axis values take it): a block per (sequence, query head),
        // 1 sequence x 2 kv heads x group 4.
        assert_eq!(combine["grid"], 8);
        match by_role("attention stats") {
            Some(stats) => {
                assert!(calibrate.is_some());
                assert_eq!(stats["grid"], partial["grid"]);
            }
            None => assert!(calibrate.is_none()),
        }
        let total: f64 = kernels
            .iter()
            .filter(|k| k["role"].as_str().unwrap().starts_with("attention"))
            .map(|k| k["predicted_us"].as_f64().unwrap())
            .sum();
        // SDPA reads the whole cache, span and full-precision tokens: K and V of 1 sequence x
        // 2 kv heads x (600 + 40) tokens x 128 channels in bf16.
        assert_eq!(j["sdpa_bf16"]["bytes"], 2 * 2 * 640 * 128 * 2);
        let reported = j["attention"]["predicted_us"].as_f64().unwrap();
        assert!(
            (reported - total).abs() <= 0.01 * total,
            "{reported} vs {total}"
        );
        // `--only-attention`: the same attention kernels and figures, and no other kernel.
        assert!(by_role("key quantize").is_some());
        args.push("--only-attention");
        let only = profile_json(&args);
        let attention_kernels: Vec<&Value> = kernels
            .iter()
            .filter(|k| k["role"].as_str().unwrap().starts_with("attention"))
            .collect();
        let only_kernels: Vec<&Value> = only["kernels"]
            .as_array()
            .expect("kernels")
            .iter()
            .collect();
        assert_eq!(only_kernels, attention_kernels);
        assert_eq!(only["attention"], j["attention"]);
    }
    // A batch too large to simulate is a one-line error before anything is allocated.
    let out = profile(&[
        "--target",
        "sm_90",
        "--attention",
        "--kv-heads",
        "8",
        "--tokens",
        "64",
        "--fp-tokens",
        "16000000",
    ]);
    assert_clean_failure(&out, "synthetic batch");
    // Attention options without --attention are refused.
    for option in [&["--calibrate", "3"][..], &["--only-attention"]] {
        let mut args = vec!["--target", "sm_90"];
        args.extend_from_slice(option);
        let out = profile(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{option:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{option:?}: {stderr}");
    }
}

/// The first number after `label` in `line` (e.g. "DRAM 10.643 us" -> 10.643).
fn term(line: &str, label: &str) -> f64 {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {line}"))
        + label.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label} in {line}"))
}

/// Every kernel's printed total is what the model line printed below it says it is:
/// `launch + max(DRAM, L2) + latency + issue` of the terms printed above it (to their 3
/// printed decimals), and the model line states that sum.
#[test]
fn text_totals_are_the_stated_sum_of_the_printed_terms() {
    // The quantize kernels, and CalibQuant's attention at head_dim 128 and group 4, whose
    // `partial` runs `P V` on tensor cores (a "tensor cores" term).
    let attention = Command::new(env!("CARGO_BIN_EXE_kvq"))
        .args([
            "profile",
            "--key",
            KEY,
            "--value",
            "bits = 1, axis = channel, group = all, rule = minmax",
        ])
        .args([
            "--target",
            "sm_90",
            "--attention",
            "--only-attention",
            "--calibrate",
            "3",
        ])
        .args(["--kv-heads", "2", "--tokens", "600", "--fp-tokens", "40"])
        .env("KVQ_CACHE", "off")
        .output()
        .unwrap();
    let attention = String::from_utf8(attention.stdout).unwrap();
    assert!(attention.contains("tensor cores"), "{attention}");
    let text = text_report("sm_90") + &attention;
    let model = text
        .lines()
        .find(|l| l.starts_with("model:"))
        .expect("model line");
    assert!(
        model.contains("us launch + max(DRAM bytes / bandwidth, L2 sector bytes / L2 bandwidth) + max(load misses")
            && model.contains("ns latency + (warp instructions + 8 x warp MMAs) / issue rate;"),
        "{model}"
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("predicted"))
        .collect();
    assert!(lines.len() >= 4, "{text}");
    let mut kernels = 0;
    for (i, terms) in lines.iter().enumerate() {
        if !terms.contains("predicted     DRAM") {
            continue;
        }
        // The terms, a tensor-core line for a kernel with MMAs, then the total.
        let (tensor, total) = match lines.get(i + 1) {
            Some(l) if l.contains("tensor cores") => (term(l, "tensor cores"), lines[i + 2]),
            Some(l) => (0.0, *l),
            None => panic!("no total after {terms}"),
        };
        let sum = term(terms, "launch")
            + term(terms, "DRAM").max(term(terms, "L2"))
            + term(terms, "latency")
            + term(terms, "issue")
            + tensor;
        let printed = term(total, "predicted");
        assert!(
            (sum - printed).abs() <= 0.004,
            "{terms} / {total}: sum {sum}"
        );
        kernels += 1;
    }
    assert!(kernels >= 2, "{text}");
}
