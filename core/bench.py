"""``plugformer bench``: load time, prefill and decode speed, and peak memory of one config.

Run one configuration per process (peak resident memory is a high-water mark of the
process); ``benchmarks/compare.py`` runs several, and the peers, side by side.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from typing import Any

import torch

from plugformer.core.config import Config
from plugformer.core.sampler import SamplingContext
from plugformer.core.sampling import SamplerChain


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _weights_mb(model: torch.nn.Module) -> float:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total / 1e6


def run(config: Config, prefill_tokens: int = 512, new_tokens: int = 128, batch: int = 8) -> dict:
    """Measure one configuration; returns a JSON-able dict."""
    from plugformer.core.engine import Engine

    torch.manual_seed(0)
    t0 = time.perf_counter()
    engine = Engine(config)
    load_s = time.perf_counter() - t0
    vocab = engine.spec.vocab_size
    result: dict[str, Any] = {
        "model": config.model.name,
        "dtype": config.model.dtype,
        "quant": config.quant.name,
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
        "weights_mb": round(_weights_mb(engine.model), 1),
    }
    ids = torch.randint(0, vocab, (1, prefill_tokens), generator=torch.Generator().manual_seed(0))
    engine.logits(ids[:, :16])  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        engine.logits(ids)
        times.append(time.perf_counter() - t)
    result["prefill_tok_s"] = round(prefill_tokens / statistics.median(times), 1)

    prompt = ids[0, :32].tolist()
    greedy = {"temperature": 0.0, "ignore_eos": True}
    engine.generate(prompt, max_new_tokens=8, **greedy)  # warm-up (and compile, if any)
    t = time.perf_counter()
    engine.generate(prompt, max_new_tokens=new_tokens, **greedy)
    decode_s = time.perf_counter() - t
    # the prefill of 32 tokens is inside the timing; subtract it for the decode rate
    t = time.perf_counter()
    engine.generate(prompt, max_new_tokens=1, **greedy)
    first_s = time.perf_counter() - t
    result["decode_tok_s"] = round((new_tokens - 1) / max(decode_s - first_s, 1e-9), 1)

    prompts = [ids[0, i * 8 : i * 8 + 32].tolist() for i in range(batch)]
    engine.generate(prompts, max_new_tokens=4, **greedy)
    t = time.perf_counter()
    engine.generate(prompts, max_new_tokens=new_tokens // 2, **greedy)
    result[f"decode_b{batch}_tok_s"] = round(
        batch * (new_tokens // 2) / (time.perf_counter() - t), 1
    )

    logits = torch.randn(1, vocab)
    ctx = SamplingContext(torch.zeros((1, 1), dtype=torch.long), torch.tensor([1]))
    for name, knobs in {
        "sampler_greedy_ms": {"temperature": 0.0},
        "sampler_top_p_ms": {"temperature": 0.7, "top_k": 50, "top_p": 0.9},
    }.items():
        params = config.sampler
        for k, v in knobs.items():
            if hasattr(params, k):
                setattr(params, k, v)
        chain = SamplerChain(engine.plugins.registry, params)
        gen = [torch.Generator().manual_seed(0)]
        samples = []
        for _ in range(200):
            t = time.perf_counter()
            chain.sample(logits, ctx, gen)
            samples.append(time.perf_counter() - t)
        result[name] = round(statistics.median(samples) * 1e3, 3)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return result


def main(config: Config) -> int:
    threads = os.environ.get("PLUGFORMER_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    print(json.dumps(run(config)), file=sys.stdout)
    return 0
