"""``plugformer bench``: load time, prefill and decode speed, and peak memory of one config.

Run one configuration per process (peak resident memory is a high-water mark of the
process); ``benchmarks/compare.py`` runs several, and the peers, side by side.

Memory fields (weights in MB of 10**6 bytes, resident sizes in MiB as Linux reports them;
the ratios are taken in bytes):

* ``weights_mb``: the weights as loaded, after the first forward: the distinct storages of the
  model's parameters and buffers plus what quantized kernels keep (``kernel_copies_mb`` of it:
  the native kernel's layout, which replaces the GPTQ-layout ``qweight``; torch's int4/int8
  packed layouts, which sit beside it);
* ``baseline_rss_mb``: the resident size right before the first weight is read (interpreter,
  torch and what it imports, tokenizer, checkpoint metadata);
* ``load_peak_rss_mb``: the high-water mark when the engine is built (before any forward);
* ``one_seq_peak_rss_mb``: the high-water mark up to the end of the one-sequence decode
  (load, kernels built on the first forward, the 512-token prefill, 128 tokens of decode);
* ``peak_rss_mb``: the high-water mark of the whole run (the batch of 8 adds its KV cache and
  activations);
* ``peak_over_weights``, ``one_seq_peak_above_baseline_over_weights`` and
  ``peak_above_baseline_over_weights``: ``peak / weights`` and ``(peak - baseline) / weights``.

``model`` is the model loaded (:func:`model_label`): the zoo name, or with ``model.path`` set
the checkpoint's file or directory name, its path as given in ``model_path``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import torch

from plugformer.core import memory
from plugformer.core.config import Config, ModelConfig
from plugformer.core.interfaces.sampler import SamplingContext
from plugformer.core.sampling import SamplerChain


def model_label(model: ModelConfig) -> str:
    """The name of the model ``model`` loads: with ``model.path`` set, the checkpoint's file or
    directory name (``SmolLM2-135M-Instruct.Q4_1.gguf``, ``Qwen2-0.5B``), since the path wins
    over the zoo entry (whose ``name`` composition leaves at the default); else ``model.name``."""
    if model.path is None:
        return model.name
    path = os.path.abspath(os.path.expanduser(model.path))  # "." and "dir/" have a name too
    return os.path.basename(path) or path


def run(config: Config, prefill_tokens: int = 512, new_tokens: int = 128, batch: int = 8) -> dict:
    """Measure one configuration; returns a JSON-able dict."""
    from plugformer.core.engine import Engine

    torch.manual_seed(0)
    memory.marks.clear()
    before = memory.rss_mb()
    t0 = time.perf_counter()
    engine = Engine(config)
    load_s = time.perf_counter() - t0
    load_peak = memory.peak_rss_mb()
    baseline = memory.marks.get("baseline_rss_mb", before)  # no checkpoint: before the engine
    vocab = engine.spec.vocab_size
    result: dict[str, Any] = {
        "model": model_label(config.model),
        "dtype": config.model.dtype,
        "quant": config.quant.name,
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
    }
    if config.model.path is not None:
        result["model_path"] = config.model.path
    ids = torch.randint(0, vocab, (1, prefill_tokens), generator=torch.Generator().manual_seed(0))
    engine.logits(ids[:, :16], last_only=True)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        engine.logits(ids, last_only=True)  # a prompt's prefill: the next token's logits
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

    # the high-water mark of one sequence (load, prefill, decode), before the batch's KV cache
    peak_one = memory.peak_rss_mb()
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
    result.update(memory.report(engine.model, baseline, load_peak, peak_one))
    result["rss_mb"] = round(memory.rss_mb(), 1)
    if engine.parallel.world_size > 1:  # every rank's memory, reported by rank 0
        import torch.distributed as dist

        per_rank: list[Any] = [None] * engine.parallel.world_size
        dist.all_gather_object(per_rank, (result["peak_rss_mb"], result["rss_mb"]))
        result["parallel"] = f"{config.parallel.name} x{engine.parallel.world_size}"
        result["rank_peak_rss_mb"] = [p for p, _ in per_rank]
        result["rank_rss_mb"] = [r for _, r in per_rank]
    result["rank"] = engine.parallel.rank
    engine.close()
    return result


def main(config: Config) -> int:
    threads = os.environ.get("PLUGFORMER_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    result = run(config)
    if result.pop("rank") == 0:  # under torchrun: one line, from rank 0
        print(json.dumps(result), file=sys.stdout)
    return 0
