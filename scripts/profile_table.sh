#!/usr/bin/env bash
# The README's `kvq profile` table: every catalogue scheme's GPU quantize and dequantize kernels
# (sm_90, H100 parameters, 8 kv heads x 16,384 tokens x head_dim 128, f16 input), as predicted by
# the cost model. Usage: scripts/profile_table.sh [KVQ_BINARY]  (prints markdown)
set -euo pipefail
kvq="${1:-target/release/kvq}"
schemes=(
    "calibquant_k|bits = 1, axis = channel, group = all, rule = shrink(0.5)"
    "calibquant_mid_lsb|bits = 1, axis = channel, group = all, rule = shrink(0.5, center = mid), order = lsb"
    "quantile1|bits = 1, axis = channel, group = all, rule = quantile(0.2)"
    "mse1|bits = 1, axis = channel, group = all, rule = mse"
    "kivi2_k|bits = 2, axis = channel, group = 32, rule = minmax"
    "kivi2_k_lsb_f32|bits = 2, axis = channel, group = 32, rule = minmax, params = f32, order = lsb"
    "kivi2_v|bits = 2, axis = token, group = 32, rule = minmax"
    "tok4|bits = 4, axis = token, group = all, rule = minmax, params = f32"
    "tok8|bits = 8, axis = token, group = 64, rule = minmax"
)
echo "| scheme | kernel | grid x block | registers | occupancy | load / store coalescing | predicted µs | bound | copy bound µs | copy bound / predicted |"
echo "| --- | --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: |"
for s in "${schemes[@]}"; do
    IFS='|' read -r name scheme <<<"$s"
    "$kvq" profile --key "$scheme" --value "$scheme" --target sm_90 --gpu h100 --tokens 16384 \
        --kv-heads 8 --head-dim 128 --input f16 --json |
        python3 -c '
import json, sys
name = sys.argv[1]
def pct(x):
    return "-" if x is None else "%.0f%%" % (100 * x)
for k in json.load(sys.stdin)["kernels"]:
    role = k["role"]
    if not role.startswith("key"):
        continue
    kind = "dequantize" if "dequantize" in role else "quantize"
    loads, stores = k["global_loads"]["efficiency"], k["global_stores"]["efficiency"]
    ratio = k["predicted_copy_bound_us"] / k["predicted_us"]
    print("| %s | %s | %d x %d | %d | %s | %s / %s | %.1f | %s | %.1f | %s |" % (
        name, kind, k["grid"], k["block"], k["registers"], pct(k["occupancy"]),
        pct(loads), pct(stores), k["predicted_us"], k["predicted_bound"],
        k["predicted_copy_bound_us"], pct(ratio)))
' "$name"
done
