"""Saving a decoder in plugformer's own layout: ``config.json`` (the :class:`ModelSpec` as JSON,
``model_type: plugformer``) and ``model.safetensors`` (our parameter names). The ``plugformer``
model family reads it back (``model.path=<dir>``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from plugformer.core.interfaces.spec import ModelSpec

MODEL_TYPE = "plugformer"
ARCHITECTURE = "PlugformerDecoder"


def spec_to_config(spec: ModelSpec) -> dict:
    """The config.json of a spec: its fields, plus what identifies the format."""
    return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, **dataclasses.asdict(spec)}


def save_decoder(
    model: torch.nn.Module,
    directory: str | Path,
    spec: ModelSpec | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write ``model`` (a :class:`~plugformer.core.model.decoder.Decoder`, unquantized and
    whole) to ``directory``; a tied parameter is stored once, under its first name. ``spec``
    (default: the model's) is what ``config.json`` records: pass the spec with the attention
    and positional plugins the model actually ran with when they were chosen by override.
    ``tokenizer`` (e.g. ``engine.tokenizer``) is saved beside it
    (:func:`plugformer.core.tokenizers.save_tokenizer`), so the directory runs from the command
    line with text prompts (``plugformer generate model.path=DIR "Hello"``)."""
    spec = spec if spec is not None else getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(
            f"save_decoder needs a Decoder with a ModelSpec, got {type(model).__name__}"
        )
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue  # tied (the head sharing the embedding): the loader re-ties it
        seen.add(id(tensor))
        tensors[name] = tensor.detach().cpu().contiguous().clone()
    out = save_weights(tensors, spec, directory)
    if tokenizer is not None:
        from plugformer.core.tokenizers import save_tokenizer

        save_tokenizer(tokenizer, out)
    return out


def save_weights(tensors: dict[str, torch.Tensor], spec: ModelSpec, directory: str | Path) -> Path:
    """Write a decoder's ``tensors`` (our names, tied ones once) and ``spec`` to ``directory``
    in plugformer's layout."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(spec_to_config(spec), indent=2) + "\n")
    return out
