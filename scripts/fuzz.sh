#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) briefly from its committed corpus:
# `scripts/fuzz.sh [SECONDS]` (default 20 per target). Needs a nightly toolchain; installs
# cargo-fuzz when missing; skips with a message when nightly is absent. New corpus entries go
# to a scratch directory, not the committed corpus; a crash fails the script and leaves its
# reproducer under fuzz/artifacts/<target>/.
#
# Long runs: `cd fuzz && cargo +nightly fuzz run -s none <target> corpus/<target> --
# -max_total_time=600`, then `cargo +nightly fuzz cmin -s none <target> corpus/<target>`.
set -euo pipefail
seconds="${1:-20}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped (no nightly toolchain; rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked
fi
source scripts/setup.sh
# Host kernels of the differential target are compiled once and reused.
export KVQ_CACHE_DIR="${KVQ_CACHE_DIR:-$root/fuzz/target/kvq-cache}"
mkdir -p "$KVQ_CACHE_DIR"
# candle captures a backtrace for every error when RUST_BACKTRACE is set: slow, and not needed.
export RUST_LIB_BACKTRACE=0

# Without a sanitizer: the targets are safe Rust plus generated host code, which ASan would not
# instrument, and a sanitizer halves the executions per second.
cd fuzz
cargo +nightly fuzz build -s none
targets=(scheme_text scheme_builder kv_safetensors gguf_metadata span_import ir_verifier differential)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    echo "fuzz: $t for ${seconds}s"
    # New inputs land in the scratch directory (first); the committed corpus is only read.
    rc=0
    cargo +nightly fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1 || rc=$?
    grep -E "^(stat::number_of_executed_units|#[0-9]+ +DONE)" "$scratch/$t.log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$scratch/$t.log"
        echo "fuzz: $t failed (reproducer under fuzz/artifacts/$t)"
        exit 1
    fi
done
echo "fuzz: every target ran ${seconds}s without a crash"
