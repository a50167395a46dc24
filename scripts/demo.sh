#!/usr/bin/env bash
# The main job, on the CPU: CalibQuant declared with #[kv_quant], its kernels compiled (PTX with a
# ptxas summary, and host code), a visual KV cache filled from the vendored DINOv2 K/V plus a long
# synthetic span, and decode attention through the generated kernels against full precision.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup.sh
cargo run --release --quiet --bin kvq -- demo "$@"
