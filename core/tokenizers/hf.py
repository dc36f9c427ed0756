"""Tokenizers from a model's own files: ``tokenizer.json`` directories and GGUF metadata.

Both become a ``tokenizers.Tokenizer`` (the Rust library behind Hugging Face's fast tokenizers)
wrapped in :class:`HFTokenizer`, which implements
:class:`plugformer.core.interfaces.tokenizer.Tokenizer`.

The ``tokenizers`` package is imported on first use, so ``plugformer.core`` imports without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugformer.core.errors import CheckpointError, PlugformerError, ValidationError

if TYPE_CHECKING:
    import tokenizers

# GGUF token types (llama.cpp's ``llama_token_type``).
_CONTROL = 3
_USER_DEFINED = 4

# Pre-tokenizer splits by ``tokenizer.ggml.pre`` name. Each entry is the list of regexes that
# llama.cpp (``llm_tokenizer_bpe``) applies in turn, each isolating its matches; ``_GPT2``
# stands for the GPT-2 split that ``pre_tokenizers.ByteLevel(use_regex=True)`` does itself.
# Where llama.cpp rewrote a regex for std::regex (no ``(?i:...)``), the original from the
# model's ``tokenizer.json`` is used: Oniguruma, the engine of ``tokenizers``, has the syntax.
_GPT2 = "<gpt2>"
_DIGIT = r"\p{N}"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"  # noqa: RUF001 (the punctuation is meant)
_FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")


def _names(names: str, splits: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(names.split(), splits)


PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    **_names("default gpt-2 mpt olmo jais trillion granite-docling", (_GPT2,)),
    # individual digits first (StarCoder's and SmolLM's `Digits(individual_digits=True)`)
    **_names("starcoder refact command-r smollm codeshell exaone minerva", (_DIGIT, _GPT2)),
    **_names("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2", (_LLAMA3,)),
    **_names("dbrx smaug-bpe", (_LLAMA3,)),
    **_names("qwen2 stablelm2 hunyuan deepseek-r1-qwen megrez", (_QWEN2,)),
    **_names("gpt-4o llama4 minimax-m2", (_GPT4O,)),
    **_names("tekken", (_TEKKEN,)),
    **_names("poro-chat bloom gpt3-finnish", (_BLOOM,)),
    **_names("viking", (_BLOOM, _DIGIT)),
    **_names("falcon", _FALCON),
}
# llama.cpp matches a whole word against the vocabulary before merging for these (Llama 3's
# tokenizer.json says ``"ignore_merges": true``).
_IGNORE_MERGES = frozenset(
    ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"]
)


def _tk() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - tokenizers is installed with transformers
        raise PlugformerError(
            "reading a model's tokenizer needs the 'tokenizers' package: pip install tokenizers"
        ) from exc
    return tokenizers


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with the model's special tokens, EOS ids and chat template.

    ``add_bos_token``/``add_eos_token``: ``None`` keeps the tokenizer's own post-processor (the
    one in ``tokenizer.json``); a bool, or a tokenizer without a post-processor, installs one that
    adds BOS/EOS exactly as the flags say (what transformers does with the same flags).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        extra_eos_ids: Iterable[int] = (),
        chat_template: str | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        self._tok = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(
            tokenizer.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1
        )
        #: the special tokens' text (for chat templates), None when not in the vocabulary
        self.bos_token: str | None = bos_token if bos_token in vocab else None
        self.eos_token: str | None = eos_token if eos_token in vocab else None
        self.bos_token_id: int | None = vocab[self.bos_token] if self.bos_token else None
        eos_ids = [vocab[self.eos_token]] if self.eos_token else []
        for i in extra_eos_ids:
            if not 0 <= i < self.vocab_size:
                raise CheckpointError(
                    f"EOS id {i} is outside the vocabulary (size {self.vocab_size})"
                )
            if i not in eos_ids:
                eos_ids.append(i)
        self.eos_token_ids: list[int] = eos_ids
        self.chat_template: str | None = chat_template
        if (
            add_bos_token is not None
            or add_eos_token is not None
            or tokenizer.post_processor is None
        ):
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))
        probe = tokenizer.encode("", add_special_tokens=True).ids
        #: whether ``encode(text)`` puts BOS first (from the post-processor, whatever set it)
        self.add_bos_token: bool = self.bos_token_id is not None and probe[:1] == [
            self.bos_token_id
        ]
        # transformers skips this clean-up for BPE models: it would eat real spaces there
        model_type = type(tokenizer.model).__name__
        self._clean_up = clean_up_tokenization_spaces and model_type != "BPE"

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        processors = _tk().processors
        bos, eos = self.bos_token if add_bos else None, self.eos_token if add_eos else None
        single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
        pair = " ".join(
            [single, *([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])]
        )
        specials = [(t, self._tok.token_to_id(t)) for t in (bos, eos) if t]
        self._tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=specials
        )

    # -- the Tokenizer protocol -----------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in it (``<|im_start|>``) stay whole.
        ``add_special_tokens`` adds BOS/EOS only where the model's tokenizer config says so."""
        if not isinstance(text, str):
            raise ValidationError(f"text: expected str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; ``skip_special_tokens`` drops the special tokens' text."""
        ids = list(ids)
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ValidationError(
                    f"token id {i!r} is outside the vocabulary (size {self.vocab_size})"
                )
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self._clean_up else text

    # -- helpers --------------------------------------------------------------------------
    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary's spelling of ``token_id`` (byte-level: ``Ġ`` for a space), or None."""
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` as spelled in the vocabulary, or None when it is not there."""
        return self._tok.token_to_id(token)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens (control tokens such as BOS, EOS, ``<|im_start|>``)."""
        return frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(vocab_size={self.vocab_size}, bos_token_id={self.bos_token_id}, "
            f"eos_token_ids={self.eos_token_ids}, add_bos_token={self.add_bos_token})"
        )

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        """The tokenizer of a Hugging Face model directory: ``tokenizer.json``, plus (all
        optional) ``tokenizer_config.json`` (BOS/EOS tokens, ``add_bos_token``, chat template),
        ``chat_template.jinja`` (preferred over the config's template, as in transformers) and
        ``generation_config.json`` (more EOS ids; ``config.json``'s when it is missing)."""
        root = Path(path)
        tok_file = root / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(f"{tok_file}: missing; a model directory needs tokenizer.json")
        try:
            backend = _tk().Tokenizer.from_file(str(tok_file))
        except Exception as exc:
            raise CheckpointError(f"{tok_file}: not a valid tokenizer: {_one_line(exc)}") from None
        config = _read_json(root / "tokenizer_config.json")
        template_file = root / "chat_template.jinja"
        if template_file.is_file():
            template: str | None = template_file.read_text(encoding="utf-8")
        else:
            template = _config_template(config.get("chat_template"), root / "tokenizer_config.json")
        gen_file = root / "generation_config.json"
        if not gen_file.is_file():
            gen_file = root / "config.json"
        eos_ids = _eos_ids(_read_json(gen_file).get("eos_token_id"), gen_file)
        flags = {}
        for key in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces"):
            value = config.get(key)
            if value is not None and not isinstance(value, bool):
                raise CheckpointError(f"{root / 'tokenizer_config.json'}: {key} must be a bool")
            flags[key] = value
        if backend.post_processor is not None:
            # tokenizer.json's post-processor decides (transformers 5 drops the flags then)
            flags["add_bos_token"] = flags["add_eos_token"] = None
        return cls(
            backend,
            bos_token=_token_str(config.get("bos_token")),
            eos_token=_token_str(config.get("eos_token")),
            extra_eos_ids=eos_ids,
            chat_template=template,
            add_bos_token=flags["add_bos_token"],
            add_eos_token=flags["add_eos_token"],
            clean_up_tokenization_spaces=bool(flags["clean_up_tokenization_spaces"]),
        )


def _clean_up(text: str) -> str:
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
        text = text.replace(a, b)
    for a, b in ((" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not valid JSON: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_str(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _config_template(value: Any, file: Path) -> str | None:
    """``chat_template`` of tokenizer_config.json: a string or a list of {name, template}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item.get("name") == "default":
                template = item.get("template")
                if isinstance(template, str):
                    return template
        return None
    raise CheckpointError(f"{file}: chat_template must be a string or a list of {{name, template}}")


def _eos_ids(value: Any, file: Path) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise CheckpointError(f"{file}: eos_token_id must be an int or a list of ints")
    return list(values)


# -- GGUF --------------------------------------------------------------------------------------


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 bytes (``bytes_to_unicode``): printable Latin-1
    characters stand for themselves, the others for code points from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _meta_list(metadata: Mapping[str, Any], key: str, kind: type, required: bool) -> list[Any]:
    value = metadata.get(key)
    if value is None:
        if required:
            raise CheckpointError(f"GGUF metadata {key}: missing")
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise CheckpointError(f"GGUF metadata {key}: expected an array, got {type(value).__name__}")
    items = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    items = [int(v) if kind is int and hasattr(v, "__index__") else v for v in items]
    for i, v in enumerate(items):
        if not isinstance(v, kind) or isinstance(v, bool):
            raise CheckpointError(
                f"GGUF metadata {key}[{i}]: expected {kind.__name__}, got {type(v).__name__}"
            )
    return items


def _meta_id(metadata: Mapping[str, Any], key: str, n_tokens: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    if not hasattr(value, "__index__") or isinstance(value, bool):
        raise CheckpointError(f"GGUF metadata {key}: expected a token id, got {value!r}")
    value = int(value)
    if value == 0xFFFFFFFF or value == -1:  # llama.cpp's "none" (LLAMA_TOKEN_NULL)
        return None
    if not 0 <= value < n_tokens:
        raise CheckpointError(f"GGUF metadata {key}: id {value} outside the {n_tokens} tokens")
    return value


def _meta_bool(metadata: Mapping[str, Any], key: str) -> bool | None:
    value = metadata.get(key)
    if value is None or isinstance(value, bool):
        return value
    if hasattr(value, "__index__") and int(value) in (0, 1):
        return bool(value)
    raise CheckpointError(f"GGUF metadata {key}: expected a bool, got {value!r}")


def gguf_tokenizer(metadata: Mapping[str, Any]) -> HFTokenizer:
    """The tokenizer a GGUF file describes in its metadata (llama.cpp's ``tokenizer.*`` keys).

    Supported: ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE: tokens, merges, token types,
    special ids, ``add_bos_token`` and the ``tokenizer.ggml.pre`` split). The result equals
    transformers' tokenizer from the same file (its ``GGUFGPTConverter`` rules: control tokens
    (type 3) become special added tokens, user-defined ones (type 4) plain added tokens, tokens
    not spelled in the byte alphabet are respelled), except that the split follows llama.cpp's
    pre-tokenizer for every ``pre`` name in :data:`PRE_TOKENIZER_SPLITS` (transformers only knows
    some; e.g. for ``smollm`` it does not isolate digits, which changes nothing for SmolLM2,
    whose merges never join a digit to anything). ``add_space_prefix`` is ignored for BPE, as
    llama.cpp does. EOS ids are ``eos_token_id`` then ``eot_token_id``/``eom_token_id``.
    """
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(
            f"GGUF metadata tokenizer.ggml.model={model!r} is not supported (supported: 'gpt2', "
            "byte-level BPE)"
        )
    pre = metadata.get("tokenizer.ggml.pre") or "default"
    if not isinstance(pre, str) or pre not in PRE_TOKENIZER_SPLITS:
        raise CheckpointError(
            f"GGUF metadata tokenizer.ggml.pre={pre!r} is not a known pre-tokenizer; known: "
            + ", ".join(sorted(PRE_TOKENIZER_SPLITS))
        )
    tokens: list[str] = _meta_list(metadata, "tokenizer.ggml.tokens", str, required=True)
    merges: list[str] = _meta_list(metadata, "tokenizer.ggml.merges", str, required=True)
    types: list[int] = _meta_list(metadata, "tokenizer.ggml.token_type", int, required=False)
    if types and len(types) != len(tokens):
        raise CheckpointError(
            f"GGUF metadata tokenizer.ggml.token_type: {len(types)} entries "
            f"for {len(tokens)} tokens"
        )
    n = len(tokens)
    ids = {
        name: _meta_id(metadata, f"tokenizer.ggml.{name}_token_id", n)
        for name in ("bos", "eos", "unknown", "padding", "eot", "eom")
    }
    tk = _tk()
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())

    def spelled(token: str) -> bool:
        return set(token) <= alphabet

    vocab = {
        t if spelled(t) else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    pairs: list[tuple[str, str]] = []
    for i, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise CheckpointError(
                f"GGUF metadata tokenizer.ggml.merges[{i}]: {merge!r} is not 'a b'"
            )
        pairs.append((parts[0], parts[1]))
    try:
        bpe = tk.models.BPE(
            vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=pre in _IGNORE_MERGES
        )
    except Exception as exc:
        raise CheckpointError(
            f"GGUF tokenizer: bad vocabulary or merges: {_one_line(exc)}"
        ) from None
    backend = tk.Tokenizer(bpe)
    steps = []
    for split in PRE_TOKENIZER_SPLITS[pre]:
        if split == _DIGIT:  # as these models' own tokenizer.json spell it
            steps.append(tk.pre_tokenizers.Digits(individual_digits=True))
        elif split != _GPT2:
            steps.append(tk.pre_tokenizers.Split(tk.Regex(split), behavior="isolated"))
    gpt2 = _GPT2 in PRE_TOKENIZER_SPLITS[pre]
    steps.append(tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=gpt2))
    backend.pre_tokenizer = steps[0] if len(steps) == 1 else tk.pre_tokenizers.Sequence(steps)
    backend.decoder = tk.decoders.ByteLevel()

    # Control tokens, and the named ones (BOS/EOS/UNK/PAD), are special added tokens: matched
    # whole in the text, dropped by decode(skip_special_tokens=True). A "control" token not
    # spelled in the byte alphabet is a converter's mislabel; adding it would grow the vocabulary.
    named = {
        i for key, i in ids.items() if i is not None and key in ("bos", "eos", "unknown", "padding")
    }
    special = [
        tk.AddedToken(t, special=True, normalized=False)
        for i, t in enumerate(tokens)
        if ((types and types[i] == _CONTROL) or i in named) and spelled(t)
    ]
    backend.add_special_tokens(special)
    user = [
        tk.AddedToken(t, special=False, normalized=False)
        for i, t in enumerate(tokens)
        if types and types[i] == _USER_DEFINED and t in vocab
    ]
    if user:
        backend.add_tokens(user)
    template = metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError("GGUF metadata tokenizer.chat_template: expected a string")
    bos, eos = ids["bos"], ids["eos"]
    return HFTokenizer(
        backend,
        bos_token=tokens[bos] if bos is not None else None,
        eos_token=tokens[eos] if eos is not None else None,
        extra_eos_ids=[i for i in (ids["eot"], ids["eom"]) if i is not None],
        chat_template=template,
        add_bos_token=bool(_meta_bool(metadata, "tokenizer.ggml.add_bos_token")),
        add_eos_token=bool(_meta_bool(metadata, "tokenizer.ggml.add_eos_token")),
    )
