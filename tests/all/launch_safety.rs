//! The safe launch APIs check every buffer against the length the kernel's signature states:
//! a short buffer is a typed error and nothing runs (before, each of these let a kernel read or
//! write out of bounds). The CUDA launcher's check is in `compile_cli`
//! (`cuda_launch_check_refuses_a_short_buffer_from_the_compiled_manifest`).

use half::f16;
use kvq::attention::{HostAttention, SeqData};
use kvq::backend::{run_host, BackendError};
use kvq::{CacheScheme, Scheme};
use kvq_codegen::CodegenError;
use kvq_ir::ir::interp::{Arg, Buffer};
use kvq_ir::ir::{Access, Builder, ScalarType, SizeError, Special};
use kvq_ir::lower::attention::AttentionShape;
use kvq_ir::lower::{self, InputType, Schedule, ShapeClass};
use kvq_runtime::{AttentionKernel, ParamView, PartView, SeqView};

const KEY: &str = "bits = 2, axis = channel, group = 32, rule = minmax";
const PAIR: &str = "key(bits = 1, axis = channel, group = all, rule = shrink(0.5), params = f32), \
                    value(bits = 1, axis = channel, group = all, rule = shrink(0.3), params = f32), \
                    calibrate = 3";

/// The arguments of [`KEY`]'s quantize kernel for a `[heads, tokens, 64]` span, `codes`
/// `short` elements short.
fn quantize_args(heads: u32, tokens: u32, short: usize) -> Vec<Arg> {
    let (h, t) = (heads as usize, tokens as usize);
    let params = h * t.div_ceil(32) * 64;
    vec![
        Arg::Buffer(Buffer::F16(vec![f16::from_f32(0.25); h * t * 64])),
        Arg::Buffer(Buffer::U8(vec![7; h * t * 64 * 2 / 8 - short])),
        Arg::Buffer(Buffer::F16(vec![f16::ZERO; params])),
        Arg::Buffer(Buffer::F16(vec![f16::ZERO; params])),
        Arg::Buffer(Buffer::U32(vec![0])),
        Arg::U32(heads),
        Arg::U32(tokens),
    ]
}

#[test]
fn run_host_refuses_a_short_buffer_and_a_large_grid() {
    let scheme = Scheme::parse(KEY).unwrap();
    let shape = ShapeClass {
        head_dim: 64,
        input: InputType::F16,
    };
    let lowered = lower::quantize(&scheme, shape, &Schedule::host_default(&scheme, shape)).unwrap();
    let grid = lowered.launch.grid(2, 100, lowered.kernel.block_size) as u32;
    // One byte short: before, the kernel wrote the last code row's byte past the end.
    let mut args = quantize_args(2, 100, 1);
    let err = run_host(&lowered.kernel, &mut args, grid).unwrap_err();
    match &err {
        BackendError::Codegen(CodegenError::Size(SizeError::ShortBuffer {
            param,
            needed,
            found,
            ..
        })) => assert_eq!((param.as_str(), *needed, *found), ("codes", 3200, 3199)),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string().lines().count(), 1);
    assert!(
        matches!(&args[1], Arg::Buffer(Buffer::U8(c)) if c.iter().all(|&b| b == 7)),
        "nothing ran"
    );
    // Tokens larger than the buffers were made for: the same error.
    let mut args = quantize_args(2, 100, 0);
    args[6] = Arg::U32(101);
    assert!(matches!(
        run_host(&lowered.kernel, &mut args, grid),
        Err(BackendError::Codegen(CodegenError::Size(
            SizeError::ShortBuffer { .. }
        )))
    ));
    // More blocks than the launch rule gives.
    args[6] = Arg::U32(100);
    assert!(matches!(
        run_host(&lowered.kernel, &mut args, grid + 1),
        Err(BackendError::Codegen(CodegenError::Size(
            SizeError::GridTooLarge { .. }
        )))
    ));
    // The right sizes run.
    run_host(&lowered.kernel, &mut args, grid).unwrap();
}

#[test]
fn run_host_refuses_a_kernel_that_states_no_sizes() {
    let mut b = Builder::new("kvq_test_unsized", 32);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let i = b.special(Special::ThreadId);
    let one = b.f32(1.0);
    b.store(out, i, one);
    let kernel = b.finish();
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 1]))];
    let err = run_host(&kernel, &mut args, 1).unwrap_err();
    assert!(
        matches!(
            &err,
            BackendError::Codegen(CodegenError::Size(SizeError::Unstated { param, .. })) if param == "out"
        ),
        "{err:?}"
    );
}

/// A view of `s` with its first `codes` code bytes.
fn part(s: &kvq::reference::PackedSpan, codes: usize) -> PartView<'_> {
    PartView {
        scheme: s.scheme,
        tokens: s.shape.tokens,
        codes: &s.codes[..codes],
        params: ParamView::F32 {
            zero: &s.zero,
            scale: &s.scale,
        },
    }
}

/// A calibrated CalibQuant span of 70 tokens x 2 kv heads x 64, its kernels for 2 query heads
/// per kv head, and a query of 4 heads.
fn span() -> (
    HostAttention,
    kvq::reference::PackedSpan,
    kvq::reference::PackedSpan,
    Vec<f32>,
) {
    let pair = CacheScheme::parse(PAIR).unwrap();
    let x = kvq::attention::synthetic_kv(2, 70, 64, 5, 1.0).unwrap();
    let k = kvq_ir::reference::quantize(&x, &pair.key).unwrap();
    let v = kvq_ir::reference::quantize(&x, &pair.value).unwrap();
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 64,
        group: 2,
    };
    let attn = HostAttention::new(&pair, shape, None).unwrap();
    (attn, k, v, vec![0.1f32; 4 * 64])
}

#[test]
fn host_attention_refuses_a_truncated_span() {
    let (attn, k, v, q) = span();
    let seq = SeqData {
        q: &q,
        fp: None,
        span: Some((&k, &v)),
    };
    let mut args = attn.prepare(2, &[seq]).unwrap();
    attn.run(&mut args).unwrap();
    // Before, `AttentionArgs` took the codes as given and the kernels read past them.
    let mut cut = k.clone();
    cut.codes.truncate(cut.codes.len() / 2);
    let short = SeqData {
        span: Some((&cut, &v)),
        ..seq
    };
    let err = attn.prepare(2, &[short]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid schedule: sequence 0: span does not fit"
    );
    let mut cut = v.clone();
    cut.scale.pop();
    let short = SeqData {
        span: Some((&k, &cut)),
        ..seq
    };
    assert!(attn.attend(2, &[short]).is_err());
}

#[test]
fn attention_on_views_refuses_short_views() {
    let (attn, k, v, q) = span();
    let fp = vec![0.5f32; 2 * 3 * 64];
    let view = SeqView {
        q: &q,
        fp_tokens: 3,
        fp_k: &fp,
        fp_v: &fp,
        span: Some((part(&k, k.codes.len()), part(&v, v.codes.len()))),
    };
    let whole = AttentionKernel::attend(&attn, &[view]).unwrap();
    assert_eq!(whole[0].len(), 4 * 64);
    // Each field of the view, short: an error naming the buffer, never a read past its end.
    let short_fp = SeqView {
        fp_k: &fp[..fp.len() - 1],
        ..view
    };
    let err = AttentionKernel::attend(&attn, &[short_fp]).unwrap_err();
    assert!(
        err.contains("buffer `fp_k` holds 383 elements, the launch needs 384"),
        "{err}"
    );
    let short_codes = SeqView {
        span: Some((part(&k, k.codes.len() - 8), part(&v, v.codes.len()))),
        ..view
    };
    let err = AttentionKernel::attend(&attn, &[short_codes]).unwrap_err();
    assert!(err.contains("buffer `k_codes`"), "{err}");
    let short_q = SeqView {
        q: &q[..q.len() - 64],
        ..view
    };
    let err = AttentionKernel::attend(&attn, &[short_q]).unwrap_err();
    assert!(err.contains("not a whole number of kv heads"), "{err}");
    let more_tokens = SeqView {
        fp_tokens: 4,
        ..view
    };
    let err = AttentionKernel::attend(&attn, &[more_tokens]).unwrap_err();
    assert!(err.contains("buffer `fp_k`"), "{err}");
}
