"""Training checkpoints that survive faults: safetensors plus a small JSON state, never pickle.

A checkpoint is a directory ``checkpoint-<step:06d>/`` holding ``model.safetensors`` (the
decoder's tensors, whole even when training sharded them, tied ones once),
``optimizer.safetensors`` (the optimizer's per-parameter tensors, ``state/<param>/<key>``, and
the RNG state) and ``state.json`` (step, examples
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
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

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


#: full (unsharded) state on the CPU; under FSDP every rank calls and rank 0 holds the result
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather(
    model: torch.nn.Module, optimizer: Any, only: set[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's tensors (tied ones once; with ``only``, those names alone: an adapter's) and
    the optimizer's state keyed by parameter name, whole and on the CPU. A collective when the
    model is sharded (FSDP): every rank calls."""
    names = first_names(model.state_dict(keep_vars=True))
    if only is not None:
        names = [n for n in names if n in only]
    full: dict[str, Any] = dict(get_model_state_dict(model, options=FULL))
    weights = {n: full[n].detach().contiguous() for n in names if n in full}
    optimizer_state: dict[str, Any] = dict(get_optimizer_state_dict(model, optimizer, options=FULL))
    return weights, optimizer_state


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a name-keyed optimizer state into its tensors (``state/<param>/<key>``) and the
    JSON rest."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{param}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(param, {})[key] = value
    return tensors, {"plain": plain, "param_groups": state["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("state/"):
            _, param, key = name.split("/", 2)
            state.setdefault(param, {})[key] = t
    for param, values in rest["plain"].items():
        state.setdefault(param, {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save(
    output_dir: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``checkpoint-<step>`` atomically (``weights`` and ``optimizer_state`` as
    :func:`gather` returns them) and delete all but the newest ``keep_last``."""
    final = output_dir / f"checkpoint-{step:06d}"
    tmp = output_dir / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "model.safetensors"))
    tensors, rest = _optimizer_tensors(optimizer_state)
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


def load(
    path: Path,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Restore model (``only`` those tensors, as :func:`gather` saved them), optimizer, schedule
    and RNG from checkpoint ``path`` (whole tensors: a checkpoint of N ranks loads on M,
    sharded again when the model is); returns its state."""
    state = read_state(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
        opt = load_file(str(path / "optimizer.safetensors"))
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"train.resume: cannot read {path}: {exc}") from None
    names = first_names(model.state_dict(keep_vars=True))  # tied aliases need no tensor
    if only is not None:
        names = [n for n in names if n in only]
    absent = [n for n in names if n not in weights]
    unexpected = [n for n in weights if n not in set(model.state_dict())]
    if unexpected or absent:
        raise CheckpointError(
            f"train.resume: {path} does not fit the model "
            f"(missing {absent[:3]}, unexpected {unexpected[:3]})"
        )
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, dict(weights), options=options)
    set_optimizer_state_dict(
        model, optimizer, _optimizer_state(opt, state["optimizer"]), options=options
    )
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(opt["rng.torch"])
    return state
