"""Cost of the sampler chain per token: ms per token (median of 200) at batch 1 on random
[1, 49152] logits (SmolLM2's vocabulary), each chain side by side in the same run.

    python benchmarks/sampler_chain.py [--vocab 49152] [--history 512] [--runs 200] [--threads N]

Each timed call is what the generation loop pays per token: ``SamplerChain.sample`` (the
processors, the softmax and the draw), with a token history of ``--history`` ids for the
penalties. Issue 5 asks for at most 0.5 ms on the 2-vCPU machine of DESIGN.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import plugformer
from plugformer.core.interfaces.sampler import SamplingContext
from plugformer.core.loader import load_plugins
from plugformer.core.sampling import SamplerChain, with_overrides

HEAVY = {
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.9,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
}

CHAINS: list[tuple[str, list[str], dict]] = [
    ("default (sampler=greedy)", [], {}),
    ("temperature=0.7", ["sampler=temperature"], {"temperature": 0.7}),
    ("heavy: " + " ".join(f"{k}={v}" for k, v in HEAVY.items()), ["sampler=temperature"], HEAVY),
    # peers, one knob at a time (each on top of temperature 0.7)
    ("  top_k=50", ["sampler=temperature"], {"temperature": 0.7, "top_k": 50}),
    (
        "  top_p=0.9 (no top_k: cut among the likely tokens)",
        ["sampler=temperature"],
        {"temperature": 0.7, "top_p": 0.9},
    ),
    (
        "  top_k=50 top_p=0.9",
        ["sampler=temperature"],
        {"temperature": 0.7, "top_k": 50, "top_p": 0.9},
    ),
    ("  min_p=0.05", ["sampler=temperature"], {"temperature": 0.7, "min_p": 0.05}),
    (
        "  typical_p=0.9 (no cut before it: full sort)",
        ["sampler=temperature"],
        {"temperature": 0.7, "typical_p": 0.9},
    ),
    (
        "  top_k=50 typical_p=0.9",
        ["sampler=temperature"],
        {"temperature": 0.7, "top_k": 50, "typical_p": 0.9},
    ),
    (
        "  repetition_penalty=1.1",
        ["sampler=temperature"],
        {"temperature": 0.7, "repetition_penalty": 1.1},
    ),
    (
        "  presence+frequency=0.5",
        ["sampler=temperature"],
        {"temperature": 0.7, "presence_penalty": 0.5, "frequency_penalty": 0.5},
    ),
    (
        "  no_repeat_ngram_size=3",
        ["sampler=temperature"],
        {"temperature": 0.7, "no_repeat_ngram_size": 3},
    ),
    (
        "  logit_bias (10 ids)",
        ["sampler=temperature"],
        {"temperature": 0.7, "logit_bias": {i * 97: -1.0 for i in range(10)}},
    ),
]


def time_chain(chain: SamplerChain, vocab: int, history: int, runs: int) -> float:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(1, vocab, generator=g) * 3.0 for _ in range(runs)]
    ids = torch.randint(0, vocab, (1, history), generator=g)
    ctx = SamplingContext(ids, torch.tensor([history // 2]), torch.Generator().manual_seed(1))
    for x in logits[:10]:  # warm-up
        chain.sample(x, ctx)
    times = []
    for x in logits:
        start = time.perf_counter()
        chain.sample(x, ctx)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--history", type=int, default=512, help="prompt + generated ids")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    registry = load_plugins(autoload=False).registry
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, vocab {args.vocab}, "
        f"history {args.history}, median of {args.runs}"
    )
    for label, overrides, knobs in CHAINS:
        params = with_overrides(plugformer.compose(overrides).sampler, knobs)
        chain = SamplerChain(registry, params)
        ms = time_chain(chain, args.vocab, args.history, args.runs)
        print(f"{label:<80} {ms:7.3f} ms/token  [{' -> '.join(chain.names) or 'draw only'}]")


if __name__ == "__main__":
    main()
