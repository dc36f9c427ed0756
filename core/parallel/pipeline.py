"""Pipeline parallelism over a built decoder: contiguous layers per stage (one stage per rank),
hidden states passed between stages with torch.distributed point-to-point messages, a batch run
as micro-batches so that stages overlap (GPipe's schedule, Huang et al., 2019,
arXiv:1811.06965, forward only).

Stage 0 holds the embedding, the last stage the final norm and the head; the logits are
broadcast from the last stage, so every rank runs the same generation loop and samples the same
tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from plugformer.core.errors import ConfigError
from plugformer.core.model.decoder import Decoder
from plugformer.core.model.kv_cache import KVCache
from plugformer.core.parallel.distributed import broadcast, recv, send, wait


def split_problems(num_layers: int, stages: int, split: list[int] | None) -> list[str]:
    """Why ``num_layers`` cannot run as ``stages`` stages of ``split`` layers each."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        return [f"parallel.stages={stages!r} must be a positive integer"]
    if stages > num_layers:
        return [f"parallel.stages={stages} is more than the model's {num_layers} layers"]
    if split is None:
        return []
    split = list(split)
    if len(split) != stages or any(isinstance(k, bool) or not isinstance(k, int) for k in split):
        return [f"parallel.split={split} must list {stages} integers (layers per stage)"]
    if any(k < 1 for k in split) or sum(split) != num_layers:
        return [
            f"parallel.split={split} must give every stage at least one layer and sum to the "
            f"model's {num_layers} layers"
        ]
    return []


def balanced_split(costs: list[float], stages: int, last_extra: float = 0.0) -> list[int]:
    """Layers per stage: contiguous runs of layers with ``costs`` (parameters read per token)
    minimising the largest stage's cost, the last stage also paying ``last_extra`` (the head)."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[s][i]: the smallest possible maximum over s stages holding the first i layers
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        extra = last_extra if s == stages else 0.0
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                cost = max(best[s - 1][j], prefix[i] - prefix[j] + extra)
                if cost < best[s][i]:
                    best[s][i], cut[s][i] = cost, j
    sizes, i = [], n
    for s in range(stages, 0, -1):
        j = cut[s][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]


def _params(m: nn.Module) -> float:
    return float(sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers()))


def default_split(model: Decoder, stages: int) -> list[int]:
    costs = [_params(block) for block in model.layers]
    head = _params(model.head) if model.head is not None else 0.0
    return balanced_split(costs, stages, head)


class PipelineStage(nn.Module):
    """This rank's stage of a decoder: called like the decoder, returns the full logits."""

    def __init__(
        self, model: Decoder, rank: int, stages: int, split: list[int], micro_batches: int
    ) -> None:
        super().__init__()
        start = sum(split[:rank])
        stop = start + split[rank]
        model.layers = nn.ModuleList(list(model.layers)[start:stop])
        self.first, self.last = rank == 0, rank == stages - 1
        if not self.first:
            model.embed, model.embed_norm = None, None
        if not self.last:
            model.norm, model.head = None, None
        self.model = model
        self.rank, self.stages, self.layers = rank, stages, (start, stop)
        self.micro_batches = micro_batches
        self.spec = model.spec
        floats = [p for p in model.parameters() if p.is_floating_point()]
        self.dtype = floats[0].dtype if floats else torch.float32

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        valid: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        # x: token ids [B, S] (read by the first stage only) -> logits [B, S or 1, vocab]
        b, s = x.shape[:2]
        device = x.device
        if positions is None:
            positions = torch.arange(s, device=device).expand(b, s)
        slots = cache.advance(positions, valid) if cache is not None else None
        m = max(1, min(self.micro_batches or self.stages, b))
        bounds = [(i * b // m, (i + 1) * b // m) for i in range(m)]
        hidden = self.spec.hidden_size
        outs: list[torch.Tensor] = []
        pending = []
        for r0, r1 in bounds:
            pos = positions[r0:r1]
            ok = valid[r0:r1] if valid is not None else None
            rows = cache.rows(r0, r1, slots) if cache is not None and slots is not None else None
            if self.first:
                h = self.model.embed_tokens(x[r0:r1], pos)  # [b, S, hidden]
            else:
                h = recv(
                    torch.empty(r1 - r0, s, hidden, dtype=self.dtype, device=device), self.rank - 1
                )
            dtype = rows.dtype if rows is not None else h.dtype  # attention's (the cache's)
            h = self.model.run_layers(h, self.model.context(pos, ok, rows, dtype))
            if self.last:
                outs.append(self.model.finish(h[:, -1:] if last_only else h))
            else:
                h = h.contiguous()
                pending.append((send(h, self.rank + 1), h))  # h stays alive until sent
        for work, _ in pending:
            wait(work, f"send to rank {self.rank + 1}")
        shape = (b, 1 if last_only else s, self.spec.vocab_size)
        logits = (
            torch.cat(outs).to(self.dtype)
            if self.last
            else torch.empty(shape, dtype=self.dtype, device=device)
        )
        return broadcast(logits.contiguous(), self.stages - 1)


def make_stage(
    model: nn.Module, rank: int, stages: int, split: list[int] | None, micro_batches: int
) -> PipelineStage:
    if not isinstance(model, Decoder):
        raise ConfigError(f"pipeline parallel splits a Decoder, got {type(model).__name__}")
    sizes = list(split) if split is not None else default_split(model, stages)
    return PipelineStage(model, rank, stages, sizes, micro_batches)
