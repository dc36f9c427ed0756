"""Start ``world`` local processes with torchrun's environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and wait for them, killing all on a time limit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(world: int, argv: list[str], timeout: float = 300.0) -> list[tuple[int, str]]:
    """Run ``python argv...`` as ``world`` ranks; returns (exit code, stderr) per rank."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ)
        env.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1",
        )  # fmt: skip
        pipe = subprocess.PIPE
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=pipe, stderr=pipe))
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((p.returncode, err.decode(errors="replace")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results
