"""Training checkpoints that survive faults: safetensors plus a small JSON state, never pickle.

A checkpoint is a directory ``checkpoint-<step:06d>/`` holding ``model.safetensors`` (the
decoder's tensors, tied ones once), ``optimizer.safetensors`` (the optimizer's per-parameter
tensors, ``state.<param index>.<key>``, and the RNG state) and ``state.json`` (step, examples
seen, the optimizer's other values and groups, the schedule, the run's config). It is written
under a temporary name in the same folder, flushed to disk, then renamed: a crash while
saving leaves the previous checkpoints as they were and no half checkpoint that resume could
pick up (resume reads only ``checkpoint-<digits>`` folders that have a ``state.json``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from plugformer.core.errors import CheckpointError

NAME = re.compile(r"checkpoint-(\d{6,})")
STATE = "state.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def first_names(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of ``state`` that are a tensor's first name (tied ones appear once)."""
    seen: set[int] = set()
    names = []
    for name, t in state.items():
        if id(t) not in seen:
            seen.add(id(t))
            names.append(name)
    return names


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each shared tensor once, under its first name (tied embeddings)."""
    return {n: state[n].detach().cpu().contiguous() for n in first_names(state)}


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into its tensors and the JSON rest."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"plain": plain, "param_groups": state["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = t
    for index, values in rest["plain"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save(
    output_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``checkpoint-<step>`` atomically and delete all but the newest ``keep_last``."""
    final = output_dir / f"checkpoint-{step:06d}"
    tmp = output_dir / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(unique_tensors(model.state_dict(keep_vars=True)), str(tmp / "model.safetensors"))
    tensors, rest = _optimizer_tensors(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    _write_json(
        tmp / STATE,
        {**state, "step": step, "optimizer": rest, "scheduler": scheduler.state_dict()},
    )
    if final.exists():  # the same step saved again (a resumed run re-saving): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    for old in complete(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if NAME.fullmatch(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(NAME.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def read_state(path: Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint directory (a typed error when it is not one)."""
    file = path / STATE
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"train.resume: {str(path)!r} is not a checkpoint (no {STATE})"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"train.resume: cannot read {file}: {exc}") from None
    if not isinstance(value, dict) or "step" not in value:
        raise CheckpointError(f"train.resume: {file} is not a training state")
    return value


def load(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, schedule and RNG from checkpoint ``path``; returns its state."""
    state = read_state(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
        opt = load_file(str(path / "optimizer.safetensors"))
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"train.resume: cannot read {path}: {exc}") from None
    aliases = set(model.state_dict()) - set(
        first_names(model.state_dict(keep_vars=True))
    )  # tied names
    missing, unexpected = model.load_state_dict(weights, strict=False)
    absent = [n for n in missing if n not in aliases]
    if unexpected or absent:
        raise CheckpointError(
            f"train.resume: {path} does not fit the model "
            f"(missing {absent[:3]}, unexpected {list(unexpected)[:3]})"
        )
    optimizer.load_state_dict(_optimizer_state(opt, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(opt["rng.torch"])
    return state
