"""The engine: builds a model from a config through the registry and runs it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core.adapters import peft as adapter_files
from plugformer.core.adapters import setup as adapter_setup
from plugformer.core.adapters.attach import adapters_of
from plugformer.core.adapters.targets import hf_module_names
from plugformer.core.builder import DTYPES, build_model  # noqa: F401 (DTYPES: public name)
from plugformer.core.config import Config, compose
from plugformer.core.errors import ConfigError, ValidationError
from plugformer.core.generation import BatchRun, Request, Row, make_request
from plugformer.core.interfaces.tokenizer import Tokenizer
from plugformer.core.loader import Plugins, get_plugins
from plugformer.core.memory import release_free_memory
from plugformer.core.sampling import SamplerChain, with_overrides


@dataclass
class Generation:
    """One generated sequence."""

    text: str  # the new text (without the prompt; stop strings and EOS cut off)
    token_ids: list[int]  # the new token ids (the final EOS / stop token included)
    prompt_token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "length" | "stop"
    stop_reason: str | int | None = None  # the stop string or stop token id that matched
    logprobs: list[float] | None = None  # log p of each new token (model distribution)
    top_logprobs: list[dict[int, float]] | None = None  # top-n alternatives per token


class Engine:
    """A model with its tokenizer, sampler chain, parallel strategy and quantizer.

    Build it from a :class:`Config` (``plugformer.compose([...])``) or from overrides
    (``Engine.from_overrides(["model=tiny", "attention=mha"])``).
    """

    def __init__(self, config: Config, plugins: Plugins | None = None) -> None:
        if not isinstance(config, Config):
            raise ConfigError(f"Engine needs a plugformer Config, got {type(config).__name__}")
        self.config = config
        self.plugins = plugins or get_plugins(config.plugins)
        adapter_setup.check_composition(config)
        opened, r, model = build_model(config, self.plugins.registry)
        self.spec, self.dtype, self.device = r.spec, r.dtype, r.device
        self.attention_config, self.positional_config = r.attention_config, r.positional_config
        self.parallel, self.quantizer = r.parallel, r.quantizer
        self.generation_config = r.generation_config
        self._tokenizer = r.tokenizer
        self.model = model
        self.family, self.checkpoint = opened.family, opened.checkpoint
        self._opened = opened
        adapter_setup.apply(model, self.plugins.registry, r.spec, opened, config, config.seed)
        self._eos = self._eos_ids()
        self.plugins.manager.hook.plugformer_engine_ready(engine=self)

    def close(self) -> None:
        """Leave the parallel strategy's process group (a no-op for one process)."""
        self.parallel.teardown()

    # -- adapters -----------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        """Names of the adapters loaded on this engine (the config's is ``default``)."""
        return list(adapters_of(self.model).by_name)

    def load_adapter(self, path: str, name: str | None = None) -> str:
        """Load the PEFT adapter directory ``path`` beside the others, under ``name`` (default:
        the directory's name); select it per request with ``generate(..., adapter=name)``."""
        if self.parallel.world_size > 1:
            raise ConfigError("adapter: not with a parallel strategy yet; use parallel=single")
        from pathlib import Path

        name = name or Path(path).expanduser().resolve().name
        if name == adapter_setup.NO_ADAPTER or name in self.adapters:
            raise ConfigError(f"adapter: the name {name!r} is taken; pass another name=")
        opened = self._opened
        names = hf_module_names(self.model, opened.checkpoint, opened.family, self.spec)
        adapter_files.load(self.model, self.plugins.registry, self.spec, path, names, name)
        return name

    def _routing(self, adapter: Any, n_rows: int) -> Any:
        """The routing context of one request: ``adapter`` None (the default: the config's
        adapter, if any), a name (``"none"``: the base model alone) or one per prompt."""
        record = adapters_of(self.model)
        if adapter is None:
            return contextlib.nullcontext()
        rows = [adapter] * n_rows if isinstance(adapter, str) else list(adapter)
        if len(rows) != n_rows:
            raise ValidationError(f"adapter: {len(rows)} names for {n_rows} prompts")
        known = [*record.by_name, adapter_setup.NO_ADAPTER]
        for r in rows:
            if not isinstance(r, str) or r not in known:
                raise ValidationError(
                    f"adapter: {r!r} is not a loaded adapter (loaded: {', '.join(known)})"
                )
        per_row = [None if r == adapter_setup.NO_ADAPTER else r for r in rows]
        return record.routing.use([], per_row)

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer; a checkpoint without one can still run ``logits``."""
        if self._tokenizer is None:
            raise ValidationError(
                "this checkpoint has no tokenizer (tokenizer.json); pass token ids to "
                "engine.logits instead of text"
            )
        return self._tokenizer

    @property
    def tokenizer_or_none(self) -> Tokenizer | None:
        """The model's tokenizer, or None for a checkpoint without one."""
        return self._tokenizer

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] | None = None) -> Engine:
        """An engine for Hydra overrides, e.g. ``["model=tiny", "sampler=top_p"]``."""
        return cls(compose(list(overrides or [])))

    def _eos_ids(self) -> set[int]:
        eos = set(self._tokenizer.eos_token_ids) if self._tokenizer is not None else set()
        value = self.generation_config.get("eos_token_id")
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list):
            eos.update(v for v in value if isinstance(v, int))
        return eos

    # -- forward passes --------------------------------------------------------------------
    def _as_batch(self, token_ids: Any) -> torch.Tensor:
        if isinstance(token_ids, torch.Tensor):
            ids = token_ids
        else:
            try:
                ids = torch.as_tensor(token_ids)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValidationError(
                    f"token_ids: expected integer ids of shape [batch, seq], got "
                    f"{type(token_ids).__name__} ({exc})"
                ) from None
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if (
            ids.dim() != 2
            or ids.shape[1] == 0
            or ids.dtype == torch.bool
            or ids.dtype.is_floating_point
            or ids.dtype.is_complex
        ):
            raise ValidationError(
                f"token_ids: expected integer ids of shape [batch, seq] with seq >= 1, got "
                f"{tuple(ids.shape)} {ids.dtype}"
            )
        bad = (ids < 0) | (ids >= self.spec.vocab_size)
        if bad.any():
            raise ValidationError(
                f"token_ids: id {int(ids[bad][0])} is outside the vocabulary "
                f"[0, {self.spec.vocab_size})"
            )
        if ids.shape[1] > self.spec.max_seq_len:
            raise ValidationError(
                f"token_ids: {ids.shape[1]} tokens exceed the context of {self.spec.max_seq_len}"
            )
        return ids.to(device=self.device, dtype=torch.long)

    @torch.inference_mode()
    def logits(
        self, token_ids: Any, last_only: bool = False, adapter: str | list[str] | None = None
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab] (float32) of a full forward pass without a cache;
        ``last_only``: of the last position only, [batch, 1, vocab] (a prompt's prefill);
        ``adapter``: as for :meth:`generate`."""
        batch = self._as_batch(token_ids)
        with self._routing(adapter, batch.shape[0]):
            out = self.model(batch, last_only=last_only).float()
        release_free_memory()  # the pass's activations: the heap would keep them
        return out

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, use_chat_template: bool | None = None) -> list[int]:
        """Token ids for a user prompt: wrapped in the chat template when the model has one
        and ``use_chat_template`` is on (None: the config's), else encoded as plain text."""
        if use_chat_template is None:
            use_chat_template = self.config.use_chat_template
        elif not isinstance(use_chat_template, bool):
            raise ValidationError(f"use_chat_template: expected a bool, got {use_chat_template!r}")
        if use_chat_template and self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}]
            if self.config.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.config.system_prompt})
            return self.encode_chat(messages)
        return self.tokenizer.encode(prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template, ready for the
        assistant's turn."""
        from plugformer.core.tokenizers.chat import render_chat

        template = self.tokenizer.chat_template
        if not template:
            raise ValidationError("messages: this model has no chat template")
        tok = self.tokenizer
        text = render_chat(
            template,
            messages,
            add_generation_prompt=True,
            bos_token=tok.decode([tok.bos_token_id], skip_special_tokens=False)
            if tok.bos_token_id is not None
            else "",
            eos_token=tok.decode([tok.eos_token_ids[0]], skip_special_tokens=False)
            if tok.eos_token_ids
            else "",
        )
        return tok.encode(text, add_special_tokens=False)

    # -- generation ------------------------------------------------------------------------
    def _prompt_ids(
        self, prompt: str | Sequence[int], use_chat_template: bool | None = None
    ) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValidationError("prompt: expected a non-empty string or token ids")
            return self.encode_prompt(prompt, use_chat_template)
        ids = list(prompt)
        if not ids:
            raise ValidationError("prompt: expected a non-empty string or token ids")
        self._as_batch(ids)  # range and type checks
        return [int(t) for t in ids]

    def _make_request(self, n_prompts: int, **options: Any) -> Request:
        known = {
            "max_new_tokens", "min_new_tokens", "ignore_eos", "stop", "stop_token_ids",
            "logprobs", "seed",
        }  # fmt: skip
        cfg = self.config
        request_opts: dict[str, Any] = {
            "min_new_tokens": cfg.min_new_tokens,
            "ignore_eos": cfg.ignore_eos,
            "stop": list(cfg.stop),
        }
        request_opts.update({k: options.pop(k) for k in list(options) if k in known})
        chain = SamplerChain(self.plugins.registry, with_overrides(self.config.sampler, options))
        return make_request(
            chain,
            self.spec.vocab_size,
            n_prompts,
            default_max_new_tokens=self.config.max_new_tokens,
            default_seed=self.config.seed,
            **{"max_new_tokens": None, **request_opts},
        )

    def _run(self, prompts: list[list[int]], req: Request) -> BatchRun:
        return BatchRun(
            self.model, self.spec, self._tokenizer, self._eos, prompts, req, self.device, self.dtype
        )

    @staticmethod
    def _result(row: Row) -> Generation:
        return Generation(
            row.text,
            row.token_ids,
            row.prompt_ids,
            row.finish_reason or "length",
            row.stop_reason,
            row.logprobs or None,
            row.top_logprobs or None,
        )

    @torch.inference_mode()
    def generate(
        self,
        prompt_or_prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        max_new_tokens: int | None = None,
        **options: Any,
    ) -> Generation | list[Generation]:
        """Generate from one prompt (returns a :class:`Generation`) or a list of prompts
        (returns a list, generated together as one left-padded batch).

        A prompt is text (wrapped in the chat template when the model has one) or token ids.
        Options: ``min_new_tokens``, ``ignore_eos``, ``stop`` (strings, cut from the text),
        ``stop_token_ids``, ``logprobs`` (top-n alternatives), ``seed`` (an int, or one per
        prompt), ``use_chat_template`` (a bool; default: the config's) and any sampler knob
        (``temperature=0.7, top_p=0.9``) for this request.
        """
        p = prompt_or_prompts
        single = isinstance(p, str) or (
            isinstance(p, Sequence) and len(p) > 0 and all(isinstance(t, int) for t in p)
        )
        prompts = [p] if single else list(p)
        if not prompts:
            raise ValidationError("prompt: expected a non-empty string, token ids, or a list")
        template = options.pop("use_chat_template", None)
        routing = self._routing(options.pop("adapter", None), len(prompts))
        ids = [self._prompt_ids(x, template) for x in prompts]  # type: ignore[arg-type]
        req = self._make_request(len(ids), max_new_tokens=max_new_tokens, **options)
        run = self._run(ids, req)
        with routing:
            for _ in run.steps():
                pass
        release_free_memory()  # the KV cache and activations: the heap would keep them
        results = [self._result(r) for r in run.rows]
        self.plugins.manager.hook.plugformer_generation_done(engine=self, results=results)
        return results[0] if single else results

    @torch.inference_mode()
    def chat(
        self, messages: list[dict[str, str]], max_new_tokens: int | None = None, **options: Any
    ) -> Generation:
        """The assistant's reply to a conversation (``[{"role": "user", "content": ...}]``);
        options as for :meth:`generate`."""
        result = self.generate(self.encode_chat(messages), max_new_tokens, **options)
        assert isinstance(result, Generation)
        return result

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        **options: Any,
    ) -> Iterator[tuple[str, int]]:
        """Yield ``(text_delta, token_id)`` for each new token of one prompt (text or ids).

        Deltas are UTF-8 safe (a character split over several tokens appears whole, once its
        last token arrives) and never show a stop string, even one that spans tokens;
        options as for :meth:`generate`."""
        template = options.pop("use_chat_template", None)
        routing = self._routing(options.pop("adapter", None), 1)
        req = self._make_request(1, max_new_tokens=max_new_tokens, **options)
        run = self._run([self._prompt_ids(prompt, template)], req)
        row = run.rows[0]
        with torch.inference_mode(), routing:
            for step in run.steps():
                for _, delta in step:
                    yield delta, row.token_ids[-1]
        release_free_memory()
        results = [self._result(row)]
        self.plugins.manager.hook.plugformer_generation_done(engine=self, results=results)

    def stream_chat(
        self, messages: list[dict[str, str]], max_new_tokens: int | None = None, **options: Any
    ) -> Iterator[tuple[str, int]]:
        """:meth:`stream` of the assistant's reply to a conversation, as :meth:`chat`."""
        return self.stream(self.encode_chat(messages), max_new_tokens, **options)
