#!/usr/bin/env bash
# Builds and runs the CPU probes: hand-written C of alternatives to kvq's host kernels, each
# timed against the method kvq uses in the same run (see README.md here). Needs a C compiler,
# AVX-512 (F, BW, VL, BF16) and BMI2; the AMX part of the values probe runs where the CPU has
# it.
set -euo pipefail
cd "$(dirname "$0")"
for flag in avx512f avx512bw avx512vl avx512_bf16 bmi2; do
    grep -qw "$flag" /proc/cpuinfo || { echo "probes: this CPU lacks $flag; nothing run"; exit 0; }
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc=${CC:-cc}
status=0
for probe in keys_permute values_accumulate token_codes quantile_passes text_rows; do
    "$cc" -O3 -march=native -mamx-tile -mamx-bf16 -o "$out/$probe" "$probe.c" -lm -lpthread
    "$out/$probe" || { echo "probes: $probe disagrees with its reference"; status=1; }
done
exit $status
