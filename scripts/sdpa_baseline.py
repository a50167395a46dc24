"""PyTorch baseline for kvq's decode-attention benchmark, run on the GPU machine by
target/gpu-work/run.sh (scripts/gpu-check.sh prepare copies it there).

torch.nn.functional.scaled_dot_product_attention in bf16 on the unquantized cache: one decode
query per sequence, 32 query heads over 8 kv heads (GQA), head_dim 128, a span of 4k/16k/64k
tokens plus 64 text tokens, batch 1 and 4. Times are CUDA-event medians; the table is markdown.
"""

import sys

import torch
import torch.nn.functional as F

KV, QH, D, TEXT = 8, 32, 128, 64


def median_ms(fn, runs=50, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if not torch.cuda.is_available():
        print("torch sees no GPU")
        return 1
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
    print("| span tokens | batch | SDPA bf16 µs | K+V bf16 MB |")
    print("| ---: | ---: | ---: | ---: |")
    for span in (4096, 16384, 65536):
        for batch in (1, 4):
            t = span + TEXT
            q = torch.randn(batch, QH, 1, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(batch, KV, t, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(batch, KV, t, D, device="cuda", dtype=torch.bfloat16)
            try:
                fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                fn()
            except TypeError:
                # Older torch: repeat K/V per query head outside the timed call.
                kr, vr = k.repeat_interleave(QH // KV, 1), v.repeat_interleave(QH // KV, 1)
                fn = lambda: F.scaled_dot_product_attention(q, kr, vr)
            ms = median_ms(fn, runs)
            mb = 2 * k.numel() * k.element_size() / 1e6
            print(f"| {span} | {batch} | {ms * 1000:.1f} | {mb:.1f} |")
            del q, k, v
    return 0


if __name__ == "__main__":
    sys.exit(main())
