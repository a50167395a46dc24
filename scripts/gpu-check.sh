#!/usr/bin/env bash
# GPU checks of kvq's PTX kernels: quantize kernels bit for bit, decode attention within 1e-4,
# timings, and a PyTorch SDPA baseline; in two halves:
#
#   scripts/gpu-check.sh prepare   (here, on the build machine: needs Rust, LLVM 19, ptxas)
#     1. builds kvq-gpu-check (kvq-runtime with the cuda feature: no LLVM, ~1 MB) and kvq, both --release;
#     2. compiles a bundle per catalogue pair with
#          kvq compile --key K --value V --target sm_90 --head-dim 64 --input f16 -o BUNDLE
#        (head_dim 64 is the captures'; f16 input is fed straight from the captures);
#     3. for every quantize kernel x capture x layer, writes the host backend's result with
#          kvq quantize --kv CAPTURE --tensor k|v --layer L --scheme S --backend host -o EXPECTED
#        (safetensors: codes u8, zero/scale as f32 values of the stored parameters);
#     4. compiles attention bundles (head_dim 128, 4 query heads per kv head: --group 4), and
#        per pair a cache bundle (the same with --input f32; and CalibQuant's with bf16 rows,
#        --input bf16 --fp bf16) that kvq-gpu-check --cache runs the visual KV cache on (kvq_runtime's Cuda device against the host cache: spans exported
#        bit-identical to the reference quantizer's, attention within 1e-4), and
#        writes decode-attention cases with `kvq attention-case`: a small batch per pair for
#        correctness, and the benchmark shapes (8 kv heads, 32 query heads, 4k/16k/64k span + 64
#        text tokens, batch 1 and 4; 64k at batch 1 only) for the 1-bit CalibQuant pair. Batch-4 cases share one K/V
#        among their four sequences (--share-kv, distinct queries) so that everything fits the
#        64 MiB a device call may carry; their timings read that K/V four times, mostly from L2;
#     5. writes `kvq profile --json` predictions (h100 and h200) for every pair at every
#        quantize case's shape, and `kvq profile --attention` ones for the benchmark shapes, into
#        predicted/, so that run.sh prints measured beside predicted times for every kernel
#        (scripts/measured_vs_predicted.py) and the cost model can be corrected;
#     6. writes target/gpu-work/run.sh, which runs kvq-gpu-check once per group (a bundle and its
#        cases: one process each, so that a crash or a failed module load cannot hide the
#        others' results; attention times per kernel), then sdpa_baseline.py (torch's
#        scaled_dot_product_attention in bf16 on the unquantized cache, same shapes, GQA folded
#        into the query rows, every SDPA backend, 20 calls per timed event pair, and a
#        streaming-read bandwidth probe), and ends with one PASS or FAIL line; and prints the
#        device command.
#   Everything lands in target/gpu-work/ (under target/, so git ignores it); with the working
#   tree's tests/data (the captures) it is self-contained:
#     kvq-gpu-check, bundles/<pair>/{manifest.json,*.ptx}, attention/*.safetensors,
#     expected/<kernel>.<capture>.L<layer>.safetensors, cases.txt, run.sh.
#
#   On the GPU machine (no Rust, no LLVM, no network), from the repository root:
#     bash target/gpu-work/run.sh            # nvidia-smi; ldd --version; kvq-gpu-check ... --out $OUT
#   kvq-gpu-check compares codes, zero and scale bit for bit (f32 expectations converted to the
#   kernel's parameter type), checks status == 0, times each kernel (CUDA events, median of
#   --runs launches) and writes results.md and log.txt per group; with --synthetic it also makes
#   seeded input at the cost model's shape (8 x 16,384 x 128) and checks the kernel against
#   kvq-ir's reference quantizer run on that machine's CPU. Then Nsight Compute counters for the
#   attention kernels and one quantize kernel (where ncu exists). Everything comes back as one
#   archive, $OUT/gpu-check.tgz (a device call returns at most 8 files), beside predicted.md and
#   sdpa.md; docs/gpu/ keeps the runs so far.
#   It exits non-zero on any mismatch, and with "no CUDA driver found" where there is no GPU.
#
#   scripts/gpu-check.sh command   prints the device command again.
#   scripts/gpu-check.sh local     runs run.sh here (no GPU: expect the NoDriver error, exit 1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work=target/gpu-work

# name | key scheme | value scheme (kvq-ir/src/scheme/catalogue.rs); the two schemes of a pair
# differ so their kernels get distinct names.
pairs=(
    "calibquant|bits = 1, axis = channel, group = all, rule = shrink(0.5)|bits = 1, axis = channel, group = all, rule = shrink(0.3)"
    "kivi2|bits = 2, axis = channel, group = 32, rule = minmax|bits = 2, axis = token, group = 32, rule = minmax"
    "quantile1_tok4|bits = 1, axis = channel, group = all, rule = quantile(0.2)|bits = 4, axis = token, group = all, rule = minmax, params = f32"
    "kivi2lsb_tok8|bits = 2, axis = channel, group = 32, rule = minmax, params = f32, order = lsb|bits = 8, axis = token, group = 64, rule = minmax"
    "calibmid_kivi2v|bits = 1, axis = channel, group = all, rule = shrink(0.5, center = mid), order = lsb|bits = 2, axis = token, group = 32, rule = minmax"
)
# capture file | layers to check (indices within the file)
captures=(
    "dinov2s_astronaut_qkv_f16|0 2"
    "smollm2_zen_qkv_f16|0 3"
)

print_command() {
    cat <<MSG

== On the GPU machine ==
Device tool call (the work dir is under target/, so it must be carried):
  run(command="bash target/gpu-work/run.sh", carry=["target/gpu-work"], timeout_s=300)
which runs, from the repository root:
  nvidia-smi; ldd --version; ./kvq-gpu-check \$(bundles) \$(cases) \$(attention cases) --runs 50 --out "\$OUT"
  python3 sdpa_baseline.py     # torch SDPA bf16 on the unquantized cache, same shapes
Results: \$OUT/gpu-check.tgz (per group results.md and log.txt, ncu_*.txt), \$OUT/predicted.md
(measured beside kvq profile's predicted times) and \$OUT/sdpa.md; the last line says PASS or FAIL.
Note: kvq-gpu-check needs glibc >= $(objdump -T "$work/kvq-gpu-check" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 | sed 's/GLIBC_//' || echo '?') and a driver that accepts the PTX ISA version in the bundles.
MSG
}

prepare() {
    # shellcheck source=scripts/setup.sh
    source scripts/setup.sh
    cargo build --release -p kvq-runtime --bin kvq-gpu-check
    cargo build --release --bin kvq
    rm -rf "$work"
    mkdir -p "$work/bundles" "$work/expected" "$work/predicted"
    cp target/release/kvq-gpu-check "$work/"
    local kvq=target/release/kvq check="$work/kvq-gpu-check"
    # One kvq-gpu-check process per group (a bundle and its cases), so that one fault cannot
    # hide the other groups' results: group names, and each group's arguments (quoted).
    local group_names=() group_args=() cases=()
    add_group() {
        local name=$1 args
        shift
        args=$(printf ' %q' "$@")
        group_names+=("$name")
        group_args+=("$args")
    }
    for p in "${pairs[@]}"; do
        IFS='|' read -r name key value <<<"$p"
        local bundle="$work/bundles/$name"
        "$kvq" compile --key "$key" --value "$value" --target sm_90 --head-dim 64 --input f16 -o "$bundle"
        local pair_cases=()
        # name <TAB> role <TAB> scheme, for each quantize kernel
        while IFS=$'\t' read -r kernel role scheme; do
            local tensor=k
            [ "$role" = value_quantize ] && tensor=v
            for c in "${captures[@]}"; do
                local cap="${c%%|*}" layers="${c#*|}"
                for layer in $layers; do
                    local expected="expected/$kernel.$cap.L$layer.safetensors"
                    local said heads tokens
                    said=$("$kvq" quantize --kv "tests/data/$cap.safetensors" --tensor "$tensor" --layer "$layer" \
                        --scheme "$scheme" --backend host -o "$work/$expected")
                    echo "$said"
                    # "PATH: H x T x D -> ...": the shape the kernel is timed at.
                    read -r heads tokens < <(sed -E 's/.*: ([0-9]+) x ([0-9]+) x [0-9]+ -> .*/\1 \2/' <<<"$said")
                    for gpu in h100 h200; do
                        local predicted="$work/predicted/$name.${heads}x${tokens}.$gpu.json"
                        [ -f "$predicted" ] || "$kvq" profile --key "$key" --value "$value" --target sm_90 \
                            --gpu "$gpu" --kv-heads "$heads" --tokens "$tokens" --head-dim 64 --input f16 \
                            --json >"$predicted"
                    done
                    # The captures travel with the working tree: ../../tests/data from the work dir.
                    cases+=("../../tests/data/$cap.safetensors,$tensor,$layer,$expected,$kernel")
                    pair_cases+=(--case "../../tests/data/$cap.safetensors,$tensor,$layer,$expected,$kernel")
                done
            done
        done < <("$check" --bundle "$bundle" --list)
        add_group "$name" --bundle "bundles/$name" "${pair_cases[@]}"
    done
    # Decode attention: correctness on a small batch per pair, timing on the benchmark shapes.
    local attention=()
    mkdir -p "$work/attention"
    for p in "${pairs[@]}"; do
        IFS='|' read -r name key value <<<"$p"
        local calib=()
        [ "$name" = calibquant ] && calib=(--calibrate 3)
        "$kvq" compile --key "$key" --value "$value" --target sm_90 --head-dim 128 --input f16 \
            --group 4 "${calib[@]}" -o "$work/bundles/${name}_attn" >/dev/null
        "$kvq" attention-case --key "$key" --value "$value" "${calib[@]}" --kv-heads 2 --group 4 \
            --span-tokens 1000 --fp-tokens 37 --batch 3 -o "$work/attention/$name.check.safetensors"
        attention+=("attention/$name.check.safetensors")
        add_group "${name}_attn" --bundle "bundles/${name}_attn" --attention "attention/$name.check.safetensors"
        # The visual KV cache on the GPU (kvq_runtime's Cuda device): f32 input, as the cache
        # stores it; checked against the host cache with the reference quantizer.
        "$kvq" compile --key "$key" --value "$value" --target sm_90 --head-dim 128 --input f32 \
            --group 4 "${calib[@]}" -o "$work/bundles/${name}_cache" >/dev/null
        add_group "${name}_cache" --bundle "bundles/${name}_cache" --cache "bundles/${name}_cache"
    done
    # A cache storing its full-precision rows as bf16 (CalibQuant's pair): bf16 quantize input
    # and bf16 rows in the attention kernels.
    IFS='|' read -r _ key value <<<"${pairs[0]}"
    "$kvq" compile --key "$key" --value "$value" --target sm_90 --head-dim 128 --input bf16 \
        --group 4 --calibrate 3 --fp bf16 -o "$work/bundles/calibquant_cache_bf16" >/dev/null
    add_group calibquant_cache_bf16 --bundle "bundles/calibquant_cache_bf16" \
        --cache "bundles/calibquant_cache_bf16"
    # The cost model's benchmark shape (8 kv heads x 16,384 tokens x head_dim 128, f16): every
    # quantize kernel of the head_dim-128 bundles, and mse1's, on seeded input; the expectation is
    # computed on the GPU machine by kvq-ir's reference quantizer, so nothing large is carried.
    # (mse1 as keys beside CalibQuant's values: a bundle's two schemes must differ.)
    local mse="bits = 1, axis = channel, group = all, rule = mse"
    IFS='|' read -r _ _ value <<<"${pairs[0]}"
    "$kvq" compile --key "$mse" --value "$value" --target sm_90 --head-dim 128 --input f16 \
        -o "$work/bundles/mse1_128" >/dev/null
    local shape_args=() seen=" "
    for p in "${pairs[@]}" "mse1_128|$mse|$value"; do
        IFS='|' read -r name key value <<<"$p"
        local bundle="bundles/${name}_attn"
        [ "$name" = mse1_128 ] && bundle="bundles/$name"
        shape_args+=(--bundle "$bundle")
        while IFS=$'\t' read -r kernel _ _; do
            case "$seen" in *" $kernel "*) continue ;; esac
            seen+="$kernel "
            shape_args+=(--synthetic "$kernel,8,16384,1")
        done < <("$check" --bundle "$work/$bundle" --list)
        for gpu in h100 h200; do
            "$kvq" profile --key "$key" --value "$value" --target sm_90 --gpu "$gpu" --kv-heads 8 \
                --tokens 16384 --head-dim 128 --input f16 --json >"$work/predicted/shape_$name.8x16384.$gpu.json"
        done
    done
    add_group shape_8x16384 "${shape_args[@]}"
    local first_quantize=${shape_args[3]%%,*}
    local bench=()
    IFS='|' read -r _ key value <<<"${pairs[0]}"
    # (64k at batch 4 is left out: with it the working tree and this folder pass the 64 MiB a
    # device call carries.)
    for shape in "4096 1" "4096 4" "16384 1" "16384 4" "65536 1"; do
        read -r span batch <<<"$shape"
        local share=()
        [ "$batch" -gt 1 ] && share=(--share-kv)
        "$kvq" attention-case --key "$key" --value "$value" --calibrate 3 --kv-heads 8 --group 4 \
            --span-tokens "$span" --fp-tokens 64 --batch "$batch" "${share[@]}" \
            -o "$work/attention/calibquant.$span.b$batch.safetensors"
        attention+=("attention/calibquant.$span.b$batch.safetensors")
        bench+=(--attention "attention/calibquant.$span.b$batch.safetensors")
        for gpu in h100 h200; do
            "$kvq" profile --key "$key" --value "$value" --target sm_90 --gpu "$gpu" --attention \
                --calibrate 3 --kv-heads 8 --group 4 --head-dim 128 --tokens "$span" --batch "$batch" \
                --fp-tokens 64 --json >"$work/predicted/attention.${span}x${batch}.$gpu.json"
        done
    done
    cp scripts/sdpa_baseline.py scripts/measured_vs_predicted.py "$work/"
    printf '%s\n' "${cases[@]}" >"$work/cases.txt"
    {
        echo '#!/usr/bin/env bash'
        echo '# Written by scripts/gpu-check.sh prepare. Runs kvq-gpu-check over the prepared cases.'
        echo 'set -uo pipefail'
        echo '# Results gather in a scratch folder and come back as one archive (a device call returns'
        echo '# at most 8 files); the tables are printed as they come.'
        echo 'final="${OUT:-$(pwd)/target/gpu-work/out}"'
        echo 'mkdir -p "$final"'
        echo 'out=$(mktemp -d)'
        echo 'cd "$(dirname "${BASH_SOURCE[0]}")"'
        echo 'nvidia-smi || echo "nvidia-smi: not available"'
        echo 'ldd --version | head -n 1'
        echo 'failed=()'
        echo '# One process per group: a crash or a failed module load in one leaves the others.'
        echo 'check() {'
        echo '    local name=$1'
        echo '    shift'
        echo '    mkdir -p "$out/$name"'
        echo '    echo "== $name"'
        echo '    ./kvq-gpu-check "$@" --runs "${RUNS:-50}" --out "$out/$name" || failed+=("$name")'
        echo '    cat "$out/$name/results.md" 2>/dev/null'
        echo '}'
        for i in "${!group_names[@]}"; do
            echo "check ${group_names[$i]}${group_args[$i]}"
        done
        printf 'check calibquant_attn_bench --bundle bundles/calibquant_attn'
        printf ' %q' "${bench[@]}"
        echo
        echo ': >"$out/predicted.md"'
        echo 'for r in "$out"/*/results.md; do'
        echo '    python3 measured_vs_predicted.py "$r" predicted | tee -a "$out/predicted.md"'
        echo 'done'
        echo 'python3 sdpa_baseline.py "${RUNS:-50}" | tee "$out/sdpa.md"'
        echo '# Hardware counters (Nsight Compute) for the attention kernels at 16k / batch 1 and the'
        echo '# CalibQuant key quantize at the benchmark shape: a few launches each, bounded in time.'
        echo 'ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)'
        echo 'if [ -n "$ncu" ]; then'
        echo '    sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis"'
        printf '    timeout 150 "$ncu" --clock-control none $sections -c 3 ./kvq-gpu-check --bundle bundles/calibquant_attn --attention attention/calibquant.16384.b1.safetensors --runs 1 --out "$out/ncu_run" >"$out/ncu_attention.txt" 2>&1 || echo "ncu (attention): exit $?"
'
        printf '    timeout 100 "$ncu" --clock-control none $sections -c 1 ./kvq-gpu-check --bundle bundles/calibquant_attn --synthetic %q --runs 1 --out "$out/ncu_run" >"$out/ncu_quantize.txt" 2>&1 || echo "ncu (quantize): exit $?"
' "$first_quantize,8,16384,1"
        echo '    grep -E "^  [a-z_0-9]+|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|Executed Ipc A|Stall|L2 Hit|L1/TEX Hit" "$out"/ncu_*.txt | head -n 120'
        echo 'else'
        echo '    echo "ncu: not found"'
        echo 'fi'
        echo 'tar -czf "$final/gpu-check.tgz" -C "$out" . && cp "$out/predicted.md" "$out/sdpa.md" "$final/"'
        echo 'if [ ${#failed[@]} -eq 0 ]; then'
        printf '    echo "PASS: all %d groups (results in $final/gpu-check.tgz)"\n' "$(( ${#group_names[@]} + 1 ))"
        echo '    status=0'
        echo 'else'
        echo '    echo "FAIL: ${failed[*]} (results in $final/gpu-check.tgz)"'
        echo '    status=1'
        echo 'fi'
        echo 'exit $status'
    } >"$work/run.sh"
    chmod +x "$work/run.sh"
    echo "prepared ${#cases[@]} quantize and ${#attention[@]} attention cases in $work ($(du -sh "$work" | cut -f1))"
    print_command
}

case "${1:-prepare}" in
prepare) prepare ;;
command) print_command ;;
local) bash "$work/run.sh" ;;
*)
    echo "usage: $0 [prepare|command|local]" >&2
    exit 2
    ;;
esac
