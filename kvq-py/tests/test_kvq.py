"""The Python package against independent references: the command line's `kvq quantize
--backend host` on the vendored captures (bit for bit), SPEC.md section 3's formulas written
here in numpy, and the command line's messages for bad scheme text."""

import json
import os
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import kvq

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = [
    ROOT / "tests/data/dinov2s_astronaut_qkv_f16.safetensors",
    ROOT / "tests/data/smollm2_zen_qkv_f16.safetensors",
]
# One scheme of each kind: channel / token axis, group all / N, every rule, 1-8 bits,
# f16 / f32 parameters, msb / lsb order.
SCHEMES = [
    "bits = 1, axis = channel, group = all, rule = shrink(0.5)",
    "bits = 1, axis = channel, group = all, rule = shrink(0.3, center = mid), order = lsb",
    "bits = 1, axis = channel, group = all, rule = quantile(0.15)",
    "bits = 1, axis = channel, group = all, rule = mse",
    "bits = 2, axis = channel, group = 32, rule = minmax, params = f32, order = lsb",
    "bits = 2, axis = token, group = 32, rule = minmax",
    "bits = 4, axis = token, group = all, rule = minmax, params = f32",
    "bits = 8, axis = token, group = 64, rule = minmax",
]
DTYPES = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I32": np.int32}


def kvq_binary():
    """The command line built beside this package (the test command builds it first)."""
    if os.environ.get("KVQ_BIN"):
        return os.environ["KVQ_BIN"]
    for profile in ["debug", "release"]:
        path = ROOT / "target" / profile / "kvq"
        if path.exists():
            return str(path)
    pytest.fail("no kvq binary: build it (cargo build) or set KVQ_BIN")


def read_safetensors(path):
    """A safetensors file's tensors as numpy arrays (the format: a u64 header length, a JSON
    header of dtypes, shapes and byte ranges, then the data)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        raw = data[8 + n + start : 8 + n + end]
        out[name] = np.frombuffer(raw, dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def cli_quantize(capture, tensor, layer, scheme):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "q.safetensors"
        subprocess.run(
            [kvq_binary(), "quantize", "--kv", str(capture), "--tensor", tensor,
             "--layer", str(layer), "--scheme", scheme, "--backend", "host", "-o", str(out)],
            check=True, capture_output=True,
        )
        return read_safetensors(out)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name.split("_")[0])
def test_quantize_is_bit_identical_to_the_command_line(capture, scheme):
    tensors = read_safetensors(capture)
    s = kvq.Scheme(scheme)
    for tensor in ["k", "v"]:
        for layer in [0, 1]:
            x = np.ascontiguousarray(tensors[tensor][layer])
            codes, zero, scale = kvq.quantize(x, s)
            want = cli_quantize(capture, tensor, layer, scheme)
            assert codes.dtype == np.uint8 and codes.shape == want["codes"].shape
            assert np.array_equal(codes, want["codes"]), (scheme, tensor, layer)
            # Parameters bit for bit (f32 views of the stored values).
            assert np.array_equal(zero.view(np.uint32), want["zero"].view(np.uint32))
            assert np.array_equal(scale.view(np.uint32), want["scale"].view(np.uint32))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_backend_gives_the_same_bits(scheme):
    x = np.random.default_rng(7).standard_normal((3, 70, 64)).astype(np.float32)
    s = kvq.Scheme(scheme)
    outs = [kvq.quantize(x, s, backend=b) for b in ["host", "reference", "interp"]]
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def unpack(codes, bits, order):
    """SPEC.md section 3: codes packed 8 / bits to a byte, the first element in the most (msb)
    or least (lsb) significant bits."""
    per = 8 // bits
    shifts = np.arange(per) * bits
    if order == "msb":
        shifts = shifts[::-1]
    mask = (1 << bits) - 1
    out = (codes[..., None] >> shifts.astype(np.uint8)) & mask
    return out.reshape(*codes.shape[:-1], codes.shape[-1] * per).astype(np.float32)


def test_dequantize_follows_the_spec_formula():
    # 1-bit channel codes (msb first) and 2-bit token groups of 32 (lsb first), both checked
    # against x_hat = zero + scale * code in f32 with the parameters broadcast by SPEC's layout.
    x = np.random.default_rng(3).standard_normal((2, 50, 64)).astype(np.float16)
    for text, bits, order in [
        ("bits = 1, axis = channel, group = all, rule = minmax", 1, "msb"),
        ("bits = 2, axis = token, group = 32, rule = minmax, order = lsb", 2, "lsb"),
    ]:
        s = kvq.Scheme(text)
        codes, zero, scale = kvq.quantize(x, s)
        got = kvq.dequantize(codes, zero, scale, s)
        code = unpack(codes, bits, order)
        if "channel" in text:
            want = zero + scale * code  # [2, 1, 64] against [2, 50, 64]
        else:
            g = np.repeat(np.arange(2), 32)  # channel -> its group of 32
            want = zero[..., g] + scale[..., g] * code
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))
        for backend in ["reference", "interp"]:
            other = kvq.dequantize(codes, zero, scale, s, backend=backend)
            assert np.array_equal(other.view(np.uint32), got.view(np.uint32))


@pytest.mark.parametrize(
    "text", ["bits = 3, axis = channel", "bits = 1, axis = channel, group = all, rule = shrink(2)"]
)
def test_bad_scheme_text_raises_the_command_lines_message(text):
    with pytest.raises(ValueError) as e:
        kvq.Scheme(text)
    cli = subprocess.run(
        [kvq_binary(), "quantize", "--kv", str(CAPTURES[0]), "--tensor", "k", "--layer", "0",
         "--scheme", text, "-o", "/nonexistent/out.safetensors"],
        capture_output=True, text=True,
    )
    assert cli.returncode != 0
    assert cli.stderr.strip() == f"error: --scheme: {e.value}"
    assert "column" in str(e.value)


def test_cache_scheme():
    c = kvq.CacheScheme(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), "
        "value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3"
    )
    assert c.calibrate == 3.0
    assert c.key == kvq.Scheme("bits = 1, axis = channel, group = all, rule = shrink(0.5)")
    assert str(c.value).startswith("bits = 1, axis = channel, group = all, rule = shrink(0.3)")
    assert kvq.CacheScheme(str(c)) == c
    with pytest.raises(ValueError, match="calibrate"):
        kvq.CacheScheme("key(bits = 1, axis = channel, group = all, rule = minmax), calibrate = 3")


def test_bad_inputs_raise_the_named_exception():
    s = kvq.Scheme("bits = 2, axis = token, group = 32, rule = minmax")
    good = np.zeros((2, 4, 64), dtype=np.float16)
    with pytest.raises(TypeError, match="numpy array"):
        kvq.quantize(good.tolist(), s)
    with pytest.raises(TypeError, match="float16 or float32"):
        kvq.quantize(good.astype(np.int32), s)
    with pytest.raises(ValueError, match="3 dimensions"):
        kvq.quantize(good[0], s)
    with pytest.raises(ValueError, match="C-contiguous"):
        kvq.quantize(np.zeros((2, 4, 128), dtype=np.float16)[:, :, ::2], s)
    bad = good.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        kvq.quantize(bad, s)
    with pytest.raises(ValueError, match="head_dim"):
        kvq.quantize(np.zeros((2, 4, 60), dtype=np.float32), s)
    with pytest.raises(ValueError, match="backend"):
        kvq.quantize(good, s, backend="gpu")
    codes, zero, scale = kvq.quantize(good, s)
    with pytest.raises(ValueError, match="shape"):
        kvq.dequantize(codes, zero[:1], scale, s)
    with pytest.raises(TypeError, match="float32"):
        kvq.dequantize(codes, zero.astype(np.float64), scale, s)
    with pytest.raises(TypeError, match="uint8"):
        kvq.dequantize(codes.astype(np.int8), zero, scale, s)
    # Nothing above changed what a good call returns.
    again = kvq.quantize(good, s)
    assert all(np.array_equal(a, b) for a, b in zip(again, (codes, zero, scale)))
