#!/usr/bin/env python3
"""Measured kernel times (kvq-gpu-check's results.md) beside the times `kvq profile` predicted
for the same kernels and shapes (predicted/<pair>.<heads>x<tokens>.<gpu>.json, written by
`scripts/gpu-check.sh prepare`), so that the cost model can be corrected.

Usage: measured_vs_predicted.py RESULTS_MD PREDICTED_DIR  (prints a markdown table)
Standard library only: it runs on the GPU machine.
"""
import glob
import json
import os
import re
import sys


def gpu_of(device: str) -> str:
    for key, name in (("H200", "h200"), ("H100", "h100"), ("A100", "a100")):
        if key in device:
            return name
    return "h100"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    results, predicted_dir = sys.argv[1], sys.argv[2]
    if not os.path.isfile(results):
        print(f"no {results}: kvq-gpu-check measured nothing, so there is nothing to compare")
        return 0
    with open(results, encoding="utf-8") as f:
        lines = f.read().splitlines()
    device = lines[0].removeprefix("device: ") if lines else "?"
    gpu = gpu_of(device)
    predicted = {}
    for path in glob.glob(os.path.join(predicted_dir, f"*.{gpu}.json")):
        shape = path.rsplit(".", 2)[0].rsplit(".", 1)[1]
        with open(path, encoding="utf-8") as f:
            for k in json.load(f)["kernels"]:
                predicted[(k["name"], shape)] = k
    row = re.compile(r"^\| (kvq_\S+) \| (\S+) \| (\d+) x (\d+) \| (yes|no) \| ([0-9.]+) \|")
    print(f"device: {device}; predicted by `kvq profile --gpu {gpu}` (a model, not a measurement)\n")
    print("| kernel | heads x tokens | measured µs | predicted µs | predicted bound | measured / predicted |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    missing = 0
    for line in lines:
        m = row.match(line)
        if not m:
            continue
        name, _, heads, tokens, _, micros = m.groups()
        p = predicted.get((name, f"{heads}x{tokens}"))
        if p is None:
            missing += 1
            continue
        measured = float(micros)
        print(
            f"| {name} | {heads} x {tokens} | {measured:.2f} | {p['predicted_us']:.2f} | "
            f"{p['predicted_bound']} | {measured / p['predicted_us']:.2f} |"
        )
    if missing:
        print(f"\n{missing} measured kernels had no prediction")
    attention_rows(lines, predicted_dir, gpu)
    return 0


def attention_rows(lines, predicted_dir, gpu):
    """Attention cases (kvq-gpu-check's per-kernel times) beside `kvq profile --attention`'s
    predictions for the same span and batch (predicted/attention.<span>x<batch>.<gpu>.json)."""
    row = re.compile(
        r"^\| (\d+) x \((\d+) span \+ (\d+) fp\) tok, (\d+) kv x g(\d+) \| \S+ \| (yes|no) \| "
        r"([0-9.]+) \| ([^|]*?)(?: \| ([0-9.]+))? \|$"
    )
    out = []
    for line in lines:
        m = row.match(line)
        if not m:
            continue
        batch, span, _, _, _, _, total, per_kernel, back_to_back = m.groups()
        path = os.path.join(predicted_dir, f"attention.{span}x{batch}.{gpu}.json")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        predicted = {
            k["role"].split()[-1]: k["predicted_us"]
            for k in report["kernels"]
            if k["role"].startswith("attention")
        }
        for part in per_kernel.split(", "):
            role, micros = part.rsplit(" ", 1)
            p = predicted.get(role)
            if p:
                out.append(f"| {role} | {span} x {batch} | {float(micros):.2f} | {p:.2f} | {float(micros) / p:.2f} |")
        p = report["attention"]["predicted_us"]
        out.append(f"| all (sum) | {span} x {batch} | {float(total):.2f} | {p:.2f} | {float(total) / p:.2f} |")
        if back_to_back:
            # The model's launch constant is one launch timed alone; back to back the launches
            # overlap the kernels before them.
            b2b = float(back_to_back)
            out.append(f"| all, back to back | {span} x {batch} | {b2b:.2f} | {p:.2f} | {b2b / p:.2f} |")
    if out:
        print("\n| attention kernel | span x batch | measured µs | predicted µs | measured / predicted |")
        print("| --- | --- | ---: | ---: | ---: |")
        print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
