"""Torch tensors (bfloat16 included) and misaligned arrays into ``kvq.quantize``, bit for bit
against kvq's Rust reference on the same values; ``kvq.decode_attention`` on arrays, one
sequence and ragged batches with GQA, against SPEC.md section 4 written here in float64 numpy."""

import numpy as np
import pytest
import torch

import kvq
from schemes import CALIBQUANT, KIVI

SCHEMES = [
    "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
    "bits = 2, axis = token, group = 32, rule = minmax, order = lsb",
    "bits = 4, axis = channel, group = 32, rule = minmax, params = f32",
]


def same_bits(a, b):
    return all(np.array_equal(x.view(np.uint8), y.view(np.uint8)) for x, y in zip(a, b))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_torch_tensors_quantize_like_the_reference(scheme, dtype):
    t = torch.randn(3, 45, 64, generator=torch.Generator().manual_seed(5)).to(dtype)
    s = kvq.Scheme(scheme)
    got = kvq.quantize(t, s)
    # The reference on the very values the tensor holds (every input type widens exactly).
    want = kvq.quantize(t.float().numpy(), s, backend="reference")
    assert same_bits(got, want)
    # A tensor that needs grad is read the same way (detached, not copied).
    assert same_bits(kvq.quantize(t.clone().float().requires_grad_(), s), want)
    # DLPack producers other than torch go through numpy's from_dlpack.
    if dtype != torch.bfloat16:
        assert same_bits(kvq.quantize(np.from_dlpack(t), s), want)


def test_a_misaligned_array_is_copied_and_gives_the_same_bits():
    x = np.random.default_rng(2).standard_normal(2 * 30 * 64 + 1).astype(np.float16)
    view = x[1:].reshape(2, 30, 64)  # 2 bytes past a 16-byte boundary
    assert view.ctypes.data % 16 != 0 and view.flags.c_contiguous
    s = kvq.Scheme(SCHEMES[0])
    want = kvq.quantize(view.astype(np.float32), s, backend="reference")
    assert same_bits(kvq.quantize(view, s), want)


def test_bad_tensors_raise_the_named_exception():
    s = kvq.Scheme(SCHEMES[0])
    t = torch.zeros(2, 8, 64)
    with pytest.raises(ValueError, match="C-contiguous"):
        kvq.quantize(t.transpose(1, 2), s)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        kvq.quantize(t.to(torch.int32), s)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        kvq.quantize(t.double(), s)
    with pytest.raises(ValueError, match="is on meta"):
        kvq.quantize(torch.zeros(2, 8, 64, device="meta"), s)
    bad = t.clone().to(torch.bfloat16)
    bad[1, 3, 5] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        kvq.quantize(bad, s)
    with pytest.raises(TypeError, match="numpy array, a CPU torch tensor"):
        kvq.quantize("not an array", s)


def spec_attention(q, keys, values, calibrate):
    """SPEC.md section 4 in float64 for one sequence: ``q`` [q_heads, d]; ``keys`` / ``values``
    lists of (tensor [kv, n, d], quantized) segments in order; calibration of each quantized
    segment's logits per query head."""
    qh, d = q.shape
    kv = keys[0][0].shape[0]
    g = qh // kv
    out = np.zeros((qh, d))
    for h in range(qh):
        logits, vs = [], []
        for (k, quantized), (v, _) in zip(keys, values):
            s = k[h // g].astype(np.float64) @ q[h].astype(np.float64) / np.sqrt(d)
            if quantized and calibrate is not None and len(s):
                m, big = s.min(), s.max()
                if big - m > calibrate:
                    s = m + (s - m) * (big - m - calibrate) / (big - m)
            logits.append(s)
            vs.append(v[h // g].astype(np.float64))
        s = np.concatenate(logits)
        p = np.exp(s - s.max())
        p /= p.sum()
        out[h] = p @ np.concatenate(vs)
    return out


def dequantized(packed, scheme):
    return kvq.dequantize(*packed, scheme, backend="reference")


def assert_close(got, want):
    for h in range(want.shape[0]):
        rel = np.linalg.norm(got[h] - want[h]) / np.linalg.norm(want[h])
        assert rel < 1e-4, (h, rel)


@pytest.mark.parametrize("text", [CALIBQUANT, KIVI])
def test_decode_attention_on_arrays_follows_the_spec(text):
    rng = np.random.default_rng(9)
    scheme = kvq.CacheScheme(text)
    kv, g, d = 2, 4, 64
    # A ragged batch: span and fp lengths differ, one sequence has no span, one no fp tokens.
    lengths = [(150, 7), (0, 12), (97, 0)]
    q = rng.standard_normal((len(lengths), kv * g, d)).astype(np.float32) * 2
    spans, fp_k, fp_v, want = [], [], [], []
    for b, (n, m) in enumerate(lengths):
        k, v = (rng.standard_normal((kv, n + m, d)).astype(np.float32) for _ in range(2))
        k[:, :, 3] += 4  # an outlier channel, as real keys have
        segs_k, segs_v = [], []
        if n:
            pk = kvq.quantize(np.ascontiguousarray(k[:, :n]), scheme.key)
            pv = kvq.quantize(np.ascontiguousarray(v[:, :n]), scheme.value)
            spans.append((pk, pv) if b % 2 else kvq.Span.from_packed(pk, pv, scheme))
            segs_k.append((dequantized(pk, scheme.key), True))
            segs_v.append((dequantized(pv, scheme.value), True))
        else:
            spans.append(None)
        fk, fv = np.ascontiguousarray(k[:, n:]), np.ascontiguousarray(v[:, n:])
        fp_k.append(fk if m else None)
        fp_v.append(fv if m else None)
        segs_k.append((fk, False))
        segs_v.append((fv, False))
        want.append(spec_attention(q[b], segs_k, segs_v, scheme.calibrate))
    got = kvq.decode_attention(q, scheme, span=spans, fp_k=fp_k, fp_v=fp_v)
    assert got.shape == q.shape and got.dtype == np.float32
    for b in range(len(lengths)):
        assert_close(got[b], want[b])
    # One sequence alone gives the same as its batch row; torch fp tokens (bfloat16) are taken.
    one = kvq.decode_attention(q[0], scheme, span=spans[0], fp_k=fp_k[0], fp_v=fp_v[0])
    assert_close(one, want[0])
    tk, tv = torch.from_numpy(fp_k[1]).bfloat16(), torch.from_numpy(fp_v[1]).bfloat16()
    bf = kvq.decode_attention(q[1], scheme, fp_k=tk, fp_v=tv)
    assert_close(bf, spec_attention(q[1], [(tk.float().numpy(), False)], [(tv.float().numpy(), False)], None))


def test_decode_attention_refuses_what_it_cannot_attend():
    rng = np.random.default_rng(1)
    scheme = kvq.CacheScheme(CALIBQUANT)
    k = rng.standard_normal((2, 40, 64)).astype(np.float32)
    span = kvq.Span(k, k, scheme)
    q = np.ones((8, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="nothing to attend"):
        kvq.decode_attention(q, scheme)
    with pytest.raises(ValueError, match="do not share"):
        kvq.decode_attention(q[:7], scheme, span=span)
    with pytest.raises(ValueError, match="quantized under"):
        kvq.decode_attention(q, kvq.CacheScheme(KIVI), span=span)
    with pytest.raises(ValueError, match="list of 2 items"):
        kvq.decode_attention(np.ones((2, 8, 64), dtype=np.float32), scheme, span=[span])
    with pytest.raises(ValueError, match="go together"):
        kvq.decode_attention(q, scheme, span=span, fp_k=k)
    with pytest.raises(ValueError, match="span has 2 kv heads of head_dim 64"):
        kvq.decode_attention(np.ones((8, 32), dtype=np.float32), scheme, span=span)
    with pytest.raises(TypeError, match="float32"):
        kvq.decode_attention(q.astype(np.float16), scheme, span=span)
    codes, zero, scale = kvq.quantize(k, scheme.key)
    with pytest.raises(ValueError, match="shape"):
        kvq.decode_attention(q, scheme, span=((codes, zero[:1], scale), (codes, zero, scale)))
    # Nothing above changed what a good call returns.
    a = kvq.decode_attention(q, scheme, span=span)
    assert np.array_equal(a, kvq.decode_attention(q, scheme, span=span))
