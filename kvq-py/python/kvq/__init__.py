"""kvq from Python.

Schemes are parsed by kvq's one parser (the text the command line and ``#[kv_quant]`` take), and
``quantize`` / ``dequantize`` run kvq's generated host kernels (or the reference, or the IR
interpreter: ``backend=``), giving the codes and parameters of SPEC.md section 3 bit for bit::

    import numpy as np, kvq
    scheme = kvq.Scheme("bits = 1, axis = channel, group = all, rule = shrink(0.5)")
    codes, zero, scale = kvq.quantize(k.astype(np.float16), scheme)   # k: [kv_heads, tokens, head_dim]
    k_hat = kvq.dequantize(codes, zero, scale, scheme)


``kvq.Span`` (a quantized span held by kvq) and ``kvq.Attention`` (decode attention through the
generated kernels) serve ``kvq.transformers``, the cache that plugs into Hugging Face transformers
(import it explicitly: it needs torch and transformers).
"""

from ._kvq import Attention, CacheScheme, Scheme, Span, dequantize, quantize

__all__ = ["Attention", "CacheScheme", "Scheme", "Span", "dequantize", "quantize"]
