"""A checkpoint format of the guide's own (no paper): a directory holding ``guide.json`` and
``model.safetensors``, no pickle anywhere.

``guide.json``::

    {"format": "plugformer-guide",
     "config": {...},                  # what a config.json would hold (a family reads it)
     "generation_config": {...},       # optional: eos_token_id ...
     "tokenizer": "bytes"}             # or the name of a tokenizer.json in the directory,
                                       # with optional "bos_token" / "eos_token" texts

``detect`` answers ``SPECIFIC`` for such a directory (only this format has ``guide.json``), so
it wins over the built-in ``hf`` format's ``GENERIC`` claim when a ``config.json`` sits there
too. Tensors are read through the core's hardened, memory-mapped safetensors reader; the
tokenizer is built with ``plugformer.core.tokenizers`` (``ByteTokenizer()`` or
``from_hf_json``). The opened checkpoint declares the optional ``drop_pages`` capability, so the
loader keeps resident memory near one copy of the weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plugformer.core import CheckpointConfig, Tokenizer, hookimpl
from plugformer.core.checkpoints.safetensors import SafetensorsFile
from plugformer.core.errors import CheckpointError
from plugformer.core.interfaces.checkpoint import SPECIFIC
from plugformer.core.tokenizers import ByteTokenizer, from_hf_json

INDEX = "guide.json"
WEIGHTS = "model.safetensors"
FORMAT = "plugformer-guide"
MAX_INDEX_BYTES = 16 * 1024 * 1024


@dataclass
class GuideDirConfig(CheckpointConfig):
    name: str = "guide_dir"


def read_index(path: Path) -> dict[str, Any]:
    """``guide.json`` checked: every problem a CheckpointError naming the file and key."""
    if not path.is_file() or path.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointError(f"{path}: missing, not a regular file, or too large")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid UTF-8 JSON: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{path}: 'format' must be {FORMAT!r}")
    for key, kind in (("config", dict), ("generation_config", dict), ("tokenizer", str)):
        if key in index and not isinstance(index[key], kind):
            raise CheckpointError(f"{path}: {key!r} must be a JSON {kind.__name__}")
    if "config" not in index:
        raise CheckpointError(f"{path}: 'config' is missing")
    name = index.get("tokenizer", "bytes")
    if name != "bytes" and (Path(name).name != name or name in ("", ".", "..")):
        raise CheckpointError(f"{path}: 'tokenizer' must be 'bytes' or a file name, got {name!r}")
    return index


class GuideCheckpoint:
    """An opened guide directory (a :class:`plugformer.core.Checkpoint`)."""

    def __init__(self, directory: Path, index: dict[str, Any]) -> None:
        self.directory = directory
        self.index = index
        self.hf_config: dict[str, Any] = index["config"]
        self.generation_config: dict[str, Any] = index.get("generation_config", {})
        self.weights = SafetensorsFile(directory / WEIGHTS)

    def tensor_names(self) -> Iterator[str]:
        return iter(self.weights.names())

    def tensor_info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self.weights.info(name)

    def tensor(self, name: str) -> torch.Tensor:
        return self.weights.tensor(name)

    def tokenizer(self) -> Tokenizer | None:
        name = self.index.get("tokenizer", "bytes")
        if name == "bytes":
            return ByteTokenizer()
        return from_hf_json(
            self.directory / name,
            bos_token=self.index.get("bos_token"),
            eos_token=self.index.get("eos_token"),
        )

    def drop_pages(self) -> None:
        self.weights.drop_pages()

    def close(self) -> None:
        self.weights.close()


class GuideDir:
    """Directories with ``guide.json`` and ``model.safetensors``."""

    def __init__(self, config: GuideDirConfig) -> None:
        self.config = config

    def check(self) -> list[str]:
        return []

    def detect(self, path: Path) -> float:
        path = Path(path)
        if path.is_dir():
            return SPECIFIC if (path / INDEX).is_file() else 0.0
        return SPECIFIC if path.name == INDEX and path.is_file() else 0.0

    def open(self, path: Path) -> GuideCheckpoint:
        directory = Path(path) if Path(path).is_dir() else Path(path).parent
        return GuideCheckpoint(directory, read_index(directory / INDEX))


@hookimpl
def plugformer_register(registry):
    registry.register("checkpoint", "guide_dir", GuideDir, GuideDirConfig)
