"""The engine's build phases and hooks: the attention kernel is built once, observers see every
generation (``generate``, ``chat``, ``stream``, ``stream_chat``), and the phases run alone."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest
import torch

import plugformer
from plugformer.core import AttentionConfig, AttentionDims, builder, loader

TINY = "model=tiny"  # the debug-size random model: no download


@dataclass
class CountingConfig(AttentionConfig):
    name: str = "counting"


class Counting:
    """Plain softmax attention that counts how often it is built."""

    built: list[AttentionDims] = []

    def __init__(self, config: CountingConfig, dims: AttentionDims) -> None:
        self.dims = dims
        Counting.built.append(dims)

    def check(self) -> list[str]:
        return []

    def __call__(self, q, k, v, bias):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        w = torch.softmax(q @ k.transpose(-1, -2) * self.dims.scale + bias, dim=-1)
        return w @ v


@pytest.fixture
def observed():
    loader.reset()
    Counting.built = []
    seen: list[list] = []
    module = types.ModuleType("observer")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("attention", "counting", Counting, CountingConfig)

    @plugformer.hookimpl
    def plugformer_generation_done(engine, results):
        seen.append([r.token_ids for r in results])

    module.plugformer_register = plugformer_register
    module.plugformer_generation_done = plugformer_generation_done
    plugformer.register(module)
    yield seen
    loader.reset()


def test_the_attention_kernel_is_built_once(observed):
    plugformer.Engine.from_overrides([TINY, "attention=counting"])
    assert len(Counting.built) == 1
    assert Counting.built[0].num_heads == 4  # model=tiny's heads: all of them in one process
    assert Counting.built[0].max_seq_len == 256  # the context it runs under (model=tiny)


def test_generation_done_fires_for_every_way_of_generating(observed):
    engine = plugformer.Engine.from_overrides([TINY])
    greedy = {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True}
    one = engine.generate("hi", **greedy)
    assert observed == [[one.token_ids]]
    streamed = [token for _, token in engine.stream("hi", **greedy)]
    assert streamed == one.token_ids  # the same tokens, streamed
    assert observed[-1] == [one.token_ids] and len(observed) == 2  # after the last delta
    two = engine.generate(["hi", "there"], **greedy)
    assert observed[-1] == [g.token_ids for g in two]
    stream = engine.stream("hi", **greedy)
    next(stream)
    assert len(observed) == 3  # not before the stream ends
    list(stream)
    assert len(observed) == 4


def test_the_phases_compose_by_hand():
    config = plugformer.compose([TINY])
    registry = loader.get_plugins(config.plugins).registry
    opened = builder.open_model(config, registry)
    assert opened.checkpoint is None and opened.family is None  # a random model
    r = builder.resolve(config, registry, opened)
    meta = builder.build_on_meta(r)
    assert all(p.device.type == "meta" for p in meta.parameters())
    model = builder.load(config, r, opened, meta)
    model = builder.parallelize(r, opened, builder.quantize(r, model))
    builder.fuse(config, model)
    builder.kernels(config, r, model)
    engine = plugformer.Engine(config)
    ids = torch.tensor([[256, 72, 105]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), engine.model(ids), rtol=0, atol=0)


def test_use_chat_template_is_a_generate_option():
    engine = plugformer.Engine.from_overrides([TINY])
    engine.tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    greedy = {"max_new_tokens": 2, "temperature": 0.0}
    wrapped = engine.generate("hi", **greedy)
    plain = engine.generate("hi", use_chat_template=False, **greedy)
    assert wrapped.prompt_token_ids == list(b"[hi]")  # rendered, then encoded without BOS
    assert plain.prompt_token_ids == [256, *b"hi"]  # plain text: BOS + bytes
    streamed = [t for _, t in engine.stream("hi", use_chat_template=False, **greedy)]
    assert streamed == plain.token_ids
    with pytest.raises(plugformer.ValidationError, match="use_chat_template: expected a bool"):
        engine.generate("hi", use_chat_template="yes", **greedy)
