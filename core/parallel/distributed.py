"""torch.distributed plumbing shared by the parallel strategies: the launch environment
(``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
joining and leaving the process group, and the backend: NCCL for CUDA devices, gloo otherwise.

Every collective and point-to-point operation runs under the group's timeout, so when a rank
dies the others fail with an error within ``timeout_s`` instead of waiting forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from plugformer.core.errors import PlugformerError

BACKENDS = ("auto", "gloo", "nccl")


class DistributedError(PlugformerError):
    """A collective failed: a rank died, timed out or the group could not be joined."""


@dataclass(frozen=True)
class Launch:
    """This process's place in the job, from the launcher's environment."""

    rank: int
    world_size: int
    local_rank: int


def launch_env() -> Launch | None:
    """The torchrun environment, or None when not launched by torchrun (no ``WORLD_SIZE``)."""
    world = os.environ.get("WORLD_SIZE")
    if world is None:
        return None
    rank = os.environ.get("RANK", "0")
    local = os.environ.get("LOCAL_RANK", rank)
    try:
        return Launch(int(rank), int(world), int(local))
    except ValueError:
        raise DistributedError(
            f"bad launch environment: RANK={rank!r} WORLD_SIZE={world!r} LOCAL_RANK={local!r}"
        ) from None


def world_problems(strategy: str, option: str, wanted: int) -> list[str]:
    """Why this process cannot run ``strategy`` over ``wanted`` processes (empty when it can)."""
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        return [f"parallel.{option}={wanted!r} must be a positive integer"]
    env = launch_env()
    if env is None:
        if wanted > 1:
            return [
                f"parallel={strategy} with parallel.{option}={wanted} runs {wanted} processes: "
                f"launch with torchrun --nproc-per-node {wanted} -m plugformer ..."
            ]
        return []
    if env.world_size != wanted:
        return [
            f"parallel.{option}={wanted} but the job has WORLD_SIZE={env.world_size} processes; "
            f"launch with torchrun --nproc-per-node {wanted}"
        ]
    return []


def backend_problems(backend: str, timeout_s: float) -> list[str]:
    problems = []
    if backend not in BACKENDS:
        problems.append(f"parallel.backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        problems.append(f"parallel.timeout_s={timeout_s!r} must be a positive number of seconds")
    return problems


def join(device: torch.device, backend: str, timeout_s: float) -> torch.device:
    """Join the default process group (once per process); returns this rank's device."""
    env = launch_env()
    if env is None:  # one process: a group of one, so the same code paths run
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        env = Launch(0, 1, 0)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                rank=env.rank,
                world_size=env.world_size,
                timeout=timedelta(seconds=float(timeout_s)),
            )
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the process group ({backend}): {exc}") from None
    return device


def leave() -> None:
    """Leave the default process group, if joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- operations: a failure (a dead peer, the timeout) becomes a DistributedError ------------
def _failed(what: str, exc: Exception) -> DistributedError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    rank = dist.get_rank() if dist.is_initialized() else "?"
    return DistributedError(f"rank {rank}: {what} failed (another rank died or timed out): {first}")


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over every rank, in place; returns it."""
    try:
        dist.all_reduce(t)
    except RuntimeError as exc:
        raise _failed("all-reduce", exc) from None
    return t


def all_gather_last(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` [..., n] side by side, in rank order: [..., world * n]."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    try:
        dist.all_gather(parts, t.contiguous())
    except RuntimeError as exc:
        raise _failed("all-gather", exc) from None
    return torch.cat(parts, dim=-1)


def broadcast(t: torch.Tensor, src: int) -> torch.Tensor:
    """Rank ``src``'s ``t`` on every rank, in place; returns it."""
    try:
        dist.broadcast(t, src)
    except RuntimeError as exc:
        raise _failed("broadcast", exc) from None
    return t


def send(t: torch.Tensor, dst: int) -> dist.Work | None:
    """Start sending ``t`` to rank ``dst``; wait on the returned work before reusing ``t``."""
    try:
        return dist.isend(t.contiguous(), dst)
    except RuntimeError as exc:
        raise _failed(f"send to rank {dst}", exc) from None


def wait(work: dist.Work | None, what: str) -> None:
    if work is None:
        return
    try:
        work.wait()
    except RuntimeError as exc:
        raise _failed(what, exc) from None


def recv(t: torch.Tensor, src: int) -> torch.Tensor:
    """Receive into ``t`` from rank ``src``; returns it."""
    try:
        dist.recv(t, src)
    except RuntimeError as exc:
        raise _failed(f"receive from rank {src}", exc) from None
    return t


# -- the shared part of strategies that run one process per rank ----------------------------
@dataclass
class DistributedConfig:
    """Fields of every multi-process strategy's config (mixed into its ``ParallelConfig``)."""

    backend: str = "auto"  # auto (nccl for CUDA, else gloo) | gloo | nccl
    timeout_s: float = 300.0  # a collective or message waiting longer fails (e.g. a rank died)


class GroupMember:
    """``setup``/``teardown`` of a strategy whose config has ``backend`` and ``timeout_s``;
    ``rank`` is the launcher's until the group is joined."""

    config: DistributedConfig
    rank: int

    def _start(self) -> None:
        env = launch_env()
        self.rank = env.rank if env else 0

    def _group_problems(self) -> list[str]:
        return backend_problems(self.config.backend, self.config.timeout_s)

    def setup(self, device: torch.device) -> torch.device:
        device = join(device, self.config.backend, self.config.timeout_s)
        self.rank = dist.get_rank()
        return device

    def teardown(self) -> None:
        leave()
