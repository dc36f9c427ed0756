"""Absolute positions through the positional interface's ``embed`` capability: the sinusoids of
Vaswani et al. (2017) against the paper's formula, and learned positions (GPT-2's) as a
positional plugin that owns one weight, ``positional.weight``."""

from __future__ import annotations

import math

import pytest
import torch

import plugformer
from plugformer.core import PositionalDims, capability, loader
from plugformer.core.interfaces.positional import CAPABILITIES
from plugformer.core.model.save import save_decoder

TINY = "model=tiny"
IDS = torch.randint(0, 258, (2, 12), generator=torch.Generator().manual_seed(7))


def _registry():
    return loader.get_plugins().registry


def _build(name: str, dims: PositionalDims, **fields):
    registry = _registry()
    return registry.build("positional", registry.get("positional", name).config(**fields), dims)


def test_sinusoids_are_the_papers_formula():
    d, base = 12, 10000.0
    enc = _build("sinusoidal", PositionalDims(2, 6, 64, d))
    positions = torch.tensor([[0, 1, 5, 63]])
    got = capability(enc, CAPABILITIES, "embed")(positions)  # [1, 4, d]
    for j, p in enumerate(positions[0].tolist()):
        for i in range(d // 2):  # PE(p, 2i) = sin(p / base^(2i/d)), PE(p, 2i+1) = cos(...)
            angle = p / base ** (2 * i / d)
            assert got[0, j, 2 * i].item() == pytest.approx(math.sin(angle), abs=2e-6)
            assert got[0, j, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=2e-6)
    # float32 angles: 63 / 1 rad rounds to 2e-6 at most (|p| < 64, ulp(64) = 7.6e-6 / 2 ...)


def test_sinusoidal_refuses_an_odd_width():
    with pytest.raises(plugformer.RefusedError, match="even hidden_size"):
        _build("sinusoidal", PositionalDims(2, 6, 64, 13))


def test_rotary_encodings_add_nothing_to_the_embeddings():
    rope = _build("rope", PositionalDims(4, 16, 64, 64))
    assert capability(rope, CAPABILITIES, "embed") is None


@pytest.mark.parametrize("name", ["sinusoidal", "learned"])
def test_absolute_positions_change_the_logits_and_hold_through_the_cache(name):
    plain = plugformer.Engine.from_overrides([TINY, "positional=none"])
    engine = plugformer.Engine.from_overrides([TINY, f"positional={name}"])
    full = engine.logits(IDS)
    assert not torch.allclose(full, plain.logits(IDS))
    # positions are added to the token embeddings: the same prompt shifted by padding on the
    # left (its positions unchanged) gives the same greedy tokens as alone
    alone = engine.generate(IDS[0].tolist(), max_new_tokens=6, temperature=0.0, ignore_eos=True)
    both = engine.generate(
        [IDS[0].tolist(), IDS[1, :5].tolist()], max_new_tokens=6, temperature=0.0, ignore_eos=True
    )
    assert both[0].token_ids == alone.token_ids


def test_learned_positions_own_one_weight_that_saves_and_loads(tmp_path):
    # the spec's own positional encoding (what save_decoder writes into config.json)
    engine = plugformer.Engine.from_overrides([TINY, "model.spec.positional=learned"])
    names = [n for n in engine.model.state_dict() if "positional" in n]
    assert names == ["positional.weight"]  # registered once, not once per layer
    assert engine.model.state_dict()["positional.weight"].shape == (256, 64)
    assert engine.model.state_dict()["positional.weight"].std() > 0.01  # drawn like embeddings
    out = save_decoder(engine.model, tmp_path / "m")
    loaded = plugformer.Engine.from_overrides([f"model.path={out}"])
    torch.testing.assert_close(loaded.logits(IDS), engine.logits(IDS), rtol=0, atol=0)


def test_the_1x_learned_positions_flag_is_read_as_the_plugin():
    with pytest.warns(DeprecationWarning, match="positional=learned"):
        old = plugformer.Engine.from_overrides([TINY, "model.spec.learned_positions=true",
                                                "model.spec.positional=none"])  # fmt: skip
    new = plugformer.Engine.from_overrides([TINY, "model.spec.positional=learned"])
    torch.testing.assert_close(old.logits(IDS), new.logits(IDS), rtol=0, atol=0)
    with pytest.raises(plugformer.ConfigError, match="learned_positions: true cannot combine"):
        plugformer.Engine.from_overrides([TINY, "model.spec.learned_positions=true"])  # rope
