"""The training loop: any composition the inference config can build, trained.

The model is built by the engine's own phases (:mod:`plugformer.core.builder`: open, resolve,
build on meta, load) with the same plugins, and trained through the same decoder forward that
generation uses. One optimizer step consumes ``train.batch_size`` sequences (the global batch:
over every rank and every accumulation step), so ``grad_accum`` and the number of ranks change
speed and memory, never the result: the loss of a step is the mean over the batch's scored
tokens, each micro-batch's summed token losses divided by the whole batch's token count.

``Trainer(config)`` then ``trainer.step()`` for step-by-step use, or ``trainer.run()`` (what
``plugformer train`` and :func:`plugformer.train` call) for the whole run: progress bar,
metrics, evaluation, checkpoints, resume, and the final model saved where ``model.path=`` loads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from plugformer.core import builder
from plugformer.core.adapters import peft as adapter_files
from plugformer.core.adapters import setup as adapter_setup
from plugformer.core.adapters.attach import adapters_of
from plugformer.core.config import Config, TrainConfig
from plugformer.core.errors import ConfigError, PlugformerError
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.optimizer import OptimizerSettings
from plugformer.core.interfaces.parallel import CAPABILITIES as PARALLEL_CAPABILITIES
from plugformer.core.interfaces.schedule import ScheduleDims, lr_multiplier
from plugformer.core.loader import Plugins, get_plugins
from plugformer.core.model.decoder import Decoder
from plugformer.core.progress import Progress
from plugformer.core.train import checkpoint, data, report
from plugformer.core.train.loss import chunked_token_loss
from plugformer.core.train.save import save_model

PRECISIONS = ("fp32", "bf16", "fp16")
#: train keys that may differ when resuming (they do not change what is computed)
RESUMABLE = {"resume", "output_dir", "eval_every", "save_every", "keep_last", "log_every",
             "progress"}  # fmt: skip


class TrainingError(PlugformerError):
    """Training stopped: a non-finite loss or gradient (the message names the step)."""


class Interrupted(PlugformerError):
    """Training was interrupted (SIGINT); a checkpoint was saved first."""

    exit_code = 130


def _problems(t: TrainConfig, max_seq_len: int, world: int) -> list[str]:
    out = []
    for key in ("steps", "batch_size", "seq_len", "grad_accum"):
        value = getattr(t, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            out.append(f"train.{key}: expected a positive integer, got {value!r}")
    if out:
        return out
    if t.seq_len > max_seq_len:
        out.append(f"train.seq_len: {t.seq_len} is beyond the model's context of {max_seq_len}")
    if t.batch_size % (t.grad_accum * world):
        out.append(
            f"train.batch_size: {t.batch_size} sequences do not split into "
            f"train.grad_accum={t.grad_accum} x {world} rank(s)"
        )
    if t.precision not in PRECISIONS:
        out.append(f"train.precision: {t.precision!r} is not one of {', '.join(PRECISIONS)}")
    if len(t.betas) != 2:
        out.append(f"train.betas: expected two numbers, got {list(t.betas)}")
    if not 0 <= t.eval_fraction < 1:
        out.append(f"train.eval_fraction: expected a number in [0, 1), got {t.eval_fraction}")
    if t.warmup_steps < 0 or t.warmup_steps >= t.steps:
        out.append(f"train.warmup_steps: {t.warmup_steps} must be in [0, train.steps)")
    if t.clip_grad is not None and not t.clip_grad > 0:
        out.append(f"train.clip_grad: expected a positive number or null, got {t.clip_grad}")
    if t.neftune_alpha < 0:
        out.append(f"train.neftune_alpha: expected >= 0, got {t.neftune_alpha}")
    for key in ("eval_every", "save_every", "keep_last", "log_every"):
        if getattr(t, key) < 0:
            out.append(f"train.{key}: expected >= 0, got {getattr(t, key)}")
    return out


def _writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"train.output_dir: cannot write to {str(path)!r}: {exc}") from None


def run_config(config: Config) -> dict[str, Any]:
    """The part of ``config`` a checkpoint must match to be resumed (the model, its plugins,
    the data and every train key that changes what is computed)."""
    full = dataclasses.asdict(config)
    keep = ("model", "attention", "positional", "quant", "family", "checkpoint", "optimizer",
            "schedule", "train", "device")  # fmt: skip
    out = {k: full[k] for k in keep}
    out["train"] = {k: v for k, v in full["train"].items() if k not in RESUMABLE}
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


class Trainer:
    """One training run of a config's model on ``train.data``."""

    def __init__(self, config: Config, plugins: Plugins | None = None) -> None:
        if not isinstance(config, Config):
            raise ConfigError(f"Trainer needs a plugformer Config, got {type(config).__name__}")
        t = config.train
        if not t.data:
            raise ConfigError("train.data: missing value; set it with train.data=FILE|DIR")
        self.config = config
        self.adapted = adapter_setup.wanted(config)
        adapter_setup.check_composition(config)
        self.plugins = plugins or get_plugins(config.plugins)
        registry = self.plugins.registry
        opened = builder.open_model(config, registry)
        r = builder.resolve(config, registry, opened)
        self.world, self.rank = r.parallel.world_size, r.parallel.rank
        problems = _problems(t, r.spec.max_seq_len, self.world)
        if problems:
            raise ConfigError("; ".join(problems))
        if t.precision == "fp16" and r.device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs a CUDA device (use bf16 on the CPU)")
        if config.quant.name != "none" and not self.adapted:
            raise ConfigError(
                f"quant={config.quant.name}: full training updates float weights; train "
                "first, then quantize the saved model (or train an adapter: adapter=lora)"
            )
        self.output_dir = Path(t.output_dir).expanduser()
        if self.rank == 0:
            _writable(self.output_dir)
        self.data_parallel = bool(capability(r.parallel, PARALLEL_CAPABILITIES, "data_parallel"))
        if self.world > 1 and not self.data_parallel:
            raise ConfigError(
                f"parallel={config.parallel.name} runs inference only; train with "
                "parallel=single or parallel=ddp"
            )
        self.resolved, self.opened = r, opened
        r.device = r.parallel.setup(r.device)
        self.device = r.device
        torch.manual_seed(t.seed)
        # an adapter trains over the base as stored: quantized layers stay packed (QLoRA)
        module = builder.load(config, r, opened, builder.build_on_meta(r), packed=self.adapted)
        if self.adapted:
            module = builder.quantize(r, module)
        module = self.prepare_model(module)
        if self.adapted:
            adapter_setup.apply(module, registry, r.spec, opened, config, t.seed)
            adapters_of(module).routing.sliced = True  # evaluation too: no dense kernels
        self.module = module  # the decoder itself: its parameters, saving, evaluation
        self.model = builder.parallelize(r, opened, module)  # what the forward runs
        self.tokenizer = r.tokenizer
        if self.tokenizer is None:
            raise ConfigError(
                "train.data: this checkpoint has no tokenizer to encode the data with"
            )
        self.data = data.TrainData(
            data.read_examples(
                t.data,
                self.tokenizer,
                t.seq_len,
                render_chat=data.template_renderer(self.tokenizer),
            ),
            seq_len=t.seq_len,
            eval_fraction=t.eval_fraction,
            seed=t.seed,
            pad_id=self._pad_id(),
        )
        # scored labels per train example: token i predicts label i + 1
        self._scored = [sum(1 for x in e.labels[1:] if x != data.IGNORE) for e in self.data.train]
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        settings = OptimizerSettings(t.lr, (float(t.betas[0]), float(t.betas[1])), t.weight_decay)
        self.optimizer = registry.build("optimizer", config.optimizer, named, settings)
        dims = ScheduleDims(t.steps, t.warmup_steps)
        schedule = registry.build("schedule", config.schedule, dims)
        self.scheduler = LambdaLR(self.optimizer, lambda s: lr_multiplier(schedule, dims, s))
        self.params = [p for _, p in named]
        #: what checkpoints hold: every tensor, or an adapter's alone
        self.saved_names = {n for n, _ in named} if self.adapted else None
        self.scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
        self.step_count = 0
        self.examples_seen = 0
        self.tokens_seen = 0
        self.metrics = report.Metrics(self.output_dir if self.rank == 0 else None)
        self._stop = False
        self._resume()

    def close(self) -> None:
        """Leave the parallel strategy (its process group; a no-op for one process)."""
        self.resolved.parallel.teardown()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ---------------------------------------------------------------------------
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Float parameters trainable, training mode, activation checkpointing and NEFTune."""
        t = self.config.train
        for p in model.parameters():  # an adapter's base stays frozen
            p.requires_grad_(p.is_floating_point() and not self.adapted)
        model.train()
        if isinstance(model, Decoder):
            model.set_activation_checkpointing(t.activation_checkpointing)
            if t.neftune_alpha > 0 and model.embed is not None:
                model.embed.register_forward_hook(_neftune(t.neftune_alpha))
        return model

    def _base_name(self) -> str:
        """The base model as ``model.path=`` or the zoo names it (PEFT's
        ``base_model_name_or_path``)."""
        m = self.config.model
        return str(m.path) if m.path is not None else m.name

    def _pad_id(self) -> int:
        eos = self.tokenizer.eos_token_ids if self.tokenizer is not None else []
        return int(eos[0]) if eos else 0

    # -- one step -----------------------------------------------------------------------------
    def _autocast(self) -> Any:
        p = self.config.train.precision
        if p == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def loss_sum(
        self, ids: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """(summed token cross-entropy, scored tokens) of one micro-batch on this device."""
        with self._autocast():
            return token_loss(self.model, ids.to(self.device), labels.to(self.device),
                              valid.to(self.device))  # fmt: skip

    def step(self) -> dict[str, float]:
        """One optimizer step on the next ``train.batch_size`` sequences; returns its metrics."""
        t = self.config.train
        start = time.perf_counter()
        indices = self.data.next_indices(self.examples_seen, t.batch_size)
        per_rank = t.batch_size // self.world
        mine = indices[self.rank * per_rank : (self.rank + 1) * per_rank]
        micro = per_rank // t.grad_accum
        total_tokens = sum(self._scored[i] for i in indices)  # the whole global batch
        if total_tokens == 0:
            raise TrainingError(f"step {self.step_count + 1}: the batch has no scored token")
        loss_value = 0.0
        # data parallel: the strategy averages gradients over the ranks; scaled by world_size,
        # the average is the sum, so each token weighs 1 / total_tokens as in one process
        scale = self.world if self.data_parallel else 1
        for k in range(t.grad_accum):
            ids, labels, valid = self.data.batch(mine[k * micro : (k + 1) * micro])
            last = k == t.grad_accum - 1
            with nullcontext() if last or self.world == 1 else self._no_sync():
                loss, _ = self.loss_sum(ids, labels, valid)
                loss = loss / total_tokens
                scaled = loss * scale
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_value += float(loss.detach())
        loss_value = self._reduce(loss_value)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = self._clip()
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"step {self.step_count + 1}: the loss is {loss_value} (gradient norm {norm}); "
                "stopped, the last checkpoint is kept"
            )
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.examples_seen += t.batch_size
        tokens = sum(len(self.data.train[i].input_ids) for i in indices)
        self.tokens_seen += tokens
        seconds = time.perf_counter() - start
        return {"step": self.step_count, "loss": loss_value, "lr": lr, "grad_norm": norm,
                "tokens_per_s": tokens / max(seconds, 1e-9)}  # fmt: skip

    def held(self) -> dict[str, int]:
        """Parameter and optimizer-state elements this rank holds, and the model's total (under
        FSDP a rank holds about 1/N of both)."""

        def local(t: torch.Tensor) -> int:
            return int(t.to_local().numel() if isinstance(t, DTensor) else t.numel())

        state = [v for s in self.optimizer.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor) and v.ndim > 0]  # fmt: skip
        total = sum(int(p.numel()) for p in self.params)  # a DTensor's numel is the whole
        return {"param_numel": total, "rank_param_numel": sum(local(p) for p in self.params),
                "rank_optimizer_numel": sum(local(v) for v in state)}  # fmt: skip

    def _clip(self) -> float:
        clip = self.config.train.clip_grad
        grads = [p for p in self.params if p.grad is not None]
        if clip is None:
            if not grads:
                return 0.0
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads if p.grad is not None])
            return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        norm = torch.nn.utils.clip_grad_norm_(grads, clip)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def _no_sync(self) -> Any:
        """Skip the gradient all-reduce of a micro-batch that is not the step's last."""
        if isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        if isinstance(self.model, FSDPModule):
            return _fsdp_no_sync(self.model)
        return nullcontext()

    def _reduce(self, value: float) -> float:
        """The step's loss summed over the ranks (each holds its micro-batches' share)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t)

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean token loss and perplexity of the held-out examples."""
        if not self.data.eval:
            return {}
        self.module.eval()
        total, count = 0.0, 0
        bs = max(self.config.train.batch_size // max(self.config.train.grad_accum, 1), 1)
        for s in range(0, len(self.data.eval), bs):
            ids, labels, valid = self.data.batch(
                list(range(s, min(s + bs, len(self.data.eval)))), "eval"
            )
            with self._autocast():
                dev = self.device
                loss, n = token_loss(self.module, ids.to(dev), labels.to(dev), valid.to(dev))
            total, count = total + float(loss), count + n
        self.module.train()
        mean = total / max(count, 1)
        return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0))}

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"examples_seen": self.examples_seen, "tokens_seen": self.tokens_seen,
                "config": run_config(self.config)}  # fmt: skip

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of this step: every rank gathers (a collective when the model is
        sharded), rank 0 writes."""
        weights, optimizer_state = checkpoint.gather(self.module, self.optimizer, self.saved_names)
        if self.rank != 0:
            return None
        return checkpoint.save(
            self.output_dir, self.step_count, weights, optimizer_state, self.scheduler,
            self._state(), self.config.train.keep_last,
        )  # fmt: skip

    def _resume(self) -> None:
        spec = str(self.config.train.resume).strip()
        if spec.lower() in ("false", "no", "off", "none", ""):
            return
        if spec.lower() == "auto":
            found = checkpoint.complete(self.output_dir)
            if not found:
                return
            path = found[-1]
        else:
            path = Path(spec).expanduser()
        saved = checkpoint.read_state(path).get("config", {})
        now = run_config(self.config)
        a, b = _flat(saved), _flat(now)
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differ:
            raise ConfigError(
                f"train.resume: {path} was made with another config; differing keys: "
                + ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in differ[:6])
            )
        state = checkpoint.load(path, self.module, self.optimizer, self.scheduler, self.saved_names)
        self.step_count = int(state["step"])
        self.examples_seen = int(state["examples_seen"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.resumed_from = path

    # -- the whole run ------------------------------------------------------------------------
    @contextmanager
    def _sigint(self) -> Iterator[None]:
        """SIGINT asks the loop to stop after the current step (twice: at once)."""
        if self.rank != 0 or not _main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _due(self, every: int) -> bool:
        """Whether this step is one of every ``every`` (0: never), before the last step."""
        steps = self.config.train.steps
        return bool(every) and self.step_count % every == 0 and self.step_count < steps

    def run(self) -> dict[str, Any]:
        """Train to ``train.steps``; returns the run's summary."""
        t = self.config.train
        start_step = self.step_count
        history: list[dict[str, float]] = []
        label = f"train {self.config.model.name}"
        with (
            self._sigint(),
            Progress(label, t.steps, unit="steps", enabled=t.progress and self.rank == 0) as bar,
        ):
            bar.update(start_step)
            while self.step_count < t.steps:
                if self._stop:
                    path = self.save_checkpoint()
                    raise Interrupted(f"interrupted at step {self.step_count}; saved {path}")
                m = self.step()
                if self.step_count == start_step + 1:  # what each rank holds, once
                    m.update(self.held())
                if self._due(t.eval_every):
                    m.update(self.evaluate())
                if self._due(t.log_every) or self.step_count == t.steps:
                    self.metrics.write(m)
                history.append(m)
                bar.update(
                    1, f"loss {m['loss']:.4f} lr {m['lr']:.2e} {m['tokens_per_s']:.0f} tok/s"
                )
                if self._due(t.save_every):
                    self.save_checkpoint()
        final = self.evaluate()
        if final:
            self.metrics.write({"step": self.step_count, **final})
        last = self.save_checkpoint()
        out = self.output_dir / "final"
        if self.adapted:  # a PEFT adapter directory: plugformer generate adapter.path=OUT
            if self.rank == 0:
                adapter_files.save(self.module, out, base_model=self._base_name())
                report.plot(self.output_dir)
        else:
            weights, _ = checkpoint.gather(self.module, self.optimizer)  # whole, on every rank
            if self.rank == 0:
                save_model(weights, self.resolved, self.tokenizer, out)
                report.plot(self.output_dir)
        return {
            "steps": self.step_count,
            "first_step": start_step + 1,
            "loss": history[-1]["loss"] if history else None,
            "losses": [h["loss"] for h in history],
            "eval_loss": final.get("eval_loss"),
            "eval_ppl": final.get("eval_ppl"),
            "tokens": self.tokens_seen,
            "checkpoint": str(last) if last else None,
            "model_dir": None if self.adapted else str(out),
            "adapter_dir": str(out) if self.adapted else None,
            "metrics": str(self.output_dir / report.METRICS),
        }


def token_loss(
    model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """(summed token cross-entropy, scored tokens) of a batch: ids, labels [B, S] (labels as
    HF's ``labels=``: -100 is not scored; the token at i predicts label i + 1), valid [B, S]
    (False on padding). HF's loss is this sum divided by the count. A decoder (or a data-
    parallel wrapper of one) computes it a chunk of logits at a time
    (:mod:`plugformer.core.train.loss`); a sharded (FSDP) one all at once, as its head's
    parameters are gathered only inside its forward."""
    decoder = model.module if isinstance(model, DistributedDataParallel) else model
    if (
        isinstance(decoder, Decoder)
        and decoder.head is not None
        and not isinstance(model, FSDPModule)
    ):
        return chunked_token_loss(model, decoder, ids, labels, valid, data.IGNORE)
    logits = model(ids, None, None, None if bool(valid.all()) else valid)  # [B, S, V]
    target = labels[:, 1:]  # [B, S-1]
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # [B*(S-1), V]
    loss = F.cross_entropy(flat, target.reshape(-1), ignore_index=data.IGNORE, reduction="sum")
    return loss, int((target != data.IGNORE).sum())


@contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _neftune(alpha: float) -> Any:
    """NEFTune (Jain et al., 2023, arXiv:2310.05914): uniform noise of magnitude
    ``alpha / sqrt(seq_len * hidden)`` added to the embeddings while training."""

    def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return out
        scale = alpha / math.sqrt(out.shape[1] * out.shape[2])  # out: [B, S, hidden]
        return out + torch.empty_like(out).uniform_(-scale, scale)

    return hook


def train(config: Config, plugins: Plugins | None = None) -> dict[str, Any]:
    """Run ``config``'s training (``plugformer.train``); returns the run's summary."""
    with Trainer(config, plugins) as trainer:
        return trainer.run()
