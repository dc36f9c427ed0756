"""A new architecture in YAML alone (``conf/model/alibi-parallel-tiny.yaml``: a Llama-style
decoder with ALiBi and parallel blocks): it builds from registered parts, trains, saves as
safetensors in plugformer's own layout and reloads through ``model.path=`` to the same logits.
"""

from __future__ import annotations

import json

import pytest
import torch

import plugformer
from plugformer.core.model.save import save_decoder
from plugformer.core.tokenizers.byte import ByteTokenizer

TEXT = (
    "the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog. "
    "a new architecture in yaml: alibi, parallel blocks, rmsnorm and swiglu from the registry. "
)


def test_alibi_parallel_tiny_trains_saves_and_reloads(tmp_path):
    engine = plugformer.Engine.from_overrides(["model=alibi-parallel-tiny"])
    model, spec = engine.model, engine.spec
    # the parts are the ones the YAML names, made by their plugins
    assert spec.positional == "alibi" and spec.parallel_block
    assert type(model.positional).__name__ == "ALiBi"
    assert type(model.layers[0].attn.kernel).__name__ == "GQA"
    assert type(model.layers[0].mlp).__name__ == "GatedMLP"
    assert type(model.layers[0].attn_norm).__name__ == "RMSNorm"
    assert model.layers[0].mlp_norm is None  # parallel: one norm feeds attention and MLP

    ids = torch.tensor([ByteTokenizer().encode(TEXT)])  # [1, S]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        logits = model(inputs)  # [1, S-1, V]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < 0.7 * losses[0], losses  # ln(258) = 5.55 to well below

    out = save_decoder(model, tmp_path / "alibi-parallel")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "plugformer" and config["positional"] == "alibi"
    assert (out / "model.safetensors").is_file()

    reloaded = plugformer.Engine.from_overrides([f"model.path={out}"])
    assert reloaded.family is not None and type(reloaded.family).__name__ == "Plugformer"
    assert reloaded.spec == spec
    # the same weights through the same code: identical, not merely close
    assert torch.equal(reloaded.logits(inputs), engine.logits(inputs))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("parallel_blok", True, "parallel_blok is not a plugformer ModelSpec field"),
        ("num_heads", "four", "num_heads must be"),
        ("positional", "alibii", r"unknown model\.spec\.positional 'alibii'; did you mean"),
    ],
)
def test_plugformer_config_json_is_checked(tmp_path, key, value, message):
    engine = plugformer.Engine.from_overrides(["model=alibi-parallel-tiny"])
    out = save_decoder(engine.model, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(plugformer.ConfigError, match=message):
        plugformer.Engine.from_overrides([f"model.path={out}"])
