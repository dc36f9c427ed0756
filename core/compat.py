"""Contract 1.x module paths, still importable for one major version with a DeprecationWarning.

Contract 2.0 moved the interfaces to :mod:`plugformer.core.interfaces` (re-exported from
:mod:`plugformer.core`) and the machinery into wings (``core/quant/``, ``core/checkpoints/`` ...).
A plugin written against 1.x (``from plugformer.core.attention import AttentionConfig``) keeps
working: the old module path is served by an alias module whose every name is looked up in the
new modules, and each lookup warns with the new path. The aliases go away in contract 3.0.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

_CORE = "plugformer.core."

#: old module (contract 1.x) -> the modules its names live in now, searched in order
MOVED: dict[str, tuple[str, ...]] = {
    "attention": ("interfaces.attention",),
    "positional": ("interfaces.positional",),
    "mlp": ("interfaces.mlp",),
    "norm": ("interfaces.norm",),
    "sampler": ("interfaces.sampler",),
    "family": ("interfaces.family",),
    "checkpoint": ("interfaces.checkpoint",),
    "tokenizer": ("interfaces.tokenizer", "tokenizers.byte", "tokenizers.hf"),
    "model.spec": ("interfaces.spec",),
    "hf_config": ("model.hf",),
    "decode_step": ("model.decode_step",),
    "qlinear": ("quant.linear",),
    "qkernels": ("quant.kernels",),
    "qmatmul_triton": ("quant.triton_matmul",),
    "qpack": ("quant.pack",),
    "qmath": ("quant.grid",),
    "quantize": ("quant.calibrate",),
    "calibration_text": ("quant.calibration_text",),
    "qcheckpoint": ("quant.load",),
    "qsave": ("quant.save",),
    "safetensors_file": ("checkpoints.safetensors",),
    "gguf_file": ("checkpoints.gguf",),
    "gguf_quants": ("checkpoints.gguf_quants",),
    "loading": ("checkpoints.load",),
    "hf_tokenizer": ("tokenizers.hf",),
    "chat": ("tokenizers.chat",),
    "distributed": ("parallel.distributed",),
    "tensor_parallel": ("parallel.tensor",),
    "pipeline_parallel": ("parallel.pipeline",),
    "bench": ("commands.bench",),
    "qcommands": ("commands.quantize", "commands.eval", "commands.options"),
    "evaluate": ("commands.eval",),
}

#: 1.x modules whose path is now a package (``core/quant.py`` became ``core/quant/``): the
#: package forwards the old names with :func:`forwarding_getattr`
PACKAGES: dict[str, tuple[str, ...]] = {
    "quant": ("interfaces.quant",),
    "parallel": ("interfaces.parallel",),
    "native": ("native.build",),
}


def _lookup(old: str, targets: tuple[str, ...], name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    for target in targets:
        module = importlib.import_module(_CORE + target)
        if hasattr(module, name):
            warnings.warn(
                f"{_CORE}{old}.{name} moved to {_CORE}{target}.{name} in plugin contract 2.0 "
                f"(import it from there, or interfaces from plugformer.core); the old path "
                f"goes away in 3.0",
                DeprecationWarning,
                stacklevel=3,
            )
            return getattr(module, name)
    raise AttributeError(f"module {_CORE}{old!r} has no attribute {name!r}")


def forwarding_getattr(package: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a 1.x module that is now a package of the same name."""
    targets = PACKAGES[package]
    return lambda name: _lookup(package, targets, name)


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        old = spec.name[len(_CORE) :]
        module = types.ModuleType(spec.name, f"Deprecated alias (contract 1.x) of {MOVED[old]}.")
        module.__getattr__ = lambda name: _lookup(old, MOVED[old], name)  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(_CORE) and fullname[len(_CORE) :] in MOVED:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader())
        return None


def install() -> None:
    """Serve the 1.x module paths (idempotent; called when :mod:`plugformer.core` loads)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
