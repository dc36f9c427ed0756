"""The engine: builds a model from a config through the registry and runs it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from plugformer.core.attention import AttentionDims
from plugformer.core.config import Config, compose
from plugformer.core.errors import ConfigError, ValidationError
from plugformer.core.loader import Plugins, get_plugins
from plugformer.core.model.decoder import Decoder, default_scale
from plugformer.core.model.kv_cache import KVCache
from plugformer.core.model.spec import ModelSpec
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
    (``Engine.from_overrides(["attention=mha"])``).
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
        self.device = torch.device(config.device)
        spec = self._spec()
        self.spec = spec
        # refusals come first, before any weights exist
        self.parallel = registry.build("parallel", config.parallel, spec)
        kernel = registry.build(
            "attention",
            config.attention,
            AttentionDims(spec.num_heads, spec.kv_heads, spec.dim_per_head, default_scale(spec)),
        )
        positional = registry.build(
            "positional",
            config.positional,
            PositionalDims(spec.num_heads, spec.dim_per_head, spec.max_seq_len),
        )
        self.quantizer = registry.build("quant", config.quant, spec)
        SamplerChain(registry, config.sampler)  # validate the configured sampling params now

        self.parallel.setup()
        model = Decoder(spec, kernel, positional)
        generator = torch.Generator().manual_seed(config.model.seed)
        model.init_weights(generator)
        model = model.to(device=self.device, dtype=dtype).eval()
        model = self.parallel.parallelize(model)
        self.model = self.quantizer.quantize(model)
        self.dtype = dtype
        self.tokenizer: Tokenizer = ByteTokenizer()
        if self.tokenizer.vocab_size > spec.vocab_size:
            raise ConfigError(
                f"model.spec.vocab_size: {spec.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size} tokens"
            )
        self.plugins.manager.hook.plugformer_engine_ready(engine=self)

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] | None = None) -> Engine:
        """An engine for Hydra overrides, e.g. ``["attention=mha", "sampler=top_p"]``."""
        return cls(compose(list(overrides or [])))

    def _spec(self) -> ModelSpec:
        model = self.config.model
        if model.path is not None:
            names = self.plugins.registry.names("checkpoint")
            raise ConfigError(
                f"model.path: no checkpoint format can read {model.path!r} (registered formats: "
                f"{', '.join(names) if names else 'none'})"
            )
        spec = dataclasses.replace(model.spec)
        spec.validate("model.spec")
        return spec

    # -- forward passes --------------------------------------------------------------------
    def _as_batch(self, token_ids: Any) -> torch.Tensor:
        ids = torch.as_tensor(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype.is_floating_point:
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

    # -- generation ------------------------------------------------------------------------
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
        max_new = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new <= 0:
            raise ValidationError(f"max_new_tokens: expected a positive integer, got {max_new!r}")
        chain = SamplerChain(
            self.plugins.registry, with_overrides(self.config.sampler, sampling_params)
        )
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.seed if seed is None else seed)
        results = [self._generate_one(p, max_new, chain, generator, ignore_eos) for p in prompts]
        self.plugins.manager.hook.plugformer_generation_done(engine=self, results=results)
        return results[0] if single else results

    def _generate_one(
        self,
        prompt: str,
        max_new: int,
        chain: SamplerChain,
        generator: torch.Generator,
        ignore_eos: bool,
    ) -> Generation:
        prompt_ids = self.tokenizer.encode(prompt)
        ids = self._as_batch(prompt_ids)  # [1, S]
        total = ids.shape[1] + max_new
        if total > self.spec.max_seq_len:
            raise ValidationError(
                f"max_new_tokens: {ids.shape[1]} prompt tokens + {max_new} new tokens exceed "
                f"the context of {self.spec.max_seq_len}"
            )
        spec = self.spec
        cache = KVCache(
            spec.num_layers, 1, spec.kv_heads, total, spec.dim_per_head, self.dtype, self.device
        )
        positions = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)  # [1, S]
        logits = self.model(ids, positions, cache)[:, -1]  # [1, V]
        history = ids
        new: list[int] = []
        eos = set(self.tokenizer.eos_token_ids)
        finish = "length"
        prompt_lengths = torch.tensor([ids.shape[1]], device=self.device)
        for step in range(max_new):
            ctx = SamplingContext(history, prompt_lengths, generator)
            token = chain.sample(logits, ctx)  # [1]
            new.append(int(token[0]))
            history = torch.cat([history, token.unsqueeze(0)], dim=1)
            if not ignore_eos and new[-1] in eos:
                finish = "stop"
                break
            if step + 1 < max_new:
                pos = torch.full((1, 1), ids.shape[1] + step, device=self.device)
                logits = self.model(token.unsqueeze(0), pos, cache)[:, -1]
        text_ids = [t for t in new if t not in eos] if finish == "stop" else new
        return Generation(self.tokenizer.decode(text_ids), new, prompt_ids, finish)
