"""The tokenizer interface: what the engine needs from a model's tokenizer.

Implementations live in :mod:`plugformer.core.tokenizers`: the Hugging Face ``tokenizer.json``
and GGUF-vocabulary tokenizer (:class:`~plugformer.core.tokenizers.hf.HFTokenizer`) and the
byte-level tokenizer of random models (:class:`~plugformer.core.tokenizers.byte.ByteTokenizer`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: list[int]
    chat_template: str | None  # a Jinja template (rendered by plugformer.core.tokenizers.chat)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds BOS where the model expects it.
        Special tokens written in the text (``<|im_start|>``) are recognised."""
        ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        ...
