"""kvq's cache inside Hugging Face transformers, on SmolLM2-135M (the GGUF scripts/setup.sh
installs; transformers loads it with its own tokenizer): with nothing quantized it must generate
exactly what transformers' DynamicCache does; with CalibQuant's or KIVI's span quantized, the figures over
the study's positions must agree with kvq's own evaluation (the committed `kvq report`, which
`kvq eval-model` reproduces); and what it cannot serve must raise."""

import numpy as np
import pytest
import torch
from transformers import DynamicCache

import kvq
import kvq.transformers as kt
from schemes import CALIBQUANT, KIVI
from transformers_study import figures, full_precision, load, prompt_ids, reported, study


@pytest.fixture(scope="module")
def smollm2():
    return load()


@pytest.mark.parametrize("entry", study(), ids=lambda e: e["file"])
def test_full_precision_span_generates_what_dynamic_cache_does(smollm2, entry):
    tok, model = smollm2
    ids = prompt_ids(tok, entry)
    s0, s1 = entry["span"]
    x = torch.tensor([ids[:s1]])
    run = dict(max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        base = model.generate(x, past_key_values=DynamicCache(config=model.config), **run)
        cache = kt.VisualKvCache(model.config, CALIBQUANT, span=(s0, s0))
        got = model.generate(x, past_key_values=cache, **run)
    assert torch.equal(base.sequences, got.sequences)
    for a, b in zip(base.logits, got.logits):
        assert float((a - b).abs().max() / a.abs().max()) < 1e-4
    # Everything stayed in full precision, attended by kvq's kernels after the prefill.
    assert all(layer.span is None and layer.ready for layer in cache.layers)


@pytest.fixture(scope="module")
def harbour(smollm2):
    """The first study prompt's ids and transformers' full-precision logits over its positions."""
    tok, model = smollm2
    entry = study()[0]
    ids = prompt_ids(tok, entry)
    return entry, ids, full_precision(model, ids, entry)


# CalibQuant's 1-bit pair with calibration (channel keys and values, the block-free fast path)
# and KIVI's 2-bit pair (channel keys in groups of 32, token-axis values): different kernels.
@pytest.mark.parametrize(
    "scheme, smaller", [(CALIBQUANT, 14), (KIVI, 5)], ids=["calibquant", "kivi2"]
)
def test_quantized_span_agrees_with_kvqs_own_evaluation(smollm2, harbour, scheme, smaller):
    _, model = smollm2
    entry, ids, full = harbour
    s0, s1 = entry["span"]
    top1, kl, cache = figures(model, ids, entry, scheme, full)
    assert all(layer.span is not None and layer.span.tokens == s1 - s0 for layer in cache.layers)
    want = reported(scheme, 0)
    assert want["positions"] == entry["positions"]
    print(f"transformers + kvq: top-1 {top1:.4f}, KL {kl:.4f}; "
          f"kvq eval-model: top-1 {want['top1_agreement']:.4f}, KL {want['mean_kl']:.4f}")
    assert abs(top1 - want["top1_agreement"]) <= 0.01
    assert abs(kl - want["mean_kl"]) <= 0.1 * want["mean_kl"]
    # The span is stored at its codes' size (1 or 2 bits of 16) plus parameters: CalibQuant's
    # about a sixteenth of f16, KIVI's (parameters per 32 tokens or channels) about 0.19.
    span_f16 = 2 * len(cache.layers) * model.config.num_key_value_heads * (s1 - s0) * 64 * 2
    assert sum(layer.span.nbytes for layer in cache.layers) < span_f16 / smaller


def test_what_kvq_cannot_serve_is_refused(smollm2):
    tok, model = smollm2
    cache = kt.VisualKvCache(model.config, CALIBQUANT, span=(1, 3))
    two = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    with pytest.raises(ValueError, match="one sequence"):
        model(two, past_key_values=cache, use_cache=True)
    with pytest.raises(ValueError, match="start <= end"):
        kt.VisualKvCache(model.config, CALIBQUANT, span=(5, 2))
    with pytest.raises(ValueError, match="invalid scheme"):
        kt.VisualKvCache(model.config, "key(bits = 3)", span=(0, 1))
    cache = kt.VisualKvCache(model.config, CALIBQUANT, span=(1, 3))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]), past_key_values=cache, use_cache=True)
    with pytest.raises(NotImplementedError, match="beam"):
        cache.reorder_cache(torch.tensor([0]))
    # A padded mask after the span is refused, not attended differently, and the cache stays
    # as it was: the next good step gives what a cache that never saw the refusal gives.
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="causal"):
        with torch.no_grad():
            model(torch.tensor([[5]]), attention_mask=mask, past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 4
    fresh = kt.VisualKvCache(model.config, CALIBQUANT, span=(1, 3))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]), past_key_values=fresh, use_cache=True)
        want = model(torch.tensor([[5]]), past_key_values=fresh, use_cache=True).logits
        got = model(torch.tensor([[5]]), past_key_values=cache, use_cache=True).logits
    assert torch.equal(got, want)


def test_span_and_attention_bindings_check_their_inputs():
    scheme = kvq.CacheScheme(CALIBQUANT)
    attn = kvq.Attention(scheme, 64, 3)
    k = np.random.default_rng(1).standard_normal((3, 40, 64)).astype(np.float32)
    span = kvq.Span(k, k, scheme)
    q = np.ones((9, 64), dtype=np.float32)
    empty = np.zeros((3, 0, 64), dtype=np.float32)
    assert attn.attend(q, empty, empty, span).shape == (9, 64)
    with pytest.raises(ValueError, match="q_heads a positive multiple of 3"):
        attn.attend(q[:8], empty, empty, span)
    with pytest.raises(ValueError, match="fp_k has 2 kv heads"):
        attn.attend(q, k[:2], k[:2], span)
    with pytest.raises(ValueError, match="same shape"):
        attn.attend(q, k, np.ascontiguousarray(k[:, :5]), span)
    with pytest.raises(ValueError, match="same"):
        kvq.Span(k, np.ascontiguousarray(k[:, :10]), scheme)
