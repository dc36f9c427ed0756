"""Fixtures of the training tests: tiny Hugging Face models of several families saved with a
byte-level tokenizer, so ``plugformer train model.path=DIR`` reads text through them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

VOCAB = 260  # 256 byte tokens, <s> 256, </s> 257, and two spare ids

#: family -> (transformers config class, model class, config values)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),  # q/k/v biases
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
}
COMMON = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": 128, "bos_token_id": 256,
    "eos_token_id": 257, "tie_word_embeddings": False,
}  # fmt: skip
GPT2 = {"vocab_size": VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128,
        "bos_token_id": 256, "eos_token_id": 257, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
        "attn_pdrop": 0.0}  # fmt: skip


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory, byte_tokenizer_files) -> Callable[[str], Path]:
    """``hf_model_dir(family)``: a tiny random transformers model of that family saved with
    the byte tokenizer (cached per family)."""
    transformers = pytest.importorskip("transformers")
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            cfg_cls, model_cls, extra = FAMILIES[family]
            values = GPT2 if family == "gpt2" else {**COMMON, **extra}
            cfg = getattr(transformers, cfg_cls)(**values)
            torch.manual_seed(0)
            model = getattr(transformers, model_cls)(cfg)
            out = tmp_path_factory.mktemp(family)
            model.save_pretrained(out, safe_serialization=True)
            byte_tokenizer_files(out)
            made[family] = out
        return made[family]

    return make


def hf_model(path: Path) -> torch.nn.Module:
    """The transformers model saved at ``path``, in float32, training mode, eager attention."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager"
    ).train()
