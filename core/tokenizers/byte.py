"""The byte-level tokenizer of random models (``model=tiny``): UTF-8 bytes as tokens."""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then BOS (256) and EOS (257)."""

    vocab_size = 258
    bos_token_id: int | None = 256
    eos_token_ids = [257]
    chat_template: str | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [256, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        names = {256: "<bos>", 257: "<eos>"}
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if 0 <= i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            if not skip_special_tokens:
                parts.append(names.get(i, ""))
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)
