"""Peer benchmark: Hugging Face transformers, eager fp32, on the same GGUF weights.

Run inside its own virtual environment by benchmarks/compare.py; prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers


def main(gguf: str, threads: int) -> None:
    torch.set_num_threads(threads)
    path = Path(gguf)
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    load_s = time.perf_counter() - t
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, 512), generator=torch.Generator().manual_seed(0))
    out = {"engine": "transformers", "version": transformers.__version__, "dtype": "float32",
           "threads": threads, "load_s": round(load_s, 2)}  # fmt: skip
    with torch.no_grad():
        model(ids[:, :16])
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model(ids, logits_to_keep=1)  # the next token's logits, as generation's prefill
            times.append(time.perf_counter() - t)
        out["prefill_tok_s"] = round(512 / statistics.median(times), 1)
        prompt = ids[:, :32]
        kw = {"do_sample": False, "pad_token_id": 0}
        model.generation_config.eos_token_id = None
        model.generate(prompt, max_new_tokens=8, **kw)
        t = time.perf_counter()
        model.generate(prompt, max_new_tokens=1, **kw)
        first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(prompt, max_new_tokens=128, **kw)
        out["decode_tok_s"] = round(127 / (time.perf_counter() - t - first), 1)
        batch = torch.stack([ids[0, i * 8 : i * 8 + 32] for i in range(8)])
        t = time.perf_counter()
        model.generate(batch, max_new_tokens=64, **kw)
        out["decode_b8_tok_s"] = round(8 * 64 / (time.perf_counter() - t), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
