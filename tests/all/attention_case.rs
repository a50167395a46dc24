//! `kvq attention-case` files are what `kvq-gpu-check --attention` runs on the GPU: here the
//! interpreter plays the GPU, running the named kernels on the file's buffers (taken by
//! parameter name, outputs sized from the metadata, as kvq-gpu-check does) and reproducing the
//! file's `expected` outputs.

use std::collections::HashMap;
use std::process::Command;

use kvq::lower::attention::{attention, AttentionSchedule, AttentionShape};
use kvq::metrics::max_head_deviation;
use kvq::CacheScheme;
use kvq_ir::ir::interp::{self, Arg, Buffer};
use kvq_ir::ir::{Kernel, Param};
use safetensors::{Dtype, SafeTensors};

fn write_case(name: &str, extra: &[&str]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "kvq-case-{}-{name}.safetensors",
        std::process::id()
    ));
    let mut args = vec![
        "attention-case",
        "--key",
        "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
        "--value",
        "bits = 2, axis = token, group = 32, rule = minmax",
        "--head-dim",
        "64",
        "--kv-heads",
        "2",
        "--group",
        "3",
        "--span-tokens",
        "300",
        "--fp-tokens",
        "9",
        "-o",
    ];
    args.push(path.to_str().unwrap());
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_kvq"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn buffer(dtype: Dtype, data: &[u8]) -> Buffer {
    match dtype {
        Dtype::U8 => Buffer::U8(data.to_vec()),
        Dtype::U32 => Buffer::U32(
            data.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        Dtype::F16 => Buffer::F16(
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        Dtype::F32 => Buffer::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        other => panic!("dtype {other:?}"),
    }
}

/// Runs the case's kernels with the interpreter; returns (outputs, expected, head_dim).
fn replay(path: &std::path::Path) -> (Vec<f32>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let num = |k: &str| meta[k].parse::<usize>().unwrap();
    let scheme = CacheScheme::parse(&meta["scheme"]).unwrap();
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: num("head_dim") as u32,
        group: num("group") as u32,
    };
    let schedule = AttentionSchedule::gpu_default(&scheme, shape);
    let kernels = attention(&scheme, shape, &schedule).unwrap();
    let list: Vec<&Kernel> = kernels.all().collect();
    let names: Vec<&str> = list.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(meta["kernels"], names.join(","));
    let mut buffers: HashMap<String, Buffer> = HashMap::new();
    let mut expected = Vec::new();
    for (name, t) in st.tensors() {
        match buffer(t.dtype(), t.data()) {
            Buffer::F32(v) if name == "expected" => expected = v,
            b => {
                buffers.insert(name, b);
            }
        }
    }
    let (kv, chunks, batch, g, d) = (
        num("kv_heads"),
        num("chunks"),
        num("batch"),
        num("group"),
        num("head_dim"),
    );
    let slots = chunks * kv * g;
    for (name, len) in [
        ("stats", slots * 2),
        ("span_logits", slots * num("chunk")),
        ("part_ml", slots * 2),
        ("part_acc", slots * d),
        ("out", batch * kv * g * d),
    ] {
        buffers
            .entry(name.to_string())
            .or_insert(Buffer::F32(vec![0.0; len]));
    }
    let sizes = HashMap::from([
        ("kv_heads", kv),
        ("chunks", chunks),
        ("batch", batch),
        ("span_chunk", num("span_chunk")),
    ]);
    for k in list {
        let mut args: Vec<Arg> = k
            .params
            .iter()
            .map(|p| match p {
                Param::Buffer { name, .. } => Arg::Buffer(buffers.remove(name).unwrap()),
                Param::Scalar { name, .. } => Arg::U32(sizes[name.as_str()] as u32),
            })
            .collect();
        let blocks = if k.name.contains("combine") {
            schedule.combine_blocks((batch * kv * g) as u64)
        } else {
            schedule.item_blocks((chunks * kv) as u64)
        } as u32;
        kvq_ir::ir::verify(k).unwrap();
        interp::run(k, &mut args, blocks).unwrap();
        for (p, a) in k.params.iter().zip(args) {
            if let (Param::Buffer { name, .. }, Arg::Buffer(b)) = (p, a) {
                buffers.insert(name.clone(), b);
            }
        }
    }
    let Some(Buffer::F32(out)) = buffers.remove("out") else {
        panic!("no out")
    };
    (out, expected)
}

#[test]
fn attention_cases_replay_to_their_expected_outputs() {
    for (name, extra) in [
        ("plain", vec!["--batch", "2"]),
        (
            "calibrated_shared",
            vec!["--batch", "3", "--calibrate", "3", "--share-kv"],
        ),
    ] {
        let path = write_case(name, &extra);
        let (out, expected) = replay(&path);
        let dev = max_head_deviation(&out, &expected, 64);
        assert!(dev <= 1e-4, "{name}: deviation {dev:e}");
        // Not a vacuous comparison: the outputs are attention outputs, not zeros.
        assert!(expected.iter().any(|&x| x.abs() > 1e-3), "{name}");
        let _ = std::fs::remove_file(path);
    }
}
