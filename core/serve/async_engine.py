"""The scheduler under asyncio: ``async for out in engine.add_request(prompt, ...)`` streams one
request's outputs while other requests come and go.

One background task owns the :class:`~plugformer.core.serve.scheduler.Scheduler`: between steps
it queues the requests added and the aborts asked since the last step, runs the step in a worker
thread (so the event loop keeps serving while the model computes) and hands each output to its
request's queue. A consumer that stops iterating (a client that went away) aborts its request,
so its blocks go back. Requests are checked when added: a bad one raises at once, in the
caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from plugformer.core.errors import ValidationError
from plugformer.core.serve.scheduler import Output, Scheduler, Sequence


class AsyncEngine:
    """An :class:`~plugformer.Engine` served by continuous batching; ``scheduler_options`` are
    :class:`Scheduler`'s (``block_size``, ``num_blocks``, ``max_num_seqs`` ...)."""

    def __init__(self, engine: Any, **scheduler_options: Any) -> None:
        self.scheduler = Scheduler(engine, **scheduler_options)
        self._queues: dict[str, asyncio.Queue[Output]] = {}
        self._adds: list[Sequence] = []
        self._aborts: list[str] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    async def add_request(
        self, prompt: Any, request_id: str | None = None, **options: Any
    ) -> AsyncIterator[Output]:
        """Queue ``prompt`` with ``Engine.generate``'s options (and ``priority``); yields its
        outputs until the last (``finished``). Raises ValidationError for a bad request."""
        seq = self.scheduler.prepare(prompt, request_id, **options)
        rid = seq.request_id
        if rid in self._queues:
            raise ValidationError(f"request_id: {rid!r} is already queued or running")
        queue: asyncio.Queue[Output] = asyncio.Queue()
        self._queues[rid] = queue
        self._adds.append(seq)
        self._kick()
        finished = False
        try:
            while not finished:
                out = await queue.get()
                finished = out.finished
                yield out
        finally:
            if not finished:  # the consumer stopped early: free the request's blocks
                self.abort(rid)
            self._queues.pop(rid, None)

    def abort(self, request_id: str) -> None:
        """End a request; its blocks go back before the next step."""
        self._aborts.append(request_id)
        self._kick()

    def _kick(self) -> None:
        if self._failed is not None:
            raise RuntimeError(f"the serving loop stopped: {self._failed!r}")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        assert self._wake is not None
        self._wake.set()

    async def _loop(self) -> None:
        s, wake = self.scheduler, self._wake
        assert wake is not None
        try:
            while True:
                adds, self._adds = self._adds, []
                for seq in adds:
                    s.enqueue(seq)
                aborts, self._aborts = self._aborts, []
                for rid in aborts:
                    s.abort(rid)
                if not s.has_work():
                    wake.clear()
                    if self._adds or self._aborts:
                        continue
                    await wake.wait()
                    continue
                for out in await asyncio.to_thread(s.step):
                    queue = self._queues.get(out.request_id)
                    if queue is not None:
                        queue.put_nowait(out)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # fail every waiting consumer rather than hang them
            self._failed = exc
            for rid, queue in self._queues.items():
                queue.put_nowait(
                    Output(rid, "", None, True, "error", f"{type(exc).__name__}: {exc}")
                )
            raise

    async def close(self) -> None:
        """Stop the background task (requests still running are left unfinished)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
