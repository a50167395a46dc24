"""kvq's visual KV cache inside Hugging Face transformers (5.x).

``VisualKvCache(config, scheme, span=(s0, s1))`` is a ``transformers`` ``Cache``: every layer keeps
its keys and values in full precision until a forward pass makes the span ``s0..s1`` complete;
that pass still attends in full precision (it is the prefill), and the layer then quantizes its
span once with kvq's generated kernels (``kvq.Span``) and keeps only the full-precision prefix and
suffix beside it. Every later attention of the layer runs through kvq's generated decode-attention
kernels (``kvq.Attention``) over ``[prefix | quantized span | suffix]``, with the scheme's
calibration, query heads sharing their kv head's codes (GQA without copies). Importing this module
registers that attention function as ``"kvq"``::

    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, attn_implementation="kvq")
    cache = kvq.transformers.VisualKvCache(model.config, "key(...), value(...), calibrate = 3", span=(s0, s1))
    out = model.generate(ids, past_key_values=cache, max_new_tokens=64)

What kvq cannot serve is refused with a ``ValueError`` or ``NotImplementedError``, never computed
differently: a batch of more than one sequence (padding included), a mask that is not plain
causal, sliding-window layers, dropout, a softmax scale other than ``1/sqrt(head_dim)``, beam
search (cache reordering), cropping. Under ``attn_implementation="kvq"``, a cache that is not a
``VisualKvCache`` (or a forward before the span is complete) attends with PyTorch's SDPA.
"""

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import _kvq

__all__ = ["VisualKvCache", "kvq_attention"]


def _numpy(t):
    """A float32, C-contiguous numpy view (or copy) of a CPU tensor."""
    return t.detach().to(torch.float32).contiguous().numpy()


class _Layer(CacheLayerMixin):
    """One layer of a ``VisualKvCache``. Before the span is quantized, ``keys`` / ``values`` hold
    every token; after, only the full-precision ones (prefix, then suffix), ``span`` the rest."""

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, owner):
        super().__init__()
        self.owner = owner
        self.span = None
        self.ready = False

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if key_states.shape[0] != 1:
            raise ValueError(
                f"kvq's VisualKvCache holds one sequence; this batch has {key_states.shape[0]}"
            )
        if key_states.device.type != "cpu":
            raise ValueError("kvq's VisualKvCache runs on the CPU (kvq's host kernels)")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        if self.ready:
            # The attention function finds this layer through the new keys it receives.
            key_states._kvq_layer = self
            return key_states, value_states
        s0, s1 = self.owner.span
        if self.keys.shape[-2] < s1:
            return self.keys, self.values
        # This forward completes the span: it attends in full precision over everything, and
        # the span is quantized once for every later forward.
        keys, values = self.keys, self.values
        if s1 > s0:
            self.span = _kvq.Span(
                _numpy(keys[0, :, s0:s1]), _numpy(values[0, :, s0:s1]), self.owner.scheme
            )
            self.keys = torch.cat([keys[..., :s0, :], keys[..., s1:, :]], dim=-2)
            self.values = torch.cat([values[..., :s0, :], values[..., s1:, :]], dim=-2)
        self.ready = True
        return keys, values

    def span_tokens(self):
        return 0 if self.span is None else self.span.tokens

    def undo(self, tokens):
        """Drops the last ``tokens`` full-precision tokens: those of a forward whose attention was
        refused, so that the cache is as it was before that forward."""
        self.keys = self.keys[..., : self.keys.shape[-2] - tokens, :]
        self.values = self.values[..., : self.values.shape[-2] - tokens, :]

    def get_seq_length(self):
        if not self.is_initialized:
            return 0
        return self.keys.shape[-2] + self.span_tokens()

    def get_mask_sizes(self, query_length):
        return self.get_seq_length() + query_length, 0

    def get_max_length(self):
        return -1

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("kvq's VisualKvCache does not reorder (no beam search)")

    def crop(self, tokens_to_remove):
        raise NotImplementedError("kvq's VisualKvCache cannot be cropped")

    def batch_repeat_interleave(self, repeats):
        raise NotImplementedError("kvq's VisualKvCache holds one sequence")

    def batch_select_indices(self, indices):
        raise NotImplementedError("kvq's VisualKvCache holds one sequence")

    def reset(self):
        self.keys = self.values = self.span = None
        self.ready = False
        self.is_initialized = False


class VisualKvCache(Cache):
    """A ``transformers`` cache whose visual span ``span = (s0, s1)`` (token positions of the
    prompt) is quantized once by kvq under ``scheme`` (a ``kvq.CacheScheme`` or its text), every
    later attention running through kvq's generated kernels. ``span=(s, s)`` quantizes nothing:
    everything stays in full precision, still attended by kvq's kernels after the prefill."""

    def __init__(self, config, scheme, span):
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            layer_types = getattr(config, "layer_types", None) or []
            if any(t != "full_attention" for t in layer_types) or not layer_types:
                raise NotImplementedError("kvq's VisualKvCache has no sliding-window layers")
        self.scheme = scheme if isinstance(scheme, _kvq.CacheScheme) else _kvq.CacheScheme(scheme)
        s0, s1 = (int(x) for x in span)
        if not 0 <= s0 <= s1:
            raise ValueError(f"span {span}: need 0 <= start <= end")
        self.span = (s0, s1)
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        if heads % kv_heads != 0:
            raise ValueError(f"{heads} query heads do not group over {kv_heads} kv heads")
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.attention = _kvq.Attention(self.scheme, self.head_dim, heads // kv_heads)
        super().__init__(layers=[_Layer(self) for _ in range(config.num_hidden_layers)])

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("kvq's VisualKvCache does not reorder (no beam search)")

    def nbytes(self):
        """Bytes kvq stores: the quantized spans' codes and parameters, and the full-precision
        tokens at the model's dtype."""
        total = 0
        for layer in self.layers:
            if layer.span is not None:
                total += layer.span.nbytes
            if layer.is_initialized:
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total


def _check_causal(mask, q_len, kv_len):
    """Refuses any mask but plain causal visibility for one sequence (query i sees kv positions
    up to kv_len - q_len + i)."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        mask = mask == 0
    if mask.shape[0] != 1 or mask.shape[-2] != q_len or mask.shape[-1] != kv_len:
        raise ValueError(f"kvq attention: a mask of shape {tuple(mask.shape)} is not one sequence's")
    rows = torch.arange(q_len).unsqueeze(1) + (kv_len - q_len)
    causal = torch.arange(kv_len).unsqueeze(0) <= rows
    if not torch.equal(mask.reshape(-1, q_len, kv_len)[0].cpu(), causal):
        raise ValueError("kvq attention: only a plain causal mask (no padding) is supported")


def kvq_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``"kvq"`` attention function: kvq's generated kernels where the cache is a
    ``VisualKvCache`` past its span, PyTorch's SDPA elsewhere."""
    layer = getattr(key, "_kvq_layer", None)
    if layer is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    try:
        return _attend(layer, query, attention_mask, scaling, dropout)
    except Exception:
        # What this forward appended goes; every refusal (mask, scale, dropout) comes from the
        # first layer, before any other layer has appended anything, so the cache is unchanged.
        layer.undo(query.shape[2])
        raise


def _attend(layer, query, attention_mask, scaling, dropout):
    batch, heads, q_len, head_dim = query.shape
    if dropout != 0.0:
        raise NotImplementedError("kvq attention has no dropout")
    if scaling is not None and abs(scaling - head_dim**-0.5) > 1e-12 * head_dim**-0.5:
        raise NotImplementedError(f"kvq attention scales by 1/sqrt(head_dim), not {scaling}")
    fp_total = layer.keys.shape[-2]
    _check_causal(attention_mask, q_len, fp_total + layer.span_tokens())
    outs = []
    for i in range(q_len):
        # Query i sees the full-precision tokens up to its own position (the last q_len are new).
        seen = fp_total - (q_len - 1 - i)
        out = layer.owner.attention.attend(
            _numpy(query[0, :, i]),
            _numpy(layer.keys[0, :, :seen]),
            _numpy(layer.values[0, :, :seen]),
            layer.span,
        )
        outs.append(torch.from_numpy(out))
    # [batch, q_len, heads, head_dim], as transformers' attention functions return.
    return torch.stack(outs, dim=0).unsqueeze(0).to(query.dtype), None


AttentionInterface.register("kvq", kvq_attention)
AttentionMaskInterface.register("kvq", sdpa_mask)
