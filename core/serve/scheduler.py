"""Continuous batching: requests join and leave the running batch between steps, over a paged
KV cache, with chunked prefill and preemption.

Each :meth:`Scheduler.step`:

1. plans the step within ``max_num_batched_tokens``: running sequences first (one token for a
   decoding sequence, the next chunk of a prompt still being prefilled), then waiting requests
   in order (FCFS, or ``priority`` then arrival), while ``max_num_seqs`` and free blocks allow.
   When a running sequence needs a block and none is free, the newest running sequence is
   preempted: its blocks go back, and it waits to be recomputed (its prompt and the tokens it
   already generated, prefilled again) before it continues;
2. runs the planned rows in as few forward passes as padding allows (left-padded, each row at
   its own positions, reading and writing its own blocks; :func:`groups_of`): decoding rows and
   prompt chunks of similar length together, a long chunk apart;
3. samples each sequence that reached the end of its known tokens, with its own sampler chain,
   seed and history, exactly as ``Engine.generate`` samples it alone, and streams the text.

A request whose prompt can never fit the pool is refused when added; an abort frees its blocks
at once; a NaN in one row ends that request with an error and not its neighbours; an exception
in a forward pass fails the requests of that pass and the loop keeps serving.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core.errors import ValidationError
from plugformer.core.generation import Row, Rules, new_row
from plugformer.core.interfaces.sampler import SamplingContext
from plugformer.core.model.kv_cache import cache_dtype
from plugformer.core.serve.paged import BlockPool, PagedBatch

POLICIES = ("fcfs", "priority")


@dataclass
class Output:
    """What one step produced for one request."""

    request_id: str
    delta: str  # text that may be shown now
    token_id: int | None  # the new token (None: a request ended without one)
    finished: bool
    finish_reason: str | None = None  # stop | length | abort | error
    error: str | None = None


@dataclass
class Sequence:
    """One request's state."""

    request_id: str
    prompt_ids: list[int]
    row: Row
    rules: Rules
    arrival: int
    priority: int = 0
    blocks: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose keys and values are in its blocks
    keys: list[bytes] = field(default_factory=list)  # prefix keys of its full blocks
    registered: int = 0  # of its blocks, those recorded in the prefix cache

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.row.token_ids


#: rows share a forward pass while padding them to the longest adds at most this share
PADDING_SLACK = 0.25


def groups_of(plan: list[tuple[Sequence, int]]) -> list[list[tuple[Sequence, int]]]:
    """The step's rows in forward passes: longest chunks first, a row joining the current pass
    while the padded size (rows x longest) stays within ``1 + PADDING_SLACK`` of the tokens
    computed. Decoding rows (one token) share one pass; a 512-token prompt chunk is not padded
    into 15 one-token rows (16 x 512 positions for 527 tokens)."""
    groups: list[list[tuple[Sequence, int]]] = []
    for seq, n in sorted(plan, key=lambda p: -p[1]):
        if groups:
            g = groups[-1]
            longest, total = g[0][1], sum(m for _, m in g) + n
            if longest * (len(g) + 1) <= (1 + PADDING_SLACK) * total:
                g.append((seq, n))
                continue
        groups.append([(seq, n)])
    return groups


class Scheduler:
    """Continuous batching over an :class:`~plugformer.Engine`'s model (see the module
    docstring). ``add_request`` then ``step()`` until ``has_work()`` is False."""

    def __init__(
        self,
        engine: Any,
        *,
        block_size: int = 16,
        num_blocks: int | None = None,
        memory_gb: float = 1.0,
        max_num_seqs: int = 8,
        max_num_batched_tokens: int = 512,
        policy: str = "fcfs",
        prefix_caching: bool = False,
    ) -> None:
        for key, value in (("max_num_seqs", max_num_seqs),
                           ("max_num_batched_tokens", max_num_batched_tokens)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValidationError(
                    f"scheduler.{key}: expected a positive integer, got {value!r}"
                )
        if policy not in POLICIES:
            raise ValidationError(
                f"scheduler.policy: {policy!r} is not one of {', '.join(POLICIES)}"
            )
        self.engine, self.policy, self.prefix_caching = engine, policy, bool(prefix_caching)
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_num_batched_tokens
        spec = engine.spec
        dtype = cache_dtype(engine.dtype, engine.device)
        if num_blocks is None:
            per_token = 2 * spec.num_layers * spec.kv_heads * spec.dim_per_head * dtype.itemsize
            by_memory = int(memory_gb * 2**30 // (per_token * block_size))
            whole = max_num_seqs * -(-spec.max_seq_len // block_size)  # every seq at full length
            num_blocks = max(1, min(by_memory, whole))
        self.pool = BlockPool(num_blocks, block_size, dtype, engine.device)
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._pending: list[Output] = []
        self._ids = itertools.count()
        self.preemptions = 0  # sequences preempted so far (recomputed when readmitted)

    # -- requests ----------------------------------------------------------------------------
    def add_request(
        self,
        prompt: Any,
        request_id: str | None = None,
        max_new_tokens: int | None = None,
        priority: int = 0,
        **options: Any,
    ) -> str:
        """Queue a prompt (text or token ids) with ``Engine.generate``'s options; returns its
        id. Refused at once when its prompt cannot fit the context or the block pool."""
        seq = self.prepare(prompt, request_id, max_new_tokens, priority, **options)
        self.enqueue(seq)
        return seq.request_id

    def enqueue(self, seq: Sequence) -> None:
        """Queue a prepared request (its id must be new)."""
        if any(s.request_id == seq.request_id for s in self.waiting + self.running):
            raise ValidationError(f"request_id: {seq.request_id!r} is already queued or running")
        self.waiting.append(seq)

    def prepare(
        self,
        prompt: Any,
        request_id: str | None = None,
        max_new_tokens: int | None = None,
        priority: int = 0,
        **options: Any,
    ) -> Sequence:
        """A request checked and made ready to queue, without touching the queues (so another
        thread may prepare while a step runs)."""
        e = self.engine
        template = options.pop("use_chat_template", None)
        ids = e._prompt_ids(prompt, template)
        req = e._make_request(1, max_new_tokens=max_new_tokens, **options)
        row = new_row(ids, req.seeds[0], req, e.spec.max_seq_len, e.tokenizer_or_none, e.device)
        if self.pool.blocks_for(len(ids) + 1) > self.pool.num_blocks:
            raise ValidationError(
                f"prompt: {len(ids)} tokens need {self.pool.blocks_for(len(ids) + 1)} KV blocks "
                f"of {self.pool.block_size}; the pool has {self.pool.num_blocks}"
            )
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError(f"priority: expected an integer, got {priority!r}")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        rules = Rules(e.tokenizer_or_none, e._eos, req)
        return Sequence(rid, ids, row, rules, next(self._ids), priority)

    def abort(self, request_id: str) -> bool:
        """End a request now (its blocks go back at once); False if it is not queued or
        running. Its last output (``finish_reason="abort"``) comes with the next step."""
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    self._free(seq)
                    self._pending.append(Output(request_id, "", None, True, "abort"))
                    return True
        return False

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._pending)

    # -- one step ------------------------------------------------------------------------------
    def _order(self, seqs: list[Sequence]) -> list[Sequence]:
        if self.policy == "priority":  # lower number first, then arrival
            return sorted(seqs, key=lambda s: (s.priority, s.arrival))
        return sorted(seqs, key=lambda s: s.arrival)

    def _free(self, seq: Sequence) -> None:
        self.pool.release(seq.blocks)
        seq.blocks, seq.computed, seq.registered = [], 0, 0

    def _keys(self, seq: Sequence, blocks: int) -> list[bytes]:
        """The prefix keys of ``seq``'s first ``blocks`` full blocks."""
        bs = self.pool.block_size
        while len(seq.keys) < blocks:
            j = len(seq.keys)
            parent = seq.keys[-1] if seq.keys else b""
            seq.keys.append(self.pool.chain(parent, seq.ids[j * bs : (j + 1) * bs]))
        return seq.keys[:blocks]

    def _reuse(self, seq: Sequence) -> None:
        """A sequence being admitted takes the cached blocks of its longest cached prefix
        (at least its last token is left to compute: its logits come from that)."""
        if not self.prefix_caching or seq.blocks:
            return
        full = (len(seq.ids) - 1) // self.pool.block_size
        seq.blocks = self.pool.lookup(self._keys(seq, full))
        seq.computed = len(seq.blocks) * self.pool.block_size
        seq.registered = len(seq.blocks)

    def _remember(self, seq: Sequence) -> None:
        """Record the blocks ``seq`` has filled since the last step in the prefix cache."""
        if not self.prefix_caching:
            return
        full = seq.computed // self.pool.block_size
        for j, key in enumerate(self._keys(seq, full)[seq.registered :], seq.registered):
            self.pool.register(seq.blocks[j], key)
        seq.registered = max(seq.registered, full)

    def _grow(self, seq: Sequence, tokens: int) -> bool:
        """Blocks for ``tokens`` cached tokens of ``seq``; False if the pool has too few."""
        need = self.pool.blocks_for(tokens) - len(seq.blocks)
        if need > self.pool.free_blocks:
            return False
        if need > 0:
            seq.blocks += self.pool.allocate(need)
        return True

    def _preempt(self, keep: Sequence, planned: list[Sequence]) -> bool:
        """Preempt the last running sequence in the policy's order (the newest, for FCFS)
        that is neither ``keep`` nor already planned for this step; False if there is none."""
        others = [s for s in self.running if s is not keep and s not in planned]
        if not others:
            return False
        victim = self._order(others)[-1]
        self.preemptions += 1
        self.running.remove(victim)
        self._free(victim)
        self.waiting.append(victim)  # recomputed when it is admitted again
        return True

    def _plan(self) -> list[tuple[Sequence, int]]:
        budget, plan = self.max_tokens, list[tuple[Sequence, int]]()
        for seq in self._order(self.running):
            if seq not in self.running:  # preempted for an earlier one in this loop
                continue
            n = min(len(seq.ids) - seq.computed, budget)
            if n <= 0:
                break
            planned = [p for p, _ in plan]
            while not self._grow(seq, seq.computed + n):
                if not self._preempt(seq, planned):
                    break
            else:
                plan.append((seq, n))
                budget -= n
                continue
            self.running.remove(seq)
            self._free(seq)
            if planned:  # the others of this step hold the blocks: wait for them
                self.waiting.append(seq)
            else:  # alone, and the whole pool is too small for it: it can never go on
                capacity = self.pool.num_blocks * self.pool.block_size
                self._pending.append(Output(
                    seq.request_id, "", None, True, "error",
                    f"kv_cache: {len(seq.ids)} tokens do not fit the pool of {capacity}",
                ))  # fmt: skip
        for seq in self._order(self.waiting):
            if budget <= 0 or len(self.running) >= self.max_num_seqs:
                break
            self._reuse(seq)
            n = min(len(seq.ids) - seq.computed, budget)
            if not self._grow(seq, seq.computed + n):
                self._free(seq)  # the cached blocks it took go back
                break  # in order: a later request does not overtake this one
            self.waiting.remove(seq)
            self.running.append(seq)
            plan.append((seq, n))
            budget -= n
        return plan

    def step(self) -> list[Output]:
        """Plan, run and sample one step; returns what it produced."""
        outputs, self._pending = self._pending, []
        for group in groups_of(self._plan()):
            try:
                logits = self._forward(group)  # [B, V]
            except Exception as exc:  # the group's requests fail; the loop keeps serving
                msg = f"{type(exc).__name__}: {exc}"
                for seq, _ in group:
                    self.running.remove(seq)
                    self._free(seq)
                    outputs.append(Output(seq.request_id, "", None, True, "error", msg))
                continue
            for i, (seq, n) in enumerate(group):
                seq.computed += n
                self._remember(seq)
                if seq.computed < len(seq.ids):
                    continue  # a prompt chunk: nothing to sample yet
                outputs.append(self._sample(seq, logits[i]))
        return outputs

    def _forward(self, plan: list[tuple[Sequence, int]]) -> torch.Tensor:
        device = self.engine.device
        b, s = len(plan), max(n for _, n in plan)
        ids = torch.zeros((b, s), dtype=torch.long)
        positions = torch.zeros((b, s), dtype=torch.long)
        valid = torch.zeros((b, s), dtype=torch.bool)
        for i, (seq, n) in enumerate(plan):  # left padding: every row's last token aligned
            ids[i, s - n :] = torch.tensor(seq.ids[seq.computed : seq.computed + n])
            positions[i, s - n :] = torch.arange(seq.computed, seq.computed + n)
            valid[i, s - n :] = True
        cache = PagedBatch(self.pool, [seq.blocks for seq, _ in plan],
                           [seq.computed for seq, _ in plan])  # fmt: skip
        mask = None if bool(valid.all()) else valid.to(device)
        with torch.inference_mode():
            out = self.engine.model(ids.to(device), positions.to(device), cache, mask,
                                    last_only=True)  # fmt: skip
        return out[:, -1].float().clone()  # a normal tensor: sampling may edit it in place

    def _sample(self, seq: Sequence, logits: torch.Tensor) -> Output:
        """The next token of ``seq`` from its logits [V], as ``Engine.generate`` draws it."""
        row, rules = seq.row, seq.rules
        req = rules.req
        try:
            logits = logits.unsqueeze(0)  # [1, V]
            if len(row.token_ids) < req.min_new_tokens:
                banned = sorted(rules.eos | rules.stop_ids)
                if banned:
                    logits[:, banned] = float("-inf")
            history = torch.tensor([seq.ids], device=logits.device)
            prompt_len = torch.tensor([len(seq.prompt_ids)], device=logits.device)
            ctx = SamplingContext(history, prompt_len, row.generator, None)
            token = int(req.chain.sample(logits, ctx, [row.generator])[0])
            raw = torch.log_softmax(logits[0], dim=-1) if req.logprobs is not None else None
        except Exception as exc:  # this row only (a NaN in its logits, a sampler's error)
            self.running.remove(seq)
            self._free(seq)
            return Output(seq.request_id, "", None, True, "error", f"{type(exc).__name__}: {exc}")
        delta = rules.accept(row, token, raw)
        done = row.finish_reason is not None
        if done:
            self.running.remove(seq)
            self._free(seq)
        return Output(seq.request_id, delta, token, done, row.finish_reason)
