"""The tokenizer interface and the byte-level tokenizer of random models (``model=tiny``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: list[int]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with BOS where the model expects it)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special tokens are skipped."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then BOS (256) and EOS (257)."""

    vocab_size = 258
    bos_token_id: int | None = 256
    eos_token_ids = [257]

    def __init__(self, add_bos: bool = True) -> None:
        self.add_bos = add_bos

    def encode(self, text: str) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [256, *ids] if self.add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
