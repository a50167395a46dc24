//! `kvq compile` and `kvq quantize` as a user runs them: what they write, that the three backends
//! write the same bits (SPEC.md section 3 layout, checked independently), and clean one-line
//! failures. Every run disables the on-disk compile cache so the tests are hermetic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvq::backend::{self, Backend};
use kvq::{Axis, BitOrder, CacheScheme, Group, ParamType, Scheme, Tensor3};
use kvq_codegen::ptxas;
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_ir::reference::QuantError;
use kvq_ir::scheme::catalogue::CATALOGUE;
use kvq_runtime::KvFile;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;

use crate::fixtures::smollm2;

fn catalogue_text(name: &str) -> &'static str {
    CATALOGUE
        .iter()
        .find(|&&(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} is not in the catalogue"))
        .1
}

fn kvq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvq"))
        .args(args)
        .env("KVQ_CACHE", "off")
        .env_remove("KVQ_DUMP")
        .output()
        .unwrap()
}

fn assert_success(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts a clean failure: non-zero exit, nothing on stdout, one `error:` line, no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("kvq-compile-cli-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile(key: &str, value: &str, extra: &[&str], out: &Path) -> Output {
    let mut args = vec!["compile", "--key", key, "--value", value];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    kvq(&args)
}

fn manifest(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn names(values: &Value) -> Vec<&str> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect()
}

#[test]
fn compile_for_sm_80_writes_four_kernels_a_manifest_and_ptxas_reports() {
    let dir = temp_dir("sm_80");
    let (key, value) = (catalogue_text("calibquant_k"), catalogue_text("kivi2_v"));
    let stdout = assert_success(&compile(key, value, &["--target", "sm_80"], &dir));
    let m = manifest(&dir);
    assert_eq!(m["target"], "sm_80");
    assert_eq!(m["emit"], "ptx");
    assert_eq!(m["head_dim"], 128);
    assert_eq!(m["input"], "f16");
    let kernels = m["kernels"].as_array().unwrap();
    let roles: Vec<&str> = kernels
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "key_quantize",
            "key_dequantize",
            "value_quantize",
            "value_dequantize"
        ]
    );
    let ptxas = ptxas::find();
    for k in kernels {
        let role = k["role"].as_str().unwrap();
        let scheme = if role.starts_with("key") { key } else { value };
        assert_eq!(
            Scheme::parse(k["scheme"].as_str().unwrap()).unwrap(),
            Scheme::parse(scheme).unwrap(),
            "{role}"
        );
        let entry = &k["entry"];
        let name = entry["name"].as_str().unwrap();
        assert_eq!(entry["file"], format!("{name}.ptx"));
        let ptx = std::fs::read_to_string(dir.join(entry["file"].as_str().unwrap())).unwrap();
        assert!(ptx.contains(&format!(".entry {name}(")), "{role}");
        assert!(ptx.contains(".target sm_80"), "{role}");
        assert_eq!(entry["block_size"], k["schedule"]["block_size"], "{role}");
        let params = &entry["params"];
        if role.ends_with("_quantize") {
            assert_eq!(
                names(params),
                ["x", "codes", "zero", "scale", "status", "heads", "tokens"],
                "{role}"
            );
            assert_eq!(params[0]["elem"], "f16");
            assert_eq!(params[0]["access"], "read");
            assert_eq!(params[1]["elem"], "u8");
            for i in 1..5 {
                assert_eq!(params[i]["access"], "write", "{role} {i}");
            }
        } else {
            assert_eq!(
                names(params),
                ["codes", "zero", "scale", "out", "heads", "tokens"],
                "{role}"
            );
            assert_eq!(params[3]["elem"], "f32");
            assert_eq!(params[3]["access"], "write");
        }
        for p in params.as_array().unwrap() {
            let scalar = matches!(p["name"].as_str(), Some("heads" | "tokens"));
            assert_eq!(
                p["kind"],
                if scalar { "scalar" } else { "buffer" },
                "{role}"
            );
            if scalar {
                assert_eq!(p["type"], "u32", "{role}");
            }
        }
        match &ptxas {
            Some(_) => {
                assert_eq!(entry["ptxas"]["spill_stores"], 0, "{role}");
                assert_eq!(entry["ptxas"]["spill_loads"], 0, "{role}");
                assert!(entry["ptxas"]["registers"].as_u64().unwrap() > 0);
                let lines: Vec<&str> = stdout
                    .lines()
                    .filter(|l| l.starts_with(&format!("{name}: ptxas sm_80: ")))
                    .collect();
                assert_eq!(lines.len(), 1, "{stdout}");
                assert!(lines[0].contains(" 0 bytes spill stores"), "{}", lines[0]);
                assert!(lines[0].contains(" 0 bytes spill loads"), "{}", lines[0]);
            }
            None => assert!(entry["ptxas"].is_null()),
        }
    }
    let ptxas_lines = stdout.lines().filter(|l| l.contains(": ptxas ")).count();
    assert_eq!(ptxas_lines, if ptxas.is_some() { 4 } else { 0 }, "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("wrote 4 kernels and ") && last.ends_with("manifest.json"),
        "{last}"
    );
}

#[test]
fn compile_for_the_host_writes_llvm_ir() {
    let (key, value) = (catalogue_text("kivi2_k_lsb_f32"), catalogue_text("tok8"));
    for emit in [None, Some("llvm")] {
        let dir = temp_dir(&format!("host_{emit:?}"));
        let mut extra = vec!["--target", "host", "--head-dim", "64"];
        extra.extend(emit.iter().flat_map(|e| ["--emit", e]));
        let stdout = assert_success(&compile(key, value, &extra, &dir));
        assert!(!stdout.contains("ptxas"), "{stdout}");
        let m = manifest(&dir);
        assert_eq!(m["target"], "host");
        assert_eq!(m["emit"], "llvm");
        assert_eq!(m["head_dim"], 64);
        let kernels = m["kernels"].as_array().unwrap();
        assert_eq!(kernels.len(), 4);
        for k in kernels {
            let entry = &k["entry"];
            let name = entry["name"].as_str().unwrap();
            assert_eq!(entry["file"], format!("{name}.ll"));
            assert!(entry["ptxas"].is_null());
            let ll = std::fs::read_to_string(dir.join(format!("{name}.ll"))).unwrap();
            assert!(ll.contains("define "), "{name}");
            assert!(ll.contains(name), "{name}");
        }
        // The host schedule: one thread per block.
        assert_eq!(kernels[0]["schedule"]["block_size"], 1);
    }
}

/// A pair whose key and value share a scheme shares its kernels: each file is written once and
/// the manifest names it for both roles (this once failed half-way through moving the folder).
#[test]
fn compile_with_one_scheme_for_keys_and_values_writes_each_kernel_once() {
    let scheme = catalogue_text("quantile1");
    let dir = temp_dir("same_scheme");
    let stdout = assert_success(&compile(
        scheme,
        scheme,
        &["--target", "sm_90", "--emit", "ir"],
        &dir,
    ));
    assert!(stdout.contains("wrote 4 kernels"), "{stdout}");
    let m = manifest(&dir);
    let kernels = m["kernels"].as_array().unwrap();
    let files: Vec<&str> = kernels
        .iter()
        .map(|k| k["entry"]["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 4);
    assert_eq!((files[0], files[1]), (files[2], files[3]), "{files:?}");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut want = vec![
        files[0].to_string(),
        files[1].to_string(),
        "manifest.json".to_string(),
    ];
    want.sort();
    assert_eq!(on_disk, want);
    let parent = dir.parent().unwrap();
    let leftovers = std::fs::read_dir(parent)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("same_scheme.staging")
        })
        .count();
    assert_eq!(leftovers, 0);
}

/// `--fp` sets the row type of the attention kernels (a cache bundle of bf16 rows), and needs
/// `--group`.
#[test]
fn compile_fp_sets_the_attention_kernels_row_type() {
    let (key, value) = (
        catalogue_text("calibquant_k"),
        catalogue_text("calibquant_v"),
    );
    let dir = temp_dir("fp_bf16");
    let extra = [
        "--target",
        "sm_90",
        "--emit",
        "ir",
        "--input",
        "bf16",
        "--group",
        "4",
        "--calibrate",
        "3",
        "--fp",
        "bf16",
    ];
    assert_success(&compile(key, value, &extra, &dir));
    let m = manifest(&dir);
    let mut rows = 0;
    for k in m["kernels"].as_array().unwrap() {
        for p in k["entry"]["params"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap_or_default();
            if name == "fp_k" || name == "fp_v" {
                assert_eq!(p["elem"], "bf16", "{k}");
                rows += 1;
            }
        }
    }
    // stats and partial, keys and values.
    assert_eq!(rows, 4);
    let out = compile(
        key,
        value,
        &["--target", "sm_90", "--fp", "f16"],
        &temp_dir("fp_alone"),
    );
    assert_clean_failure(&out, "--group");
}

#[test]
fn compile_emit_ir_writes_the_kernel_text() {
    let dir = temp_dir("ir");
    let (key, value) = (catalogue_text("quantile1"), catalogue_text("tok4"));
    let extra = ["--target", "sm_90", "--emit", "ir", "--head-dim", "64"];
    assert_success(&compile(key, value, &extra, &dir));
    let m = manifest(&dir);
    assert_eq!(m["emit"], "ir");
    let kernels = m["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 4);
    // The same text the library prints for the same lowering.
    let shape = ShapeClass {
        head_dim: 64,
        input: InputType::F16,
    };
    let mut expected = Vec::new();
    for text in [key, value] {
        let scheme = Scheme::parse(text).unwrap();
        let schedule = Schedule::gpu_default(&scheme, shape);
        expected.push(lower::quantize(&scheme, shape, &schedule).unwrap().kernel);
        expected.push(lower::dequantize(&scheme, shape, &schedule).unwrap().kernel);
    }
    for (k, want) in kernels.iter().zip(&expected) {
        let name = k["entry"]["name"].as_str().unwrap();
        assert_eq!(name, want.name);
        assert_eq!(k["entry"]["file"], format!("{name}.kvqir"));
        let text = std::fs::read_to_string(dir.join(format!("{name}.kvqir"))).unwrap();
        assert!(text.starts_with(&format!("kernel {name}(")), "{name}");
        assert_eq!(text, kvq_ir::ir::print(want), "{name}");
    }
}

#[test]
fn compile_failures_are_one_clear_line() {
    let (key, value) = (catalogue_text("calibquant_k"), catalogue_text("kivi2_v"));
    let base = temp_dir("failures");

    let dir = base.join("host_ptx");
    let out = compile(key, value, &["--target", "host", "--emit", "ptx"], &dir);
    assert_clean_failure(&out, "--emit ptx needs a GPU target");
    assert!(!dir.exists(), "wrote {} before failing", dir.display());

    let bad = "bits = 3, axis = channel, group = all, rule = minmax";
    let out = compile(bad, value, &["--target", "sm_80"], &base.join("bad_key"));
    assert_clean_failure(&out, "--key");
    assert_clean_failure(&out, "`bits = 3` is not allowed");
    let unclosed = "bits = 1, axis = channel, rule = quantile(0.7";
    let out = compile(
        key,
        unclosed,
        &["--target", "sm_80"],
        &base.join("bad_value"),
    );
    assert_clean_failure(&out, "--value");

    // A scheme that parses but does not fit the head dimension: nothing is written.
    let dir = base.join("bad_shape");
    let out = compile(key, value, &["--target", "host", "--head-dim", "48"], &dir);
    assert_clean_failure(&out, "error: value scheme: ");
    assert_clean_failure(&out, "does not divide head_dim 48");
    assert!(!dir.exists(), "wrote {} before failing", dir.display());

    // An output directory that cannot be created: a path under a regular file.
    let file = base.join("regular_file");
    std::fs::write(&file, b"not a directory").unwrap();
    let out = compile(key, value, &["--target", "sm_80"], &file.join("out"));
    assert_clean_failure(&out, "cannot write");
    assert_clean_failure(&out, "regular_file/out");
    let out = compile(key, value, &["--target", "host"], &file);
    assert_clean_failure(&out, "is not a directory");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

const BACKENDS: [(Backend, &str); 3] = [
    (Backend::Reference, "reference"),
    (Backend::Interp, "interp"),
    (Backend::Host, "host"),
];

fn quantize_cli(kv: &Path, layer: &str, scheme: &str, backend: &str, out: &Path) -> Output {
    kvq(&[
        "quantize",
        "--kv",
        kv.to_str().unwrap(),
        "--tensor",
        "k",
        "--layer",
        layer,
        "--scheme",
        scheme,
        "--backend",
        backend,
        "-o",
        out.to_str().unwrap(),
    ])
}

/// One tensor of a `kvq quantize` output: dtype, shape and bytes.
fn tensor(st: &SafeTensors<'_>, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Code `j` of a packed row, per SPEC.md section 3 (`msb`: element j of a byte at bits
/// [8 - (j+1)b, 8 - jb); `lsb`: at bits [jb, (j+1)b)).
fn unpack(row: &[u8], j: usize, bits: usize, order: BitOrder) -> u8 {
    let per_byte = 8 / bits;
    let (byte, lane) = (row[j / per_byte], j % per_byte);
    let shift = match order {
        BitOrder::Msb => 8 - (lane + 1) * bits,
        BitOrder::Lsb => lane * bits,
    };
    ((byte as u32 >> shift) & ((1u32 << bits) - 1)) as u8
}

/// Checks one backend's output against SPEC.md sections 2-3, independently of kvq's code: the
/// layout (`params` is `[kv_heads, rows, cols]`), and every code recomputed from x and its
/// group's stored parameters.
fn check_spec(x: &Tensor3, scheme: &Scheme, codes: &[u8], params: [&[f32]; 2], shape: [usize; 3]) {
    let [zero, scale] = params;
    let s = x.shape();
    let [_, rows, cols] = shape;
    let bits = scheme.bits.width() as usize;
    let max_code = ((1u32 << bits) - 1) as f32;
    let row_bytes = s.dim * bits / 8;
    for h in 0..s.heads {
        for t in 0..s.tokens {
            let packed = &codes[(h * s.tokens + t) * row_bytes..][..row_bytes];
            for c in 0..s.dim {
                let (row, col) = match (scheme.axis, scheme.group) {
                    (Axis::Channel, Group::All) => (0, c),
                    (Axis::Channel, Group::Size(n)) => (t / n.get(), c),
                    (Axis::Token, Group::All) => (t, 0),
                    (Axis::Token, Group::Size(n)) => (t, c / n.get()),
                };
                assert!(row < rows && col < cols);
                let p = (h * rows + row) * cols + col;
                let (z, sc) = (zero[p], scale[p]);
                let want = if sc == 0.0 {
                    0
                } else {
                    ((x.at(h, t, c) - z) / sc)
                        .round_ties_even()
                        .clamp(0.0, max_code) as u8
                };
                let got = unpack(packed, c, bits, scheme.order);
                assert_eq!(got, want, "head {h}, token {t}, channel {c}");
            }
        }
    }
    if scheme.params == ParamType::F16 {
        for v in zero.iter().chain(scale) {
            assert_eq!(half::f16::from_f32(*v).to_f32().to_bits(), v.to_bits());
        }
    }
}

#[test]
fn quantize_backends_write_identical_spec_layout_files() {
    let kv = smollm2();
    let file = KvFile::load(&kv).unwrap();
    let x = &file.layers[1].k;
    let s = x.shape();
    assert_eq!((s.heads, s.tokens, s.dim), (3, 245, 64));
    let dir = temp_dir("quantize");
    // A quantile scheme, a token-axis scheme, and an lsb scheme with f32 parameters (and a
    // short last token group: 245 = 7 * 32 + 21).
    for (name, param_shape) in [
        ("quantile1", [3, 1, 64]),
        ("kivi2_v", [3, 245, 2]),
        ("kivi2_k_lsb_f32", [3, 8, 64]),
    ] {
        let text = catalogue_text(name);
        let scheme = Scheme::parse(text).unwrap();
        let reference = kvq::reference::quantize(x, &scheme).unwrap();
        let code_shape = vec![3, 245, 64 * scheme.bits.width() as usize / 8];
        let mut outputs = Vec::new();
        for (_, backend) in BACKENDS {
            let path = dir.join(format!("{name}_{backend}.safetensors"));
            let stdout = assert_success(&quantize_cli(&kv, "1", text, backend, &path));
            assert!(
                stdout.starts_with(&format!("{}: 3 x 245 x 64 -> ", path.display())),
                "{stdout}"
            );
            let bytes = std::fs::read(&path).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            let meta = meta.metadata().clone().unwrap();
            assert_eq!(meta["backend"], backend);
            assert_eq!(Scheme::parse(&meta["scheme"]).unwrap(), scheme);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let codes = tensor(&st, "codes");
            let zero = tensor(&st, "zero");
            let scale = tensor(&st, "scale");
            assert_eq!(
                (codes.0, &codes.1),
                (Dtype::U8, &code_shape),
                "{name} {backend}"
            );
            for p in [&zero, &scale] {
                assert_eq!((p.0, p.1.as_slice()), (Dtype::F32, &param_shape[..]));
            }
            outputs.push((backend, codes.2, zero.2, scale.2));
        }
        let (_, codes, zero, scale) = &outputs[0];
        for (backend, c, z, sc) in &outputs[1..] {
            assert!(c == codes, "{name}: {backend} codes differ from reference");
            assert!(z == zero, "{name}: {backend} zero differs from reference");
            assert!(
                sc == scale,
                "{name}: {backend} scale differs from reference"
            );
        }
        // The file holds what the library's reference computes, bit for bit.
        assert!(*codes == reference.codes, "{name}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&f32s(zero)), bits(&reference.zero), "{name}");
        assert_eq!(bits(&f32s(scale)), bits(&reference.scale), "{name}");
        check_spec(x, &scheme, codes, [&f32s(zero), &f32s(scale)], param_shape);
    }
}

/// `--schedule gpu` runs the GPU kernels (the cooperative lanes-over-channels layout for the
/// token-axis scheme, the per-column kernel for the channel-axis one) through the interpreter
/// and host code: the files equal the reference's bit for bit.
#[test]
fn quantize_runs_the_gpu_schedule_on_this_machine() {
    let kv = smollm2();
    let dir = temp_dir("quantize_gpu");
    for name in ["kivi2_v", "quantile1"] {
        let text = catalogue_text(name);
        let reference = dir.join(format!("{name}_reference.safetensors"));
        assert_success(&quantize_cli(&kv, "1", text, "reference", &reference));
        let want = std::fs::read(&reference).unwrap();
        let want = SafeTensors::deserialize(&want).unwrap();
        for (backend, target) in [("host", "sm_90"), ("interp", "sm_80")] {
            let path = dir.join(format!("{name}_{backend}_gpu.safetensors"));
            let out = kvq(&[
                "quantize",
                "--kv",
                kv.to_str().unwrap(),
                "--tensor",
                "k",
                "--layer",
                "1",
                "--scheme",
                text,
                "--backend",
                backend,
                "--schedule",
                "gpu",
                "--target",
                target,
                "-o",
                path.to_str().unwrap(),
            ]);
            assert_success(&out);
            let bytes = std::fs::read(&path).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            let meta = meta.metadata().clone().unwrap();
            assert_eq!(meta["schedule"], format!("gpu {target}"));
            let got = SafeTensors::deserialize(&bytes).unwrap();
            for t in ["codes", "zero", "scale"] {
                assert!(
                    tensor(&got, t) == tensor(&want, t),
                    "{name} {backend}: {t} differs from the reference"
                );
            }
        }
    }
    // A target without the GPU schedule, and a schedule for the reference: one-line errors.
    let path = dir.join("bad.safetensors");
    let base = [
        "quantize",
        "--kv",
        kv.to_str().unwrap(),
        "--tensor",
        "k",
        "--layer",
        "1",
        "--scheme",
        catalogue_text("kivi2_v"),
        "-o",
        path.to_str().unwrap(),
    ];
    for extra in [
        &[
            "--backend",
            "host",
            "--schedule",
            "host",
            "--target",
            "sm_90",
        ][..],
        &["--backend", "reference", "--schedule", "gpu"][..],
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let out = kvq(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!path.exists());
    }
}

#[test]
fn quantize_rejects_a_layer_out_of_range() {
    let dir = temp_dir("layer99");
    let scheme = catalogue_text("kivi2_v");
    for (_, backend) in BACKENDS {
        let out = dir.join(format!("{backend}.safetensors"));
        let run = quantize_cli(&smollm2(), "99", scheme, backend, &out);
        assert_clean_failure(&run, "--layer 99 is out of range: the file has 4 layers");
        assert!(!out.exists());
    }
}

/// Writes a K/V file by hand (as tests/all/cli.rs does): f32 q, k, v of one layer.
fn write_kv(path: &Path, heads: usize, tokens: usize, dim: usize, k: &[f32]) {
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let other: Vec<f32> = (0..heads * tokens * dim)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let shape = [1, heads, tokens, dim];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, values) in [("q", &other[..]), ("k", k), ("v", &other[..])] {
        let start = data.len();
        data.extend_from_slice(&bytes(values));
        header.insert(
            name.into(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [start, data.len()] }),
        );
    }
    let header = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

#[test]
fn quantize_rejects_non_finite_input_naming_its_position() {
    let dir = temp_dir("non_finite");
    let (heads, tokens, dim) = (2, 3, 8);
    let mut k: Vec<f32> = (0..heads * tokens * dim).map(|i| i as f32 * 0.25).collect();
    k[(tokens + 2) * dim + 5] = f32::NAN; // head 1, token 2, channel 5
    let kv = dir.join("nan.safetensors");
    write_kv(&kv, heads, tokens, dim, &k);
    let scheme = "bits = 2, axis = token, group = 4, rule = minmax";
    for (_, backend) in BACKENDS {
        let out = dir.join(format!("{backend}.safetensors"));
        let run = quantize_cli(&kv, "0", scheme, backend, &out);
        assert_clean_failure(&run, "non-finite value NaN");
        assert_clean_failure(&run, "head 1, token 2, channel 5");
        assert!(!out.exists());
    }
}

/// The CLI rejects non-finite values while loading the file; the kernels' own check (`status`)
/// is reached through the library. Every backend names the first bad element as the reference
/// does.
#[test]
fn backends_report_non_finite_input_like_the_reference() {
    let (heads, tokens, dim) = (2, 5, 8);
    let mut data: Vec<f32> = (0..heads * tokens * dim)
        .map(|i| (i as f32 * 0.61).cos())
        .collect();
    data[(tokens + 3) * dim + 6] = f32::INFINITY; // head 1, token 3, channel 6
    data[(tokens + 4) * dim + 1] = f32::NAN;
    let x = Tensor3::new([heads, tokens, dim], data).unwrap();
    for name in ["calibquant_k", "kivi2_k", "tok8"] {
        let scheme = Scheme::parse(catalogue_text(name)).unwrap();
        // tok8's group of 64 does not divide 8 channels; use the whole row instead.
        let scheme = if name == "tok8" {
            Scheme {
                group: Group::All,
                ..scheme
            }
        } else {
            scheme
        };
        for (backend, label) in BACKENDS {
            let err = backend::quantize(&x, InputType::F32, &scheme, backend)
                .expect_err("non-finite input quantized");
            match err {
                backend::BackendError::Quant(QuantError::NonFinite {
                    head,
                    token,
                    channel,
                    value,
                }) => {
                    assert_eq!((head, token, channel), (1, 3, 6), "{name} {label}");
                    assert_eq!(value, f32::INFINITY, "{name} {label}");
                }
                other => panic!("{name} {label}: {other}"),
            }
        }
    }
}

#[test]
fn kvq_dump_writes_ir_llvm_and_ptx_of_every_kernel() {
    let dir = std::env::temp_dir().join(format!("kvq-dump-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.join("out");
    let dump = dir.join("dump");
    let out = Command::new(env!("CARGO_BIN_EXE_kvq"))
        .args([
            "compile",
            "--key",
            catalogue_text("calibquant_k"),
            "--value",
            catalogue_text("kivi2_v"),
            "--target",
            "sm_80",
            "--head-dim",
            "64",
            "-o",
            out_dir.to_str().unwrap(),
        ])
        .env("KVQ_DUMP", &dump)
        .env_remove("KVQ_CACHE")
        .output()
        .unwrap();
    assert_success(&out);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    for k in manifest["kernels"].as_array().unwrap() {
        let name = k["entry"]["name"].as_str().unwrap();
        for ext in ["kvqir", "sm_80.ll", "sm_80.ptx"] {
            let path = dump.join(format!("{name}.{ext}"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                text.contains(name),
                "{} does not name its kernel",
                path.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_with_group_adds_the_attention_kernels() {
    let dir = temp_dir("attention");
    let (key, value) = (
        catalogue_text("calibquant_k"),
        catalogue_text("calibquant_v"),
    );
    let extra = ["--target", "sm_90", "--group", "4", "--calibrate", "3"];
    let stdout = assert_success(&compile(key, value, &extra, &dir));
    let m = manifest(&dir);
    let kernels = m["kernels"].as_array().unwrap();
    let roles: Vec<&str> = kernels
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles[4..],
        ["attention_stats", "attention_partial", "attention_combine"]
    );
    // Each states its grid: a block per (chunk, kv head) and per (sequence, query head).
    let grid = |i: usize| kernels[i]["entry"]["max_grid"].to_string();
    assert_eq!(grid(5), r#"{"product":[{"scalar":16},{"scalar":15}]}"#);
    assert_eq!(
        grid(6),
        r#"{"product":[{"scalar":5},{"scalar":4},{"const":4}]}"#
    );
    let pair = CacheScheme::parse(kernels[5]["scheme"].as_str().unwrap()).unwrap();
    assert_eq!(pair.calibrate.map(|d| d.get()), Some(3.0));
    // The kernels the CUDA runtime will load: bundle parsing accepts the new roles and rules.
    let bundle = kvq_runtime::cuda::Bundle::load(&dir).unwrap();
    assert_eq!(bundle.manifest.kernels.len(), 7);
    assert!(stdout.contains("wrote 7 kernels"), "{stdout}");
    // Without --group: the four quantize/dequantize kernels only; --calibrate needs --group.
    let plain = temp_dir("attention_plain");
    assert_success(&compile(key, value, &["--target", "sm_90"], &plain));
    assert_eq!(manifest(&plain)["kernels"].as_array().unwrap().len(), 4);
    let out = compile(
        key,
        value,
        &["--target", "sm_90", "--calibrate", "3"],
        &temp_dir("bad"),
    );
    assert!(!out.status.success());
}

/// The CUDA launcher's check (`KernelSignature::launch_grid`, which `CudaRuntime::launch` runs
/// before the driver call), on the signatures of a compiled bundle: exact buffers pass with the
/// launch rule's grid, a short one is a size error, and the attention kernels need their plan.
#[test]
fn cuda_launch_check_refuses_a_short_buffer_from_the_compiled_manifest() {
    use kvq_ir::ir::{PlanSize, PlanSizes, SizeError};
    use kvq_runtime::cuda::{ArgDesc, CudaError, Elem};
    let dir = temp_dir("cuda_sizes");
    let (key, value) = (
        catalogue_text("calibquant_k"),
        catalogue_text("calibquant_v"),
    );
    assert_success(&compile(
        key,
        value,
        &["--target", "sm_90", "--group", "4", "--head-dim", "64"],
        &dir,
    ));
    let bundle = kvq_runtime::cuda::Bundle::load(&dir).unwrap();
    let entry = |role: &str| {
        bundle
            .manifest
            .kernels
            .iter()
            .find(|k| k.role.name() == role)
            .unwrap()
            .signature()
    };
    let buf = |elem, len, writable| ArgDesc::Buffer {
        elem,
        len,
        writable,
    };
    // CalibQuant keys: 1 bit, one (zero, scale) per (head, channel); 2 heads x 100 tokens x 64.
    let quantize = entry("key_quantize");
    let args = |codes: usize| {
        vec![
            buf(Elem::F16, 2 * 100 * 64, false),
            buf(Elem::U8, codes, true),
            buf(Elem::F16, 2 * 64, true),
            buf(Elem::F16, 2 * 64, true),
            buf(Elem::U32, 1, true),
            ArgDesc::U32(2),
            ArgDesc::U32(100),
        ]
    };
    let scheme = Scheme::parse(key).unwrap();
    let shape = ShapeClass {
        head_dim: 64,
        input: InputType::F16,
    };
    let lowered = lower::quantize(&scheme, shape, &Schedule::gpu_default(&scheme, shape)).unwrap();
    let grid = lowered.launch.grid(2, 100, lowered.kernel.block_size);
    assert_eq!(
        u64::from(quantize.launch_grid(&args(1600), None).unwrap()),
        grid
    );
    let err = quantize.launch_grid(&args(1599), None).unwrap_err();
    assert!(
        matches!(&err, CudaError::Size(SizeError::ShortBuffer { param, needed: 1600, found: 1599, .. }) if param == "codes"),
        "{err}"
    );
    assert_eq!(err.to_string().lines().count(), 1);
    // `partial` reads the batch through its plan: no plan, no launch.
    struct Plan([u64; 7]);
    impl PlanSizes for Plan {
        fn plan_size(&self, size: PlanSize) -> u64 {
            self.0[PlanSize::ALL.iter().position(|&s| s == size).unwrap()]
        }
    }
    let partial = entry("attention_partial");
    let (kv, chunks) = (2u32, 3usize);
    let slots = chunks * 2 * 4;
    let span = 100;
    let args = |k_codes: usize| {
        vec![
            buf(Elem::F32, 8 * 64, false),
            buf(Elem::U32, 10, false),
            buf(Elem::U32, chunks, false),
            buf(Elem::F32, 1, false),
            buf(Elem::F32, 1, false),
            buf(Elem::U8, k_codes, false),
            buf(Elem::F16, 2 * 64, false),
            buf(Elem::F16, 2 * 64, false),
            buf(Elem::U8, 2 * span * 8, false),
            buf(Elem::F16, 2 * 64, false),
            buf(Elem::F16, 2 * 64, false),
            buf(Elem::F32, slots * 2, false),
            buf(Elem::F32, 1, false),
            buf(Elem::F32, slots * 2, true),
            buf(Elem::F32, slots * 64, true),
            ArgDesc::U32(kv),
            ArgDesc::U32(chunks as u32),
            ArgDesc::U32(64),
        ]
    };
    let plan = Plan([1, 3, 0, 2 * 100 * 8, 128, 2 * 100 * 8, 128]);
    assert!(matches!(
        partial.launch_grid(&args(1600), None),
        Err(CudaError::Size(SizeError::NoPlan))
    ));
    assert_eq!(partial.launch_grid(&args(1600), Some(&plan)).unwrap(), 6);
    assert!(matches!(
        partial.launch_grid(&args(1599), Some(&plan)),
        Err(CudaError::Size(SizeError::ShortBuffer { ref param, .. })) if param == "k_codes"
    ));
}
