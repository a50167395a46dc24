#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings denied, the whole Rust test suite, then
# the pytest suite of the Python package (which setup.sh builds into .venv), closing with one
# summary line over every test binary and pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
KVQ_WITH_TORCH=1 source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
KVQ_BIN="$root/target/debug/kvq" "$root/.venv/bin/python" -m pytest -q kvq-py/tests 2>&1 | tee -a "$log"
# Every cargo test binary's `test result:` line and pytest's closing line (`N passed, ... in Ts`).
awk '/^test result:/ || (/ in [0-9.]+s/ && /^[0-9]+ (passed|failed)/) {
         for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
