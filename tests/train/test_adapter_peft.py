"""Adapters against PEFT: a PEFT adapter loads into plugformer with PEFT's logits, plugformer's
adapter loads into PEFT with plugformer's logits, N training steps give PEFT's weights, merging
changes no logit, and what PEFT has that plugformer does not compute is refused by name.

Tolerances (float32 on the CPU): the base models agree to ~1e-5 of the logits' scale (our
attention and transformers' eager attention sum in other orders); the adapter adds two small
GEMMs computed in the same order as PEFT's (``B(A(x)) * scaling``), so logits agree to 2e-5.
After three AdamW steps at lr 1e-3 the adapter weights agree to 1e-5 (Adam's m / sqrt(v)
normalisation carries the gradients' rounding differences into each update at ~lr scale).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import hf_model  # tests/train/conftest.py

import plugformer
from plugformer.core.adapters import peft as adapter_files
from plugformer.core.adapters.attach import adapters_of
from plugformer.core.cli import main
from plugformer.core.errors import CheckpointError, ConfigError
from plugformer.core.train.trainer import Trainer

peft = pytest.importorskip("peft")

TEXT = Path(__file__).resolve().parents[1] / "data" / "heldout_en.txt"
IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3)).tolist()

#: PEFT LoraConfig keyword sets: the plain adapter, rsLoRA over every linear layer, DoRA
KINDS = {
    "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "rslora-all": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "use_rslora": True},
    "dora": {"r": 4, "lora_alpha": 4, "target_modules": ["o_proj", "down_proj"], "use_dora": True},
}


def _peft_model(path: Path, **lora):
    """transformers' model with a PEFT adapter whose A and B are both random
    (``init_lora_weights=False``), so that the adapter changes the logits."""
    torch.manual_seed(1)
    cfg = peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora)
    return peft.get_peft_model(hf_model(path), cfg).eval()


def _peft_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_peft_adapter_gives_peft_logits(family, kind, hf_model_dir, tmp_path):
    path = hf_model_dir(family)
    model = _peft_model(path, **KINDS[kind])
    model.save_pretrained(tmp_path / "adapter")
    want = _peft_logits(model)
    engine = plugformer.Engine.from_overrides(
        [f"model.path={path}", f"adapter.path={tmp_path / 'adapter'}"]
    )
    torch.testing.assert_close(engine.logits(IDS), want, rtol=2e-5, atol=2e-5)
    base = engine.logits(IDS, adapter="none")
    assert (base - want).abs().max() > 1e-2  # the adapter does change them
    expected = "dora" if kind == "dora" else "lora"
    assert adapters_of(engine.model).by_name["default"].config.name == expected


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_our_adapter_gives_our_logits_in_peft(name, hf_model_dir, tmp_path):
    path = hf_model_dir("llama")
    engine = plugformer.Engine.from_overrides(
        [f"model.path={path}", f"adapter={name}", "adapter.r=4", "adapter.rslora=true",
         "adapter.target_modules=[q_proj,k_proj,up_proj]"]
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B and the magnitude off their start
        for n, p in engine.model.named_parameters():
            if "lora_B" in n or "magnitude" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ours = engine.logits(IDS)
    out = adapter_files.save(engine.model, tmp_path / "ours", base_model=str(path))
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["target_modules"] == ["k_proj", "q_proj", "up_proj"]
    assert saved["use_dora"] is (name == "dora") and saved["use_rslora"] is True
    theirs = peft.PeftModel.from_pretrained(hf_model(path), str(out)).eval()
    torch.testing.assert_close(ours, _peft_logits(theirs), rtol=2e-5, atol=2e-5)


def test_mixed_adapters_in_one_batch_equal_each_alone(hf_model_dir, tmp_path):
    path = hf_model_dir("llama")
    for kind in ["lora", "dora"]:
        _peft_model(path, **KINDS[kind]).save_pretrained(tmp_path / kind)
    engine = plugformer.Engine.from_overrides([f"model.path={path}"])
    assert engine.load_adapter(str(tmp_path / "lora")) == "lora"
    assert engine.load_adapter(str(tmp_path / "dora"), name="d") == "d"
    prompts = [[256, 72, 105], [256, 40, 41, 42, 43], [256, 9]]
    rows = ["lora", "none", "d"]
    mixed = engine.generate(prompts, max_new_tokens=6, ignore_eos=True, adapter=rows)
    for prompt, name, got in zip(prompts, rows, mixed, strict=True):
        alone = engine.generate(prompt, max_new_tokens=6, ignore_eos=True, adapter=name)
        assert got.token_ids == alone.token_ids, name
    lora = engine.logits(IDS, adapter="lora")
    torch.testing.assert_close(
        lora, _peft_logits(_peft_model(path, **KINDS["lora"])), rtol=2e-5, atol=2e-5
    )
    with pytest.raises(plugformer.ValidationError, match="'nope' is not a loaded adapter"):
        engine.generate("hi", adapter="nope")


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merge_changes_no_logit(kind, hf_model_dir, tmp_path, capsys):
    path = hf_model_dir("llama")
    _peft_model(path, **KINDS[kind]).save_pretrained(tmp_path / "a")
    args = [f"model.path={path}", f"adapter.path={tmp_path / 'a'}"]
    unmerged = plugformer.Engine.from_overrides(args).logits(IDS)
    assert main(["merge", *args, f"output_dir={tmp_path / 'merged'}"]) == 0
    assert "wrote" in capsys.readouterr().out
    merged = plugformer.Engine.from_overrides([f"model.path={tmp_path / 'merged'}"])
    torch.testing.assert_close(merged.logits(IDS), unmerged, rtol=2e-5, atol=2e-5)
    assert merged.tokenizer.encode("hi") == plugformer.Engine.from_overrides(
        [f"model.path={path}"]
    ).tokenizer.encode("hi")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"modules_to_save": ["lm_head"]}, 'modules_to_save=["lm_head"]'),
        ({"rank_pattern": {"q_proj": 2}}, "rank_pattern="),
        ({"bias": "all"}, 'bias="all"'),
        ({"init_lora_weights": "pissa"}, "init_lora_weights="),
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported"),
        ({"target_modules": ["q_proj", "c_fc"]}, "'c_fc' matches no linear layer"),
    ],
    ids=["modules_to_save", "rank_pattern", "bias", "pissa", "ia3", "missing-module"],
)
def test_unknown_peft_features_are_refused_by_name(edit, message, hf_model_dir, tmp_path):
    path = hf_model_dir("llama")
    _peft_model(path, **KINDS["lora"]).save_pretrained(tmp_path / "a")
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[")):
        plugformer.Engine.from_overrides([f"model.path={path}", f"adapter.path={tmp_path / 'a'}"])


def test_tensors_of_modules_the_model_lacks_are_refused(hf_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    path = hf_model_dir("llama")
    _peft_model(path, **KINDS["lora"]).save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"modules this model does not have: .*layers\.7"):
        plugformer.Engine.from_overrides([f"model.path={path}", f"adapter.path={tmp_path / 'a'}"])


def test_bad_adapter_settings_are_refused_before_training(hf_model_dir, tmp_path):
    path = hf_model_dir("llama")
    base = [f"model.path={path}", f"train.data={TEXT}", f"train.output_dir={tmp_path}",
            "train.seq_len=32"]  # fmt: skip
    with pytest.raises(plugformer.RefusedError, match=r"adapter\.r must be a positive integer"):
        Trainer(plugformer.compose([*base, "adapter=lora", "adapter.r=0"]))
    with pytest.raises(ConfigError, match="'qkv' matches no linear layer"):
        Trainer(plugformer.compose([*base, "adapter=lora", "adapter.target_modules=[qkv]"]))
    with pytest.raises(ConfigError, match="parallel=fsdp does not shard adapters yet"):
        Trainer(plugformer.compose([*base, "adapter=lora", "parallel=fsdp"]))
    with pytest.raises(ConfigError, match="fuse_projections"):
        plugformer.Engine.from_overrides([*base[:1], "adapter=lora", "fuse_projections=true"])


# -- training ------------------------------------------------------------------------------
def _trainer(path: Path, tmp_path: Path, *extra: str) -> Trainer:
    config = plugformer.compose(
        [
            f"model.path={path}", f"train.data={TEXT}", "train.seq_len=32", "train.batch_size=4",
            "train.eval_fraction=0", "train.lr=1e-3", "train.weight_decay=0.1",
            "schedule=constant", "train.clip_grad=null", f"train.output_dir={tmp_path / 'run'}",
            "train.progress=false", "adapter.r=4", "adapter.alpha=8",
            "adapter.target_modules=[q_proj,v_proj,down_proj]", *extra,
        ]
    )  # fmt: skip
    return Trainer(config)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_adapter_training_equals_peft(name, hf_model_dir, tmp_path):
    """The same initial adapter (ours, saved and loaded by PEFT as trainable), the same
    batches, AdamW with the same parameter groups: the same losses and adapter weights."""
    path = hf_model_dir("llama")
    trainer = _trainer(path, tmp_path, f"adapter={name}")
    start = adapter_files.save(trainer.module, tmp_path / "start")
    ref = peft.PeftModel.from_pretrained(hf_model(path), str(start), is_trainable=True)
    named = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    assert len(named) == len([p for p in trainer.module.parameters() if p.requires_grad])
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]  # DoRA's magnitudes: no weight decay
    groups = [{"params": decay, "weight_decay": 0.1}]
    groups += [{"params": rest, "weight_decay": 0.0}] if rest else []
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    seen = 0
    for _ in range(3):
        ids, labels, valid = trainer.data.batch(trainer.data.next_indices(seen, 4))
        seen += 4
        ours = trainer.step()
        out = ref(input_ids=ids, attention_mask=valid.long(), labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        assert ours["loss"] == pytest.approx(float(out.loss.detach()), rel=1e-5)
    ref.save_pretrained(tmp_path / "theirs")
    end = adapter_files.save(trainer.module, tmp_path / "end")
    from safetensors.torch import load_file

    mine = load_file(str(end / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
    assert set(mine) == set(theirs)
    first = load_file(str(start / "adapter_model.safetensors"))
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, rtol=0, atol=1e-5)
    assert max(float((theirs[k] - first[k]).abs().max()) for k in first) > 1e-3  # it trained


def test_only_the_adapter_trains_and_is_saved_as_peft(hf_model_dir, tmp_path, capsys):
    path = hf_model_dir("llama")
    args = [f"model.path={path}", f"train.data={TEXT}", "train.seq_len=32", "train.steps=3",
            "train.batch_size=2", f"train.output_dir={tmp_path}", "train.progress=false",
            "adapter=lora", "train.lr=1e-2"]  # fmt: skip
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    final = tmp_path / "final"
    assert f"plugformer generate model.path={path} adapter.path={final}" in out
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"
    ]  # fmt: skip
    base = plugformer.Engine.from_overrides([f"model.path={path}"])
    tuned = plugformer.Engine.from_overrides([f"model.path={path}", f"adapter.path={final}"])
    assert (tuned.logits(IDS) - base.logits(IDS)).abs().max() > 1e-4
    # the checkpoints hold the adapter alone
    from safetensors.torch import load_file

    from plugformer.core.train import checkpoint

    ckpt = checkpoint.complete(tmp_path)[-1]
    saved = load_file(str(ckpt / "model.safetensors"))
    assert saved and all(".adapters.default." in k for k in saved)


def test_generate_with_an_adapter_from_the_command_line(hf_model_dir, tmp_path, capsys):
    path = hf_model_dir("llama")
    _peft_model(path, **KINDS["lora"]).save_pretrained(tmp_path / "a")
    args = [f"model.path={path}", f"adapter.path={tmp_path / 'a'}", "max_new_tokens=6",
            "ignore_eos=true", "--quiet", "--ids", "256,72,105"]  # fmt: skip
    assert main(["generate", *args]) == 0
    printed = capsys.readouterr().out
    engine = plugformer.Engine.from_overrides(args[:2])
    want = engine.generate([256, 72, 105], max_new_tokens=6, ignore_eos=True)
    base = engine.generate([256, 72, 105], max_new_tokens=6, ignore_eos=True, adapter="none")
    assert printed == want.text + "\n"
    assert want.token_ids != base.token_ids  # the adapter shows in the tokens
