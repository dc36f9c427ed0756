"""Training is exact against transformers: the loss and every gradient of a batch (with
padding and ``labels=-100`` masking), AdamW steps from the same weights on the same batches,
gradient accumulation and activation checkpointing changing nothing.

Tolerances (float32 on the CPU): our attention and transformers' eager attention sum in other
orders, so a loss agrees to ~1e-6 relative and gradients to ~1e-5 of their scale; after a few
AdamW steps at lr 1e-3 the weights agree to 1e-5 (Adam normalises each update to ~lr, and
the rounding differences of the gradients reach the weights through that normalisation).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import hf_model  # tests/train/conftest.py

import plugformer
from plugformer.core import loader
from plugformer.core.interfaces.family import map_tensor_name
from plugformer.core.train.data import IGNORE
from plugformer.core.train.trainer import Trainer, token_loss

TEXT = Path(__file__).resolve().parents[1] / "data" / "heldout_en.txt"


def _trainer(path: Path, tmp_path: Path, *extra: str) -> Trainer:
    config = plugformer.compose(
        [
            f"model.path={path}",
            f"train.data={TEXT}",
            "train.seq_len=32",
            "train.batch_size=4",
            "train.eval_fraction=0",
            "train.lr=1e-3",
            "train.weight_decay=0.1",
            "schedule=constant",
            "train.clip_grad=null",
            f"train.output_dir={tmp_path / 'run'}",
            "train.progress=false",
            *extra,
        ]
    )
    return Trainer(config)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows, the second right-padded, with a masked prompt in the first (labels -100)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 256, (2, 20), generator=g)
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, 13:] = False
    ids[1, 13:] = 257
    labels = ids.clone()
    labels[~valid] = IGNORE
    labels[0, :6] = IGNORE  # a prompt: not scored
    return ids, labels, valid


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_loss_and_gradients_equal_transformers(family, hf_model_dir, tmp_path):
    path = hf_model_dir(family)
    trainer = _trainer(path, tmp_path)
    ids, labels, valid = _batch()
    loss, count = token_loss(trainer.model, ids, labels, valid)
    (loss / count).backward()
    ref = hf_model(path)
    out = ref(input_ids=ids, attention_mask=valid.long(), labels=labels)
    out.loss.backward()
    torch.testing.assert_close(loss / count, out.loss, rtol=1e-5, atol=1e-6)
    assert count == int((labels[:, 1:] != IGNORE).sum())
    if family == "gpt2":  # fused, transposed Conv1D tensors: compared through their parts below
        grads = {n: p.grad for n, p in ref.named_parameters()}
        ours = dict(trainer.model.named_parameters())
        torch.testing.assert_close(ours["embed.weight"].grad, grads["transformer.wte.weight"],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
        torch.testing.assert_close(ours["positional.weight"].grad, grads["transformer.wpe.weight"],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
        torch.testing.assert_close(ours["layers.1.mlp.down.weight"].grad,
                                   grads["transformer.h.1.mlp.c_proj.weight"].t(),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
        return
    ours = dict(trainer.model.named_parameters())
    compared = 0
    for name, p in ref.named_parameters():
        mine = map_tensor_name(trainer.opened.family, name, trainer.model.spec, {})
        assert mine in ours, name
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(ours[mine].grad, p.grad, rtol=1e-4, atol=1e-5 * scale + 1e-9)
        compared += 1
    assert compared == len(ours)


def test_adamw_steps_equal_torch_adamw_on_the_transformers_model(hf_model_dir, tmp_path):
    path = hf_model_dir("llama")
    trainer = _trainer(path, tmp_path)
    ref = hf_model(path)
    named = list(ref.named_parameters())
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    seen = 0
    for _ in range(3):
        indices = trainer.data.next_indices(seen, 4)
        ids, labels, valid = trainer.data.batch(indices)
        seen += 4
        ours = trainer.step()
        out = ref(input_ids=ids, attention_mask=valid.long(), labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        assert ours["loss"] == pytest.approx(float(out.loss.detach()), rel=1e-5)
    mine = dict(trainer.model.named_parameters())
    for name, p in ref.named_parameters():
        ours_name = map_tensor_name(trainer.opened.family, name, trainer.model.spec, {})
        torch.testing.assert_close(mine[ours_name].detach(), p.detach(), rtol=0, atol=1e-5)


def _weights_after(trainer: Trainer, steps: int) -> dict[str, torch.Tensor]:
    losses = [trainer.step()["loss"] for _ in range(steps)]
    return {"losses": torch.tensor(losses)} | {
        n: p.detach().clone() for n, p in trainer.model.named_parameters()
    }


def test_gradient_accumulation_and_checkpointing_change_nothing(hf_model_dir, tmp_path):
    path = hf_model_dir("llama")
    one = _weights_after(_trainer(path, tmp_path / "a"), 2)
    accum = _weights_after(_trainer(path, tmp_path / "b", "train.grad_accum=4"), 2)
    ckpt = _weights_after(_trainer(path, tmp_path / "c", "train.activation_checkpointing=true"), 2)
    for name, value in one.items():
        # the same sums in another grouping: float32 rounding of the gradients, which Adam's
        # normalisation m / sqrt(v) can lift to ~1e-3 of lr (1e-6) on a near-zero gradient
        torch.testing.assert_close(accum[name], value, rtol=1e-5, atol=1e-5)
        # recomputation runs the same ops in the same order: bit-equal
        torch.testing.assert_close(ckpt[name], value, rtol=0, atol=0)


def test_a_non_finite_loss_stops_naming_the_step(hf_model_dir, tmp_path):
    trainer = _trainer(hf_model_dir("llama"), tmp_path)
    with torch.no_grad():
        trainer.model.norm.weight.fill_(float("nan"))
    with pytest.raises(plugformer.PlugformerError, match=r"step 1: the loss is nan"):
        trainer.step()


@pytest.fixture(autouse=True)
def _plugins():
    loader.reset()
    yield
    loader.reset()
