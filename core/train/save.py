"""The trained model, saved where ``model.path=`` loads it: plugformer's own layout
(``config.json`` recording the spec as the model ran, ``model.safetensors``) with its tokenizer,
so ``plugformer generate model.path=OUT`` runs it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from plugformer.core.builder import Resolved
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.save import save_weights
from plugformer.core.tokenizers import save_tokenizer


def spec_as_built(r: Resolved | Any) -> ModelSpec:
    """The spec with the attention and positional plugins (and their fields) the model was
    built with, also when they were chosen by override (``positional=alibi``); ``r`` is the
    builder's :class:`Resolved` or an :class:`~plugformer.Engine` (both carry ``spec``,
    ``attention_config`` and ``positional_config``)."""

    def fields(config: Any) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(config).items() if k != "name"}

    return dataclasses.replace(
        r.spec,
        attention=r.attention_config.name,
        attention_args=fields(r.attention_config),
        positional=r.positional_config.name,
        positional_args=fields(r.positional_config),
    )


def save_model(weights: dict[str, torch.Tensor], r: Resolved, tokenizer: Any, out: Path) -> Path:
    """Write the model's ``weights`` (whole, tied ones once) and its tokenizer to ``out``."""
    save_weights(weights, spec_as_built(r), out)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    return out
