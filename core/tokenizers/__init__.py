"""Tokenizer implementations, and the constructors a checkpoint-format plugin calls.

A checkpoint format returns the model's tokenizer from ``Checkpoint.tokenizer()`` (any object
with the :class:`plugformer.core.interfaces.tokenizer.Tokenizer` interface). The usual ones are
built here, so a third-party format needs no tokenizer code of its own:

* :func:`from_hf_dir` — a Hugging Face model directory (``tokenizer.json`` with
  ``tokenizer_config.json``, ``chat_template.jinja``, ``generation_config.json``);
* :func:`from_hf_json` — a ``tokenizer.json`` file (or its text) with the special tokens and
  chat template given as arguments;
* :func:`from_gguf_metadata` — the ``tokenizer.*`` metadata of a GGUF file (GPT-2 style BPE);
* :class:`~plugformer.core.tokenizers.byte.ByteTokenizer` — UTF-8 bytes (random models).

SentencePiece vocabularies (``tokenizer.model``, GGUF ``tokenizer.ggml.model = "llama"``) are
not read yet; a format that needs one converts it to ``tokenizer.json`` first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from plugformer.core.errors import CheckpointError
from plugformer.core.tokenizers.byte import ByteTokenizer
from plugformer.core.tokenizers.hf import HFTokenizer, gguf_tokenizer

__all__ = [
    "BYTE_TOKENIZER",
    "ByteTokenizer",
    "HFTokenizer",
    "from_gguf_metadata",
    "from_hf_dir",
    "from_hf_json",
    "save_tokenizer",
]

#: ``tokenizer_class`` in a ``tokenizer_config.json`` without ``tokenizer.json``: the bytes
BYTE_TOKENIZER = "plugformer.ByteTokenizer"


def from_hf_dir(path: str | os.PathLike[str]) -> HFTokenizer:
    """The tokenizer of a Hugging Face model directory (see :meth:`HFTokenizer.from_dir`)."""
    return HFTokenizer.from_dir(path)


def from_hf_json(
    tokenizer_json: str | os.PathLike[str],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    eos_token_ids: Iterable[int] = (),
    chat_template: str | None = None,
    add_bos_token: bool | None = None,
) -> HFTokenizer:
    """A tokenizer from a ``tokenizer.json`` file, or from its JSON text (a string starting
    with ``{``). ``bos_token``/``eos_token`` are token texts (ignored when not in the
    vocabulary); ``eos_token_ids`` adds more end-of-sequence ids; ``add_bos_token`` None keeps
    the file's post-processor, a bool installs one that adds BOS as it says."""
    from plugformer.core.tokenizers.hf import _one_line, _tk

    text = os.fspath(tokenizer_json)
    try:
        if text.lstrip().startswith("{"):
            backend = _tk().Tokenizer.from_str(text)
        else:
            backend = _tk().Tokenizer.from_file(str(Path(text)))
    except Exception as exc:
        where = "tokenizer JSON text" if text.lstrip().startswith("{") else text
        raise CheckpointError(f"{where}: not a valid tokenizer: {_one_line(exc)}") from None
    return HFTokenizer(
        backend,
        bos_token=bos_token,
        eos_token=eos_token,
        extra_eos_ids=eos_token_ids,
        chat_template=chat_template,
        add_bos_token=add_bos_token,
    )


def from_gguf_metadata(metadata: Mapping[str, Any]) -> HFTokenizer:
    """The tokenizer in a GGUF file's ``tokenizer.*`` metadata (see
    :func:`~plugformer.core.tokenizers.hf.gguf_tokenizer`)."""
    return gguf_tokenizer(metadata)


def save_tokenizer(tokenizer: Any, directory: str | os.PathLike[str]) -> list[Path]:
    """Write ``tokenizer`` beside a saved model so that :func:`from_hf_dir` (and
    ``model.path=``) reads it back: ``tokenizer.json``, ``tokenizer_config.json`` (special
    tokens, chat template) and the EOS ids in ``generation_config.json``; a
    :class:`ByteTokenizer` as a ``tokenizer_config.json`` naming it. Returns the files."""
    import json

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if isinstance(tokenizer, ByteTokenizer):
        config: dict[str, Any] = {"tokenizer_class": BYTE_TOKENIZER}
    elif isinstance(tokenizer, HFTokenizer):
        tokenizer.backend.save(str(out / "tokenizer.json"))
        written.append(out / "tokenizer.json")
        config = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}
        if tokenizer.chat_template:
            config["chat_template"] = tokenizer.chat_template
        gen = out / "generation_config.json"
        ids = list(tokenizer.eos_token_ids)
        if ids:
            gen.write_text(json.dumps({"eos_token_id": ids[0] if len(ids) == 1 else ids}) + "\n")
            written.append(gen)
    else:
        raise CheckpointError(f"cannot save a tokenizer of type {type(tokenizer).__name__}")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    written.append(out / "tokenizer_config.json")
    return written
