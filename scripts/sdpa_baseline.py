"""PyTorch baseline for kvq's decode-attention benchmark, run on the GPU machine by
target/gpu-work/run.sh (scripts/gpu-check.sh prepare copies it there).

torch.nn.functional.scaled_dot_product_attention in bf16 on the unquantized cache: one decode
query per sequence, 32 query heads over 8 kv heads, head_dim 128, a span of 4k/16k/64k tokens
plus 64 text tokens, batch 1 and 4. GQA is folded into the query rows: the 4 query heads of a kv
head are 4 query rows of that head (q is [batch, 8, 4, 128]), so K and V are read once and never
repeated per query head. Each timed event pair brackets CALLS calls (launch overhead amortised;
the time per call is reported), median over the runs. Every SDPA backend torch offers is timed
on its own (a backend that refuses the shape is reported as such), beside torch's default
choice. A streaming-read probe (a sum over 1 GiB) gives the bandwidth every time can be put
against. The tables are markdown.
"""

import sys

import torch
import torch.nn.functional as F

KV, QH, D, TEXT = 8, 32, 128, 64
CALLS = 20


def median_us(fn, runs=50, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(CALLS):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / CALLS)
    times.sort()
    return times[len(times) // 2]


def bandwidth_probe(runs):
    """Streaming read: the sum of 1 GiB of bf16, in GB/s."""
    x = torch.ones(1 << 29, device="cuda", dtype=torch.bfloat16)
    us = median_us(lambda: x.sum(), runs)
    return x.numel() * x.element_size() / (us * 1e-6) / 1e9


def backends():
    """(name, context factory) for every SDPA backend this torch has, then the default."""
    out = []
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            if hasattr(SDPBackend, name):
                out.append((name.lower(), lambda b=getattr(SDPBackend, name): sdpa_kernel([b])))
    except ImportError:
        pass
    out.append(("default", None))
    return out


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if not torch.cuda.is_available():
        print("torch sees no GPU")
        return 1
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
    gbps = bandwidth_probe(runs)
    print(f"streaming-read probe (sum over 1 GiB of bf16): {gbps:.0f} GB/s measured\n")
    print("| span tokens | batch | SDPA backend | SDPA bf16 µs | K+V bf16 MB | K+V bytes at the probe's bandwidth µs |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for span in (4096, 16384, 65536):
        for batch in (1, 4):
            t = span + TEXT
            q = torch.randn(batch, KV, QH // KV, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(batch, KV, t, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(batch, KV, t, D, device="cuda", dtype=torch.bfloat16)
            nbytes = 2 * k.numel() * k.element_size()
            floor = nbytes / (gbps * 1e9) * 1e6
            for name, context in backends():
                fn = lambda: F.scaled_dot_product_attention(q, k, v)
                try:
                    if context is None:
                        fn()
                        us = f"{median_us(fn, runs):.1f}"
                    else:
                        with context():
                            fn()
                            us = f"{median_us(fn, runs):.1f}"
                except RuntimeError as e:
                    us = f"refused ({str(e).splitlines()[0][:60]})"
                print(f"| {span} | {batch} | {name} | {us} | {nbytes / 1e6:.1f} | {floor:.1f} |")
            del q, k, v
    return 0


if __name__ == "__main__":
    sys.exit(main())
