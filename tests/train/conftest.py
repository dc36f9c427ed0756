"""Fixtures of the training tests: tiny Hugging Face models of several families saved with a
byte-level tokenizer, so ``plugformer train model.path=DIR`` reads text through them."""

from __future__ import annotations

import json
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


def byte_tokenizer_files(out: Path) -> None:
    """A byte-level BPE tokenizer without merges: one token per byte, ids 0..255 in byte
    order, <s> = 256 and </s> = 257 (a post-processor puts <s> first)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    chars = {}  # byte -> its printable stand-in (GPT-2's table)
    for b in range(256):
        chars[b] = _byte_char(b)
    assert set(chars.values()) == set(alphabet)
    vocab = {chars[b]: b for b in range(256)} | {"<s>": 256, "</s>": 257}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 256)]
    )
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>"})
    )


def _byte_char(b: int) -> str:
    # GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest shift to 256+
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if b in printable:
        return chr(b)
    return chr(256 + sorted(set(range(256)) - set(printable)).index(b))


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory) -> Callable[[str], Path]:
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
