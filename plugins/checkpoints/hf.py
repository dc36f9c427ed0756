"""Hugging Face model directories: ``config.json`` and safetensors weights, sharded or not.

The layout ``transformers``' ``save_pretrained`` writes: ``config.json``,
``generation_config.json``, ``model.safetensors`` or ``model-XXXXX-of-YYYYY.safetensors`` shards
named by ``model.safetensors.index.json``, and the tokenizer files. Weights are memory-mapped
through :mod:`plugformer.core.checkpoints.safetensors`. Configs that ask for custom code
(``auto_map``)
are refused: remote code is never run. Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are
read only when there is no safetensors file and ``model.allow_pickle=true``, and then only with
``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from plugformer.core import hookimpl
from plugformer.core.checkpoints.safetensors import SafetensorsFile
from plugformer.core.errors import CheckpointError
from plugformer.core.interfaces.checkpoint import GENERIC, CheckpointConfig
from plugformer.core.interfaces.tokenizer import Tokenizer
from plugformer.core.tokenizers import BYTE_TOKENIZER, ByteTokenizer
from plugformer.core.tokenizers.hf import HFTokenizer

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}
MAX_JSON_BYTES = 64 * 1024 * 1024  # config.json, index.json: a few KB to a few MB in practice
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")


@dataclass
class HFConfig(CheckpointConfig):
    name: str = "hf"
    allow_pickle: bool = False  # read pickle checkpoints (torch.load(weights_only=True) only)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a small file, every failure a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (or not a regular file)")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is too large for a JSON config")
    try:
        obj = json.loads(path.read_bytes()[:MAX_JSON_BYTES].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid UTF-8 JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(obj).__name__}")
    return obj


def _shard_path(root: Path, name: Any, index: Path, tensor: str) -> Path:
    """``root / name`` for an index entry, refusing anything that leaves the model directory."""
    where = f"{index}: weight_map[{tensor!r}] = {name!r}"
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{where}: expected a file name")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith("\\"):
        raise CheckpointError(f"{where}: an absolute path points outside the model directory")
    if ".." in posix.parts or ".." in windows.parts:
        raise CheckpointError(f"{where}: '..' points outside the model directory")
    path = (root / posix).resolve()
    # The HF hub cache keeps a snapshot's files as symlinks into the repository's blobs/.
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append((root.parent.parent / "blobs").resolve())
    if not any(path.is_relative_to(a) for a in allowed):
        raise CheckpointError(f"{where}: a symlink leads outside the model directory, to {path}")
    if not path.is_file():
        raise CheckpointError(f"{where}: shard file is missing (or not a regular file)")
    return path


def _read_index(root: Path, index: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """The index's weight map (tensor -> shard name) and each shard's checked path."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: 'weight_map' must be a non-empty object")
    shards: dict[str, Path] = {}
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or name not in shards:
            shards[name] = _shard_path(root, name, index, tensor)
    return weight_map, shards


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # UnpicklingError, RuntimeError (legacy or corrupt file) ...
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True, mmap=True) failed: {e}".splitlines()[0]
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a named tensor")
    return state


class HFCheckpoint:
    """An opened HF model directory (a :class:`~plugformer.core.interfaces.Checkpoint`)."""

    def __init__(
        self, directory: Path, hf_config: dict[str, Any], generation_config: dict[str, Any]
    ) -> None:
        self.directory = directory
        self.hf_config = hf_config
        self.generation_config = generation_config
        self.files: list[Path] = []  # the weight files, in the order they were opened
        self._open: list[SafetensorsFile] = []
        self._where: dict[str, SafetensorsFile | torch.Tensor] = {}  # name -> file or tensor
        self._closed = False

    def _add_safetensors(self, path: Path) -> SafetensorsFile:
        f = SafetensorsFile(path)
        self._open.append(f)
        self.files.append(path)
        return f

    def tensor_names(self) -> Iterator[str]:
        return iter(list(self._where))

    def _source(self, name: str) -> SafetensorsFile | torch.Tensor:
        if self._closed:
            raise CheckpointError(f"{self.directory}: checkpoint is closed (reading {name!r})")
        try:
            return self._where[name]
        except KeyError:
            raise CheckpointError(f"{self.directory}: no tensor named {name!r}") from None

    def tensor_info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        src = self._source(name)
        if isinstance(src, torch.Tensor):
            return tuple(src.shape), src.dtype
        return src.info(name)

    def tensor(self, name: str) -> torch.Tensor:
        src = self._source(name)
        return src if isinstance(src, torch.Tensor) else src.tensor(name)

    def tokenizer(self) -> Tokenizer | None:
        if not (self.directory / "tokenizer.json").is_file():
            return self._byte_tokenizer()
        return HFTokenizer.from_dir(self.directory)

    def _byte_tokenizer(self) -> Tokenizer | None:
        """The byte tokenizer when ``tokenizer_config.json`` names it (a saved random model)."""
        path = self.directory / "tokenizer_config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            return None
        if isinstance(config, dict) and config.get("tokenizer_class") == BYTE_TOKENIZER:
            return ByteTokenizer()
        return None

    def drop_pages(self) -> None:
        """Drop the files' mapped pages from resident memory (called by the loader)."""
        for f in self._open:
            f.drop_pages()

    def close(self) -> None:
        self._closed = True
        for f in self._open:
            f.close()

    def __repr__(self) -> str:
        return f"HFCheckpoint({str(self.directory)!r}, {len(self._where)} tensors)"


class HFFormat:
    """Hugging Face model directories (config.json + safetensors; pickle only when allowed)."""

    def __init__(self, config: HFConfig) -> None:
        self.config = config

    def check(self) -> list[str]:
        return []

    def detect(self, path: Path) -> float:
        # a directory with config.json is the generic layout many formats share: any format
        # that recognises more of it (a quantized layout, its own index) wins over this one
        path = Path(path)
        if path.is_dir():
            return GENERIC if (path / CONFIG).is_file() else 0.0
        if path.is_file() and (path.name == CONFIG or path.suffix in (".safetensors",)):
            return GENERIC if (path.parent / CONFIG).is_file() else 0.0
        return 0.0

    def open(self, path: Path) -> HFCheckpoint:
        path = Path(path)
        chosen: Path | None = None
        if path.is_dir():
            directory = path
        elif path.is_file() and (path.name == CONFIG or path.suffix == ".safetensors"):
            directory, chosen = path.parent, (None if path.name == CONFIG else path)
        else:
            raise CheckpointError(
                f"{path}: expected a model directory, its config.json or a .safetensors file"
            )
        hf_config = _read_json(directory / CONFIG)
        asked = [k for k in REMOTE_CODE_KEYS if hf_config.get(k)]
        if asked:
            raise CheckpointError(
                f"{directory / CONFIG}: asks for custom model code ({', '.join(asked)}); "
                "plugformer never runs remote code, only its registered model families"
            )
        gen_path = directory / GENERATION_CONFIG
        generation = _read_json(gen_path) if gen_path.exists() else {}
        ckpt = HFCheckpoint(directory, hf_config, generation)
        try:
            self._load(ckpt, chosen)
        except BaseException:
            ckpt.close()
            raise
        return ckpt

    def _load(self, ckpt: HFCheckpoint, chosen: Path | None) -> None:
        d = ckpt.directory
        index = d / SAFETENSORS_INDEX
        if chosen is not None:
            listed = index.is_file() and chosen.name in _read_index(d.resolve(), index)[1]
            if not listed:
                return self._single(ckpt, chosen)
        if index.exists():
            return self._sharded(ckpt, index)
        if (d / SAFETENSORS).exists():
            return self._single(ckpt, d / SAFETENSORS)
        found = sorted(d.glob("*.safetensors"))
        if len(found) == 1:
            return self._single(ckpt, found[0])
        if found:
            raise CheckpointError(
                f"{d}: several .safetensors files ({', '.join(p.name for p in found)}) and no "
                f"{SAFETENSORS_INDEX}; point model.path at one of them"
            )
        return self._pickle(ckpt)

    def _single(self, ckpt: HFCheckpoint, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file")
        f = ckpt._add_safetensors(path)
        ckpt._where.update(dict.fromkeys(f.names(), f))

    def _sharded(self, ckpt: HFCheckpoint, index: Path) -> None:
        weight_map, shards = _read_index(ckpt.directory.resolve(), index)
        files = {name: ckpt._add_safetensors(path) for name, path in shards.items()}
        for tensor, shard in weight_map.items():
            if tensor not in files[shard]:
                raise CheckpointError(
                    f"{index}: tensor {tensor!r} is listed in shard {shard!r} but absent from it"
                )
            ckpt._where[tensor] = files[shard]
        seen: dict[str, str] = {}
        for shard, f in files.items():
            for tensor in f.names():
                if tensor in seen:
                    raise CheckpointError(
                        f"{index}: tensor {tensor!r} is present in two shards, "
                        f"{seen[tensor]!r} and {shard!r}"
                    )
                seen[tensor] = shard
                if tensor not in weight_map:
                    raise CheckpointError(
                        f"{index}: tensor {tensor!r} in shard {shard!r} is not listed in the index"
                    )

    def _pickle(self, ckpt: HFCheckpoint) -> None:
        d = ckpt.directory
        if (d / PICKLE_INDEX).exists():
            files = list(dict.fromkeys(_read_index(d.resolve(), d / PICKLE_INDEX)[1].values()))
        elif (d / PICKLE).exists():
            files = [d / PICKLE]
        else:
            files = sorted(
                p for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name not in NOT_WEIGHTS
            )
        if not files:
            raise CheckpointError(
                f"{d}: no weights found (expected {SAFETENSORS}, {SAFETENSORS_INDEX} and its "
                f"shards, or a pickle checkpoint such as {PICKLE})"
            )
        if len(files) > 1 and not (d / PICKLE_INDEX).exists():
            raise CheckpointError(
                f"{d}: several pickle files ({', '.join(p.name for p in files)}) and no "
                f"{PICKLE_INDEX}"
            )
        if not self.config.allow_pickle:
            raise CheckpointError(
                f"{d}: only a pickle checkpoint ({', '.join(p.name for p in files)}) and no "
                "safetensors; unpickling can run arbitrary code, so it is refused. Set "
                "model.allow_pickle=true to load it with torch.load(weights_only=True), or "
                "convert it to safetensors"
            )
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{path}: not a regular file")
            state = _torch_load(path)
            ckpt.files.append(path)
            for name, t in state.items():
                if name in ckpt._where:
                    raise CheckpointError(f"{path}: tensor {name!r} is present in two files")
                ckpt._where[name] = t


@hookimpl
def plugformer_register(registry):
    registry.register("checkpoint", "hf", HFFormat, HFConfig)
