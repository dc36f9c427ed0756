"""One rank of a multi-process test (launched by tests/parallel_launch.py, like torchrun).

argv: a JSON file with a list of scenarios, an output directory. Each scenario builds an engine
from its overrides, computes logits of ``ids`` and greedy generations of ``prompts``, and saves
them (with this rank's parameter count) to ``<out>/<name>.rank<r>.pt``. ``die`` makes that rank
exit right after building the engine, so the others must fail, not hang.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from plugformer.core.engine import Engine
from plugformer.core.errors import PlugformerError


def numel(model: torch.nn.Module) -> int:
    seen = {id(t): t.numel() for t in [*model.parameters(), *model.buffers()]}
    return sum(seen.values())


def run(scenario: dict, out: str, rank: int) -> None:
    engine = Engine.from_overrides(scenario["overrides"])
    if scenario.get("die") == rank:
        os._exit(3)
    result: dict = {"numel": numel(engine.model)}
    start = time.perf_counter()
    try:
        if "ids" in scenario:
            result["logits"] = engine.logits(scenario["ids"])
        gens = engine.generate(
            scenario["prompts"], max_new_tokens=scenario["max_new"], ignore_eos=True
        )
        result["tokens"] = [g.token_ids for g in gens]
    except PlugformerError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = time.perf_counter() - start
    torch.save(result, os.path.join(out, f"{scenario['name']}.rank{rank}.pt"))


def main() -> None:
    with open(sys.argv[1]) as f:
        scenarios = json.load(f)
    out = sys.argv[2]
    rank = int(os.environ["RANK"])
    for scenario in scenarios:
        run(scenario, out, rank)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
