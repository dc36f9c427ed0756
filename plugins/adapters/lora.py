"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685): ``y = base(x) + B(A(dropout(x))) * scaling`` with ``A`` [r, in] and ``B``
[out, r], ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``rslora``, Kalajdzievski 2023).

The low-rank layer and its initialisation are the core's
(:mod:`plugformer.core.adapters.lowrank`); the tensors are named as PEFT names them and the
config is PEFT's ``LoraConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugformer.core import hookimpl
from plugformer.core.adapters.lowrank import LowRankAdapter, LowRankConfig


@dataclass
class LoraConfig(LowRankConfig):
    name: str = "lora"


class Lora(LowRankAdapter):
    """Plain LoRA layers."""

    peft_fields: dict[str, Any] = {"use_dora": False}


@hookimpl
def plugformer_register(registry):
    registry.register("adapter", "lora", Lora, LoraConfig)
