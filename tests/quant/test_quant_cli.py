"""``plugformer quantize`` and ``plugformer eval perplexity``: what they print, what they write
(the default model quantized, saved and loaded back to identical logits and tokenizer), and
their one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import plugformer
from plugformer.core.cli import main
from plugformer.core.commands.eval import perplexity

HELDOUT = Path(__file__).parents[1] / "data" / "heldout_en.txt"


def test_perplexity_of_one_window_is_the_mean_next_token_loss(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 2)
    assert main(["eval", "perplexity", f"data={text}", "model=tiny", "window=128"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    engine = plugformer.Engine.from_overrides(["model=tiny"])
    ids = torch.tensor([engine.tokenizer.encode(text.read_text())])
    loss = F.cross_entropy(engine.logits(ids)[0, :-1], ids[0, 1:])
    assert lines[-1].startswith("perplexity=")
    assert float(lines[-1].removeprefix("perplexity=")) == pytest.approx(math.exp(loss), rel=1e-4)
    assert lines[-2] == f"tokens={ids.shape[1] - 1} window=128 stride=64"


def test_sliding_windows_score_every_token_once():
    engine = plugformer.Engine.from_overrides(["model=tiny"])
    ids = engine.tokenizer.encode(HELDOUT.read_text())[:300]
    # stride == window: independent chunks, each scoring all but its first token
    ppl, count = perplexity(engine, ids, 100, 100, progress=False)
    t = torch.tensor(ids)
    nll, n = 0.0, 0
    for start in range(0, len(ids), 100):
        logits = engine.logits(t[start : start + 100].unsqueeze(0))[0]
        targets = t[start + 1 : start + 100]
        nll += F.cross_entropy(logits[:-1], targets, reduction="sum").item()
        n += targets.numel()
    assert count == n == len(ids) - 3
    assert ppl == pytest.approx(math.exp(nll / n), rel=1e-5)
    # overlapping windows: every token after the first is scored exactly once
    ppl_overlap, count_overlap = perplexity(engine, ids, 100, 50, progress=False)
    assert count_overlap == len(ids) - 1
    logits = engine.logits(t[:100].unsqueeze(0))[0]
    nll = F.cross_entropy(logits[:-1], t[1:100], reduction="sum").item()
    for start in (50, 100, 150, 200):  # each window scores its last 50 tokens
        logits = engine.logits(t[start : start + 100].unsqueeze(0))[0]
        nll += F.cross_entropy(logits[49:-1], t[start + 50 : start + 100], reduction="sum").item()
    assert ppl_overlap == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)


@pytest.mark.parametrize(
    "args,message",
    [
        (["eval"], "eval: name a task"),
        (["eval", "perplexty", "data=x"],
         "unknown eval task 'perplexty'; did you mean 'perplexity'?"),
        (["eval", "perplexity", "model=tiny"], "data: missing value; set it with data=<text file>"),
        (["eval", "perplexity", "data=/nonexistent.txt"],
         "data: '/nonexistent.txt' does not exist"),
        (["eval", "perplexity", f"data={HELDOUT}", "model=tiny", "window=1000"],
         "window: 1000 must be in [2, 256]"),
        (["eval", "perplexity", f"data={HELDOUT}", "model=tiny", "stride=0"],
         "stride: expected a positive integer, got 0"),
        (["quantize", "quant=gptq"], "output_dir: missing value; set it with output_dir=DIR"),
        (["quantize", "output_dir=/tmp/x"], "quant: choose a quantizer"),
        (["quantize", "model=tiny", "quant=rtn", "output_dir=/tmp/x"],
         "model: 'tiny' has no checkpoint to take tensor names from"),
    ],
)  # fmt: skip
def test_command_errors_are_one_line_with_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_quantize_the_default_model_and_load_it_back(tmp_path, capsys):
    out = tmp_path / "smollm2-rtn"
    args = ["quant=rtn", "quant.bits=4", "quant.group_size=64"]
    assert main(["quantize", *args, f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("quantized 210 linear layers (4-bit, group_size=64, sym) in ")
    assert printed[-1] == f"wrote {out}"
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
        "tokenizer_config.json",
    }  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 64
    assert config["quantization_config"]["meta"]["method"] == "rtn"

    original = plugformer.Engine.from_overrides(args)
    loaded = plugformer.Engine.from_overrides([f"model.path={out}"])
    prompt = "What is the capital of France?"
    ids = original.encode_prompt(prompt)
    assert loaded.encode_prompt(prompt) == ids  # same tokenizer and chat template
    assert loaded.tokenizer.chat_template == original.tokenizer.chat_template
    assert set(loaded.tokenizer.eos_token_ids) == set(original.tokenizer.eos_token_ids)
    assert torch.equal(loaded.logits([ids]), original.logits([ids]))
