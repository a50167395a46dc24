#!/usr/bin/env bash
# The main job: evaluates the 1-bit CalibQuant pair on the vendored DINOv2 visual tokens, on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup.sh
cargo run --release --quiet --bin kvq -- eval \
    --kv tests/data/dinov2s_astronaut_qkv_f16.safetensors \
    --key "bits = 1, axis = channel, group = all, rule = shrink(0.5)" \
    --value "bits = 1, axis = channel, group = all, rule = shrink(0.3)" "$@"
