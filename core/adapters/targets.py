"""Which linear layers an adapter wraps, and their Hugging Face names.

``adapter.target_modules`` entries, each matched against a layer's Hugging Face module path
(from the checkpoint it was loaded from) and against plugformer's own path:

* a short name (``q_proj``): the path is that name or ends in ``.q_proj``, as PEFT matches a
  list; plugformer's own short names (``wq``) work too, and PEFT's Llama-style names are known
  for models without a checkpoint (``q_proj`` is ``wq``);
* ``all-linear``: every linear layer but the output head, as PEFT;
* a glob with ``*``, ``?`` or ``[``: ``fnmatch`` over the whole path (``layers.*.attn.w?``).

A saved PEFT adapter's ``target_modules`` given as one string is a regular expression that
must match a whole path, as in PEFT.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from torch import nn

from plugformer.core.adapters.layer import AdaptedLinear
from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.family import map_tensor_name
from plugformer.core.quant.linear import QuantLinear

#: PEFT's Llama-style short names -> plugformer's, for models without a checkpoint
SHORT_NAMES = {
    "q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "lm_head": "head",
}  # fmt: skip
ALL_LINEAR = "all-linear"


def linear_layers(model: nn.Module) -> list[str]:
    """Paths of the model's linear layers (dense, quantized, or already adapted), in order."""
    found: list[str] = []

    def walk(module: nn.Module, path: str) -> None:
        if isinstance(module, (nn.Linear, QuantLinear, AdaptedLinear)):
            found.append(path)
            return  # an adapted layer's base and adapter layers are not targets
        for name, child in module.named_children():
            walk(child, f"{path}.{name}" if path else name)

    walk(model, "")
    return found


def hf_module_names(model: nn.Module, checkpoint: Any, family: Any, spec: Any) -> dict[str, str]:
    """plugformer module path -> the checkpoint's module path, for every linear layer whose
    weight is one checkpoint tensor (a fused q/k/v tensor maps to no single layer and is left
    out). Without a checkpoint, plugformer's own paths."""
    ours = set(linear_layers(model))
    if checkpoint is None or family is None:
        return {name: name for name in ours}
    names: dict[str, str] = {}
    for hf_name in checkpoint.tensor_names():
        if not hf_name.endswith(".weight"):
            continue
        mapped = map_tensor_name(family, hf_name, spec, checkpoint.hf_config)
        if mapped is not None and mapped.endswith(".weight") and mapped[:-7] in ours:
            names[mapped[:-7]] = hf_name[:-7]
    return names


def _matches(pattern: str, path: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(path, pattern)
    return path == pattern or path.endswith("." + pattern)


def select(
    model: nn.Module, targets: list[str] | str, hf_names: dict[str, str], where: str
) -> list[str]:
    """The plugformer paths of the linear layers ``targets`` names (see the module docstring),
    in model order; a target that names none is refused with the model's short names."""
    linear = linear_layers(model)
    head = {n for n in linear if n == "head" or n.endswith(".head")}
    if isinstance(targets, str) and targets != ALL_LINEAR:  # PEFT: one string is a regex
        regex = re.compile(targets)
        hit = [n for n in linear if regex.fullmatch(hf_names.get(n, n)) or regex.fullmatch(n)]
        if not hit:
            raise ConfigError(f"{where}: the pattern {targets!r} matches no linear layer")
        return hit
    wanted = [targets] if isinstance(targets, str) else list(targets)
    if not wanted:
        raise ConfigError(f"{where}: empty; name the layers (e.g. [q_proj,v_proj] or all-linear)")
    if ALL_LINEAR in wanted:
        return [n for n in linear if n not in head]
    chosen: list[str] = []
    for pattern in wanted:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}: {pattern!r} is not a module name")
        ours = SHORT_NAMES.get(pattern, pattern)
        hits = [
            n
            for n in linear
            if _matches(pattern, hf_names.get(n, n)) or _matches(pattern, n) or _matches(ours, n)
        ]
        if not hits:
            short = sorted({hf_names.get(n, n).rsplit(".", 1)[-1] for n in linear})
            raise ConfigError(
                f"{where}: {pattern!r} matches no linear layer of this model; its layers' "
                f"names end in: {', '.join(short)} (or use all-linear)"
            )
        chosen += [n for n in hits if n not in chosen]
    return [n for n in linear if n in chosen]
