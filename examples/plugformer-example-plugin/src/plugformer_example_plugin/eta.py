"""Eta sampling (Hewitt, Manning and Liang, 2022, "Truncation Sampling as Language Model
Desmoothing", arXiv:2210.15191): drop tokens less likely than an entropy-dependent cutoff.

The cutoff is ``eta = min(eta_cutoff, sqrt(eta_cutoff) * exp(-entropy))``, with the entropy of
the row's distribution in nats: a flat distribution (high entropy) gets a lower cutoff than a
peaked one. Tokens with probability below ``eta`` are masked; the most likely token always
stays (with its ties). This matches transformers' ``EtaLogitsWarper`` (``eta_cutoff``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core import SamplerConfig, SamplingContext, hookimpl, knob


@dataclass
class EtaConfig(SamplerConfig):
    name: str = "eta"
    # the paper's recommended range is 3e-4 .. 4e-3 (larger models: smaller); 0 disables
    eta_cutoff: float = field(default=3e-4, metadata={"off": 0.0})


class Eta:
    """Mask every token whose probability is below the row's entropy-dependent cutoff."""

    priority = 50  # after temperature (20), top_k (30) and top_p (40), like transformers

    def __init__(self, eta_cutoff: float) -> None:
        self.eta_cutoff = eta_cutoff

    def check(self) -> list[str]:
        e = self.eta_cutoff
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < 1:  # NaN too
            return [f"eta_cutoff must be in [0, 1) (0 disables), got {e!r}"]
        return []

    def __call__(self, logits: torch.Tensor, ctx: SamplingContext) -> torch.Tensor:
        # logits: [B, V] float32; -inf (masked by an earlier sampler) has probability 0
        probs = torch.softmax(logits, dim=-1)  # [B, V]
        log_probs = torch.log_softmax(logits, dim=-1)
        # p log p is 0 where p is 0 (-inf logits would give 0 * -inf = nan)
        entropy = -torch.where(probs > 0, probs * log_probs, 0.0).sum(dim=-1)  # [B]
        epsilon = torch.tensor(self.eta_cutoff, dtype=logits.dtype, device=logits.device)
        eta = torch.minimum(epsilon, epsilon.sqrt() * torch.exp(-entropy)).unsqueeze(-1)  # [B, 1]
        best = logits.max(dim=-1, keepdim=True).values  # [B, 1]
        drop = (probs < eta) & (logits < best)
        return logits.masked_fill(drop, float("-inf"))


def build(params: Any) -> Eta | None:
    e = knob(params, "eta_cutoff", 0.0)
    return None if e == 0 and not isinstance(e, bool) else Eta(e)


@hookimpl
def plugformer_register(registry):
    registry.register("sampler", "eta", build, EtaConfig)
