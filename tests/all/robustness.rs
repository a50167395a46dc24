//! Inputs that once crashed, hung or misled kvq: each is now a one-line `error:` (exit 1) or a
//! correct result, and outputs are deterministic and written all or nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::fixtures::dinov2;

const KEY: &str = "bits = 1, axis = channel, group = all, rule = shrink(0.5)";
const VALUE: &str = "bits = 1, axis = channel, group = all, rule = shrink(0.3)";
const HUGE: &str = "18446744073709551615";

fn kvq_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvq"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn kvq(args: &[&str]) -> Output {
    kvq_env(args, &[])
}

/// A clean failure: exit code 1, one `error:` line with `needle`, no panic, at most `max` chars.
fn fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.len() < 2100, "{} bytes of error", stderr.len());
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvq-robust-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn nested(depth: usize) -> String {
    format!(
        "bits = 1, axis = channel, group = all, rule = {}0.5{}",
        "f(".repeat(depth),
        ")".repeat(depth)
    )
}

#[test]
fn deeply_nested_scheme_text_is_an_error() {
    let kv = dinov2();
    let text = nested(15_000);
    let out = kvq(&[
        "eval",
        "--kv",
        kv.to_str().unwrap(),
        "--key",
        &text,
        "--value",
        VALUE,
    ]);
    fails(&out, "nested deeper than 16 calls");
    // The 30 kB text is echoed cut, not whole.
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&"f(".repeat(100)));
    // Through a report's entry file too.
    let dir = temp("nested");
    let entries = dir.join("entries.json");
    let cache = format!("key({}), value({VALUE})", nested(15_000));
    let json = serde_json::json!({"entries": [{"name": "deep", "family": "x", "cache": cache}]});
    std::fs::write(&entries, json.to_string()).unwrap();
    let out_dir = dir.join("out");
    let report = || {
        kvq(&[
            "report",
            "--entries",
            entries.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
    };
    let out = report();
    fails(&out, "nested deeper than 16 calls");
    // A 1 MB entry file of junk gives a short line, not a 2 MB one.
    std::fs::write(
        &entries,
        format!(
            "{{\"entries\": [{{\"name\": \"{}\"}}]}}",
            "x".repeat(1 << 20)
        ),
    )
    .unwrap();
    let out = report();
    fails(&out, "entries");
}

fn compile(head_dim: &str, out: &Path) -> Output {
    kvq(&[
        "compile",
        "--key",
        KEY,
        "--value",
        VALUE,
        "--target",
        "host",
        "--emit",
        "ir",
        "--head-dim",
        head_dim,
        "-o",
        out.to_str().unwrap(),
    ])
}

#[test]
fn head_dim_out_of_range_fails_before_any_output() {
    let dir = temp("headdim");
    for bad in ["0", "12", "1048576", "2147483648"] {
        let out_dir = dir.join(format!("out-{bad}"));
        fails(&compile(bad, &out_dir), "head_dim");
        assert!(
            !out_dir.exists(),
            "--head-dim {bad} created the output folder"
        );
    }
    // A good compile leaves the files and no staging folder.
    let out_dir = dir.join("good");
    let out = compile("64", &out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.join("manifest.json").is_file());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "a staging folder was left"
    );
    // An output that is a file: refused, the file untouched.
    let file = dir.join("a-file");
    std::fs::write(&file, b"keep").unwrap();
    fails(&compile("64", &file), "a-file");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}

#[test]
fn huge_sizes_are_refused_up_front() {
    let dir = temp("sizes");
    let o = dir.join("case.safetensors");
    let o = o.to_str().unwrap();
    let pair = ["--key", KEY, "--value", VALUE];
    let span = format!("0..{HUGE}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [
                &["attention-case"],
                &pair[..],
                &["--span-tokens", HUGE, "-o", o],
            ]
            .concat(),
            "tokens",
        ),
        (
            [
                &["attention-case"],
                &pair[..],
                &["--span-tokens", "16777216", "--batch", "4096", "-o", o],
            ]
            .concat(),
            "outside",
        ),
        (vec!["tune", "--scheme", KEY, "--tokens", HUGE], "tokens"),
        (
            vec![
                "tune", "--scheme", KEY, "--heads", "4096", "--tokens", "16777216",
            ],
            "elements",
        ),
        (
            [&["tune-attention"], &pair[..], &["--tokens", HUGE]].concat(),
            "tokens",
        ),
        (
            [
                &["tune-attention"],
                &pair[..],
                &["--tokens", "1000000", "--batch", "4096"],
            ]
            .concat(),
            "tokens",
        ),
        (vec!["demo", "--synthetic-tokens", HUGE], "tokens"),
        (vec!["demo", "--synthetic-tokens", "5000000"], "GiB"),
        (
            vec!["demo", "--synthetic-tokens", "0", "--steps", "0"],
            "count",
        ),
        (
            [
                &["eval-model"],
                &pair[..],
                &[
                    "--prompt-file",
                    "README.md",
                    "--span",
                    &span,
                    "--positions",
                    "1",
                ],
            ]
            .concat(),
            "--span",
        ),
        (
            [
                &["eval-model"],
                &pair[..],
                &[
                    "--prompt-file",
                    "README.md",
                    "--span",
                    "0..10",
                    "--positions",
                    HUGE,
                ],
            ]
            .concat(),
            "tokens",
        ),
        (
            [
                &["attention-case"],
                &pair[..],
                &["--head-dim", "0", "-o", o],
            ]
            .concat(),
            "head_dim",
        ),
        (
            [&["attention-case"], &pair[..], &["--group", "0", "-o", o]].concat(),
            "group",
        ),
    ];
    for (args, needle) in cases {
        let out = kvq(&args);
        fails(&out, needle);
        assert!(out.stdout.is_empty(), "{args:?} printed figures");
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "an output was created"
    );
}

/// A GGUF v3 file with `metadata` (key, value) pairs and no tensors.
fn gguf(path: &Path, metadata: &[(&str, GgufValue)]) {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut out, key);
        match value {
            GgufValue::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            GgufValue::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            GgufValue::Strings(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut out, s);
                }
            }
            GgufValue::I32s(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

#[derive(Clone)]
enum GgufValue {
    U32(u32),
    F32(f32),
    Strings(Vec<&'static str>),
    I32s(Vec<i32>),
}

#[test]
fn bad_model_metadata_is_an_error_not_a_panic() {
    let dir = temp("gguf");
    let prompt = dir.join("prompt.txt");
    std::fs::write(&prompt, "a b c d e f g h i j k l m n o p").unwrap();
    let base = |hidden: u32, heads: u32, kv: u32| {
        vec![
            ("llama.block_count", GgufValue::U32(2)),
            ("llama.embedding_length", GgufValue::U32(hidden)),
            ("llama.attention.head_count", GgufValue::U32(heads)),
            ("llama.attention.head_count_kv", GgufValue::U32(kv)),
            ("llama.rope.freq_base", GgufValue::F32(10000.0)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(1e-5),
            ),
            (
                "tokenizer.ggml.tokens",
                GgufValue::Strings(vec!["a", "b", "Ġ"]),
            ),
            ("tokenizer.ggml.merges", GgufValue::Strings(vec![])),
            ("tokenizer.ggml.token_type", GgufValue::I32s(vec![1, 1, 1])),
        ]
    };
    // The last: an alignment of 0 (candle would divide by it while reading the header).
    let mut align0 = base(64, 8, 8);
    align0.push(("general.alignment", GgufValue::U32(0)));
    for (name, metadata, needle) in [
        ("kv0", base(64, 8, 0), "head_count_kv = 0"),
        ("emb7", base(7, 1, 1), "head_dim 7"),
        ("heads", base(64, u32::MAX, 1), "head_count = 4294967295"),
        ("align0", align0, "general.alignment is 0"),
    ] {
        let path = dir.join(format!("{name}.gguf"));
        gguf(&path, &metadata);
        let out = kvq(&[
            "eval-model",
            "--key",
            KEY,
            "--value",
            VALUE,
            "--model",
            path.to_str().unwrap(),
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--span",
            "1..3",
            "--positions",
            "2",
        ]);
        fails(&out, needle);
    }
    // A missing model file named by KVQ_SMOLLM2 is reported as missing, with its path.
    let missing = dir.join("missing.gguf");
    let out = kvq_env(
        &[
            "eval-model",
            "--key",
            KEY,
            "--value",
            VALUE,
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--span",
            "1..3",
            "--positions",
            "2",
        ],
        &[("KVQ_SMOLLM2", missing.to_str().unwrap())],
    );
    fails(&out, "missing.gguf");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not installed"));
}

/// `kvq quantize` of the DINOv2 capture's layer-0 keys with `backend` into `out`.
fn quantize_command(out: &Path, backend: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvq"));
    c.args([
        "quantize",
        "--kv",
        dinov2().to_str().unwrap(),
        "--tensor",
        "k",
    ])
    .args(["--layer", "0", "--scheme", KEY, "--backend", backend])
    .args(["-o", out.to_str().unwrap()]);
    c
}

fn quantize(out: &Path, backend: &str, env: &[(&str, &str)]) -> Output {
    quantize_command(out, backend)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn quantize_output_is_deterministic_and_atomic() {
    let dir = temp("quantize");
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    for path in [&a, &b] {
        let out = quantize(path, "reference", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // A failing run (layer out of range) leaves the existing file as it was.
    let before = std::fs::read(&a).unwrap();
    let out = kvq(&[
        "quantize",
        "--kv",
        dinov2().to_str().unwrap(),
        "--tensor",
        "k",
        "--layer",
        "99",
        "--scheme",
        KEY,
        "-o",
        a.to_str().unwrap(),
    ]);
    fails(&out, "--layer 99");
    assert_eq!(std::fs::read(&a).unwrap(), before);
    // A directory as the output: refused, one line, the directory untouched.
    fails(&quantize(&dir, "reference", &[]), "is a directory");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        2,
        "a temporary file was left"
    );
}

#[test]
fn empty_or_relative_cache_dir_still_compiles_host_code() {
    let dir = temp("cachedir");
    let want = {
        let path = dir.join("reference.safetensors");
        assert!(quantize(&path, "reference", &[]).status.success());
        std::fs::read(path).unwrap()
    };
    for cache in ["", "relative-kvq-cache"] {
        let path = dir.join("host.safetensors");
        let out = quantize_command(&path, "host")
            .current_dir(&dir)
            .env("KVQ_CACHE_DIR", cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "KVQ_CACHE_DIR={cache:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same tensors, bit for bit, as the reference wrote (the metadata names the backend).
        let got = std::fs::read(&path).unwrap();
        let (got, want) = (
            safetensors::SafeTensors::deserialize(&got).unwrap(),
            safetensors::SafeTensors::deserialize(&want).unwrap(),
        );
        for name in ["codes", "zero", "scale"] {
            assert_eq!(
                got.tensor(name).unwrap().data(),
                want.tensor(name).unwrap().data()
            );
        }
    }
    assert!(
        dir.join("relative-kvq-cache").is_dir(),
        "the relative cache was not used"
    );
}

#[test]
fn error_lines_repeat_no_cause() {
    let dir = temp("errors");
    let out = kvq(&[
        "eval",
        "--kv",
        dir.to_str().unwrap(),
        "--key",
        KEY,
        "--value",
        VALUE,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    fails(&out, "Is a directory");
    assert_eq!(stderr.matches("Is a directory").count(), 1, "{stderr}");
    let truncated = dir.join("cut.safetensors");
    std::fs::write(&truncated, [16u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
    let out = kvq(&[
        "eval",
        "--kv",
        truncated.to_str().unwrap(),
        "--key",
        KEY,
        "--value",
        VALUE,
    ]);
    fails(&out, "not a valid safetensors file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Invalid") && !stderr.contains("Error("),
        "{stderr}"
    );
}
