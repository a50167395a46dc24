"""kvq from Python.

Schemes are parsed by kvq's one parser (the text the command line and ``#[kv_quant]`` take), and
``quantize`` / ``dequantize`` run kvq's generated host kernels (or the reference, or the IR
interpreter: ``backend=``), giving the codes and parameters of SPEC.md section 3 bit for bit::

    import numpy as np, kvq
    scheme = kvq.Scheme("bits = 1, axis = channel, group = all, rule = shrink(0.5)")
    codes, zero, scale = kvq.quantize(k.astype(np.float16), scheme)   # k: [kv_heads, tokens, head_dim]
    k_hat = kvq.dequantize(codes, zero, scale, scheme)


Inputs may be numpy arrays, CPU torch tensors (bfloat16 too) or other DLPack producers; the
kernels read them where they lie (no copy) when they are C-contiguous and 16-byte aligned.

``kvq.decode_attention`` runs the generated decode-attention kernels on arrays (one sequence or a
batch of ragged ones)::

    scheme = kvq.CacheScheme("key(...), value(...), calibrate = 3")
    span = (kvq.quantize(k, scheme.key), kvq.quantize(v, scheme.value))
    out = kvq.decode_attention(q, scheme, span=span, fp_k=k_recent, fp_v=v_recent)

``kvq.Span`` (a quantized span held by kvq) and ``kvq.Attention`` (the kernels of one scheme and
shape) serve ``kvq.transformers``, the cache that plugs into Hugging Face transformers (import it
explicitly: it needs torch and transformers).
"""

from ._kvq import Attention, CacheScheme, Scheme, Span, decode_attention, dequantize, quantize

__all__ = [
    "Attention",
    "CacheScheme",
    "Scheme",
    "Span",
    "decode_attention",
    "dequantize",
    "quantize",
]
