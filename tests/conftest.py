"""Fixtures shared by every test folder (unit/, parity/, parallel/, quant/, surface/)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

#: The tiny Llama of the transformers-based tests: 2 layers, hidden 64, 4 query heads over 2
#: KV heads (GQA), untied head. A test passes what its model needs differently.
TINY_LLAMA: dict[str, Any] = {
    "vocab_size": 160,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rope_theta": 5000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def registry():
    """The built-in plugins' registry, without third-party entry points."""
    from plugformer.core.loader import load_plugins

    return load_plugins(autoload=False).registry


@pytest.fixture(scope="session")
def tiny_hf_llama() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_hf_llama(**config)`` is a random transformers ``LlamaForCausalLM`` (eval
    mode, weights drawn after ``torch.manual_seed(0)``) of :data:`TINY_LLAMA` updated with
    ``config``. Save it with ``model.save_pretrained(path, safe_serialization=True)``."""
    transformers = pytest.importorskip("transformers")

    def build(**config: Any) -> torch.nn.Module:
        cfg = transformers.LlamaConfig(**{**TINY_LLAMA, **config})
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(cfg).eval()

    return build


@pytest.fixture(scope="session")
def config_class() -> Callable[[type, str], type]:
    """``config_class(base, name)``: a config dataclass deriving from a kind's base config
    (``QuantConfig`` ...) whose ``name`` defaults to ``name``, for plugins made inside a test."""
    import dataclasses

    def make(base: type, name: str) -> type:
        field = ("name", str, dataclasses.field(default=name))
        return dataclasses.make_dataclass(f"{name.title()}Config", [field], bases=(base,))

    return make


@pytest.fixture(scope="session")
def pip_install_target(tmp_path_factory) -> Callable[[Any, str], Any]:
    """``pip_install_target(package_dir, marker)``: install a plugin package from the
    repository with pip into a fresh target directory (no index, no build isolation, built from
    a copy so build/ and *.egg-info never land in the repository); ``marker`` is a file that
    must exist in the result. Returns the target directory, for ``sys.path``."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("setuptools")  # the build backend, used without build isolation

    def install(package: Any, marker: str) -> Any:
        src = tmp_path_factory.mktemp(f"{package.name}-src") / package.name
        ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        shutil.copytree(package, src, ignore=ignore)
        site = tmp_path_factory.mktemp(f"{package.name}-site")
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
               "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(site),
               str(src)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (site / marker).is_file(), marker
        return site

    return install
