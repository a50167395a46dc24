#!/usr/bin/env bash
# The README's decode-attention table: the 1-bit CalibQuant pair with calibration (d = 3), 8 kv /
# 32 query heads, head_dim 128, 64 full-precision tokens a sequence, sm_90 with H100 parameters,
# as predicted by the cost model (`kvq profile --attention --only-attention`) at every span and
# batch of the table. Usage: scripts/profile_attention_table.sh [KVQ_BINARY]  (prints markdown)
set -euo pipefail
kvq="${1:-target/release/kvq}"
key="bits = 1, axis = channel, group = all, rule = shrink(0.5)"
value="bits = 1, axis = channel, group = all, rule = shrink(0.3)"
echo "| span | batch | span chunk | predicted kvq µs (stats + partial + combine) | bound: codes bytes / bandwidth µs | predicted SDPA bf16 µs | bound / kvq | SDPA / kvq |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for span in 4096 16384 65536; do
    for batch in 1 4 16; do
        "$kvq" profile --key "$key" --value "$value" --target sm_90 --gpu h100 --attention \
            --calibrate 3 --only-attention --kv-heads 8 --group 4 --head-dim 128 \
            --tokens "$span" --batch "$batch" --fp-tokens 64 --json |
            python3 -c '
import json, sys
span, batch = int(sys.argv[1]), int(sys.argv[2])
j = json.load(sys.stdin)
us = {k["role"]: k["predicted_us"] for k in j["kernels"]}
grid = {k["role"]: k["grid"] for k in j["kernels"]}["attention partial"]
kv, fp_blocks = 8, 64 // 16
chunk = span * kv * batch // (grid - fp_blocks * kv * batch)
kvq = j["attention"]["predicted_us"]
# 1-bit keys and values at head_dim 128: 16 bytes each a token and kv head.
dram = float(next(p["value"] for p in j["params"] if p["name"] == "dram_bytes_per_s"))
bound = batch * kv * span * 32 / dram * 1e6
sdpa = j["sdpa_bf16"]["predicted_bound_us"]
parts = " + ".join("%.1f" % us[r] for r in ("attention stats", "attention partial", "attention combine"))
name = lambda n: "%dk" % (n // 1024)
print("| %s | %d | %d | %.1f (%s) | %.2f | %.1f | %.0f%% | %.2f |" % (
    name(span), batch, chunk, kvq, parts, bound, sdpa, 100 * bound / kvq, sdpa / kvq))
' "$span" "$batch"
    done
done
