"""Records tests/data/smollm2_tokens.json: SmolLM2's token ids for a corpus, from Hugging Face's
own tokenizer stack, for kvq's tokenizer to match token for token.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install transformers gguf torch
    /tmp/ref/bin/python scripts/smollm2_tokenizer_reference.py MODEL.gguf > tests/data/smollm2_tokens.json

The tokenizer is transformers' GGUF tokenizer (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`:
the file's vocabulary, merges and control/user-defined tokens), with the pre-tokenizer of SmolLM2's
published `tokenizer.json`: `Digits(individual_digits=True)` then `ByteLevel(add_prefix_space=False)`
with the GPT-2 regex. The GGUF names that pre-tokenizer `smollm` (`tokenizer.ggml.pre`), and
llama.cpp implements it the same way (every digit alone, then GPT-2's expression); transformers
5.x has no entry for `smollm` and falls back to plain GPT-2 byte-level splitting, which keeps runs
of digits together. Both encodings are recorded: `ids` (SmolLM2's) and `gguf_default_ids`
(transformers' fallback), so the difference stays visible; they agree on every text without digits.

The corpus: runs of spaces, tabs and newlines, digits, punctuation, contractions, accents, CJK,
emoji, special tokens written in the text, a licence-history passage with a release table, and
every prompt of docs/prompts. No BOS is added (`add_special_tokens=False`).
"""

import json
import os
import sys
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent

HISTORY = """A. HISTORY OF THE SOFTWARE
==========================

The interpreter was created in the early 1990s at a research institute in the
Netherlands as a successor of a teaching language.  Its author remained the
principal maintainer, although it includes many contributions from others.

In 1995, development continued at a national research initiative in Reston,
Virginia, where several versions were released.  In May 2000 the core team
moved to a start-up to form its open-source team; in October of the same year
the team moved again.  In 2001 a non-profit foundation was formed to own the
intellectual property.  All releases are Open Source (see https://opensource.org
for the definition).  Historically, most, but not all, releases have also been
GPL-compatible; the table below summarizes the various releases.

    Release         Derived     Year        Owner       GPL-
                    from                                compatible? (1)

    0.9.0 thru 1.2              1991-1995   Institute   yes
    1.3 thru 1.5.2  1.2         1995-1999   Initiative  yes
    1.6             1.5.2       2000        Initiative  no
    2.0             1.6         2000        Start-up    no
    1.6.1           1.6         2001        Initiative  yes (2)
    2.1             2.0+1.6.1   2001        Foundation  no
    2.0.1           2.0+1.6.1   2001        Foundation  yes
    2.1.1           2.1+2.0.1   2001        Foundation  yes
    2.1.2           2.1.1       2002        Foundation  yes
    2.1.3           2.1.2       2002        Foundation  yes
    2.2 and above   2.1.1       2001-now    Foundation  yes

Footnotes:

(1) GPL-compatible doesn't mean that we're distributing the software under
    the GPL.  All licenses listed here, unlike the GPL, let you distribute a
    modified version without making your changes open source.

(2) According to counsel, 1.6.1 is "not incompatible" with the GPL.
"""

CASES = [
    "Hello\n\nWorld",
    "Hello world, it's 2024!",
    "a  b",
    "a   b\tc\t\td\n\n\ne \n f\r\nend",
    "   leading spaces and trailing   ",
    "\n\n\n",
    " \t \n",
    "tab\tafter\t\t\tthree",
    "x = 3.14159; y=2.71828e-3; z = -42 + 1_000_000",
    "Call 555-0123 at 10:30, or +31 (0)20 1234567.",
    "Version 12.9.86 of 2026-12-03 at 09:13:40 UTC",
    "I'm sure you're right, we'll see; they've gone, he'd say, it's hers.",
    "I'M LOUD, YOU'RE LOUD, DON'T",
    "Wait... what?! (Yes.) [No!] {Maybe?} \"quoted\" 'single' `code`",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "fn main() { println!(\"{}\", x[0] * 2); } // comment",
    "Café, naïve, façade, Ångström, Zürich, São Paulo, Łódź",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀🚀 👩‍👩‍👧 ✨ flags 🇳🇱",
    "Math: ∑ x² ≤ ∞, α+β=γ, ½ ¾ ① ② ٣",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after<|endoftext|><|endoftext|>",
    "no space<|im_start|>inside<|im_end|>words",
    "   \n\n  Indented\n\n\tparagraph\n",
    HISTORY,
]


def reference_tokenizer(gguf_path):
    path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    default = tok.backend_tokenizer
    smollm = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer
    smollm.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return smollm, default


def main():
    smollm, default = reference_tokenizer(sys.argv[1])
    texts = [{"name": f"case {i}", "text": t} for i, t in enumerate(CASES)]
    for p in sorted((ROOT / "docs" / "prompts").glob("*.txt")):
        texts.append({"name": f"docs/prompts/{p.name}", "text": p.read_text(encoding="utf-8")})
    out = []
    for t in texts:
        ids = smollm.encode(t["text"], add_special_tokens=False).ids
        fallback = default.encode(t["text"], add_special_tokens=False).ids
        entry = {"name": t["name"], "text": t["text"], "ids": ids}
        if fallback != ids:
            entry["gguf_default_ids"] = fallback
        out.append(entry)
    doc = {
        "about": "SmolLM2-135M-Instruct token ids (no BOS) from transformers' GGUF tokenizer with "
        "SmolLM2's pre-tokenizer (digits one by one, then GPT-2 byte-level); "
        "gguf_default_ids, where present, is transformers' fallback without the digit split. "
        "Written by scripts/smollm2_tokenizer_reference.py.",
        "texts": out,
    }
    json.dump(doc, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
