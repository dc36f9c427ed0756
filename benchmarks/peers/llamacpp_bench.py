"""Peer benchmark: llama.cpp through llama-cpp-python on the same Q4_1 GGUF file.

Run inside its own virtual environment by benchmarks/compare.py; prints one JSON line.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time

import llama_cpp


def main(gguf: str, threads: int) -> None:
    t = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
        n_batch=512, verbose=False,
    )  # fmt: skip
    load_s = time.perf_counter() - t
    rng = random.Random(0)
    vocab = llm.n_vocab()
    ids = [rng.randrange(3, vocab) for _ in range(512)]
    out = {"engine": "llama.cpp", "version": llama_cpp.__version__, "dtype": "Q4_1",
           "threads": threads, "load_s": round(load_s, 2)}  # fmt: skip
    llm.reset()
    llm.eval(ids[:16])
    best = float("inf")
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        best = min(best, time.perf_counter() - t)
    out["prefill_tok_s"] = round(512 / best, 1)
    llm.reset()
    llm.eval(ids[:32])
    token = ids[31]
    t = time.perf_counter()
    for _ in range(128):
        token = llm.sample(temp=0.0)
        llm.eval([token])
    out["decode_tok_s"] = round(128 / (time.perf_counter() - t), 1)
    out["decode_b8_tok_s"] = None  # llama-cpp-python has no batched generate
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
