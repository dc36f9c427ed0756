"""Training data: plain text packed into windows, chat and Alpaca-style instructions with loss
masks, a seeded held-out split and a seeded, resumable order of examples.

:func:`read_examples` turns a file or a directory into :class:`Example` rows (token ids and
labels, at most ``seq_len`` long); :class:`TrainData` splits them into train and eval, orders
them per epoch and pads batches. Labels follow Hugging Face's ``labels``: aligned with the input
(the model shifts them), :data:`IGNORE` (-100) where a token is not scored.

The kinds of file, chosen by extension, then by content:

* **plain text** (``.txt``, ``.md``, ``.text``; given directly, any file whose first non-blank
  line is not a JSON object of a known shape): one file is one document. Each document is
  encoded with ``add_special_tokens=False``, BOS put first when the tokenizer's ``encode`` adds
  one, EOS put between documents; the stream is cut into consecutive windows of exactly
  ``seq_len`` tokens (the last partial window dropped), every token scored. Files are read in
  pieces of about :data:`PIECE_CHARS` characters, each cut at a space between two letters, so
  byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM) give the same tokens as for the whole
  text, and a file is never held whole.
* **JSONL** (``.jsonl``): one JSON object per line (blank lines skipped), chat or Alpaca below.
* **JSON** (``.json``): a list of such objects, or one (errors name the line where the item
  starts); read whole, as the standard library parses JSON, so large sets belong in JSONL. A
  ``.json`` file that holds one object per line is read as JSONL.

Records:

* chat, ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``:
  rendered with the model's chat template through ``render_chat(messages,
  add_generation_prompt)``; only the assistant turns are scored, each from the end of the
  generation prompt before it to the end of the template's text for that turn (its end tokens,
  e.g. ``<|im_end|>\\n``, included). Token boundaries come from rendering and encoding the
  prefixes of the conversation; a template whose prefixes do not render (or encode) as
  prefixes of the whole conversation is refused naming the file and line. Without a template
  (``render_chat=None``) the conversation is written ``"<role>: <content>\\n"`` per message,
  an assistant turn as ``"assistant: "`` then its content and EOS (scored), after a BOS when
  the tokenizer adds one. ``render_chat`` is called with two positional arguments;
  :func:`template_renderer` makes one from a tokenizer's template, as the engine renders it.
* Alpaca, ``{"instruction": str, "input": str (optional), "output": str}``: with a template,
  the instruction (a blank line, then the input, if any) is the user's message and the output
  the assistant's; without one, the classic Alpaca prompt (:data:`ALPACA_PROMPT`,
  :data:`ALPACA_PROMPT_INPUT`) followed by the output and EOS, the output and EOS scored.

An example longer than ``seq_len`` keeps its beginning; one left with nothing to score is an
error naming its file, line and ``seq_len``. Every error is one line naming the file (and the
line); a missing path or an empty directory names ``key`` (``train.data``).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from plugformer.core.errors import ConfigError, PlugformerError, ValidationError
from plugformer.core.interfaces.tokenizer import Tokenizer

__all__ = [
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_INPUT",
    "IGNORE",
    "Example",
    "RenderChat",
    "TrainData",
    "read_examples",
    "template_renderer",
]

#: Label of a token that is not scored (Hugging Face's ``labels=-100``).
IGNORE = -100

#: ``render_chat(messages, add_generation_prompt) -> text``: a model's chat template.
RenderChat = Callable[[list[dict[str, str]], bool], str]

#: About how many characters of a text file are encoded at once.
PIECE_CHARS = 1 << 20

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSON_SUFFIXES = (".json", ".jsonl")
ROLES = ("system", "user", "assistant")

#: The Alpaca prompts (Stanford Alpaca's), for a tokenizer without a chat template.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass
class Example:
    """One training sequence: ``input_ids`` (at most ``seq_len``) and ``labels`` of the same
    length, :data:`IGNORE` where a token is not scored (prompt, user and system tokens)."""

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValidationError(
                f"example: {len(self.input_ids)} input ids but {len(self.labels)} labels"
            )


def _sibling(key: str, name: str) -> str:
    """``train.data`` -> ``train.<name>``: the key of another option of the same section."""
    section = key.rpartition(".")[0]
    return f"{section}.{name}" if section else name


def _check_int(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}: expected an int >= {low}, got {value!r}")
    return value


def template_renderer(tokenizer: Tokenizer) -> RenderChat | None:
    """The tokenizer's chat template as a :data:`RenderChat` (``bos_token``/``eos_token``
    given to the template as the engine gives them), or None when it has no template."""
    from plugformer.core.tokenizers.chat import render_chat

    template = tokenizer.chat_template
    if not template:
        return None
    tok = tokenizer
    bos = tok.decode([tok.bos_token_id], False) if tok.bos_token_id is not None else ""
    eos = tok.decode([tok.eos_token_ids[0]], False) if tok.eos_token_ids else ""

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return render_chat(template, messages, add_generation_prompt, bos_token=bos, eos_token=eos)

    return render


# -- reading ----------------------------------------------------------------------------------


def read_examples(
    path: str | Path,
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    render_chat: RenderChat | None = None,
    key: str = "train.data",
) -> list[Example]:
    """Every training example of a file or a directory (its ``.txt``, ``.md``, ``.text``,
    ``.json`` and ``.jsonl`` files, not hidden, not in subdirectories, sorted by name; the
    text files are documents of one packed stream). See the module's docstring for the kinds.
    """
    seq_len = _check_int(seq_len, _sibling(key, "seq_len"), 2)
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"{key}: {root} does not exist")
    if root.is_dir():
        files = sorted(
            (
                p
                for p in root.iterdir()
                if p.is_file()
                and not p.name.startswith(".")
                and p.suffix.lower() in (*TEXT_SUFFIXES, *JSON_SUFFIXES)
            ),
            key=lambda p: p.name,
        )
        if not files:
            raise ConfigError(
                f"{key}: directory {root} has no data files "
                f"({', '.join((*TEXT_SUFFIXES, *JSON_SUFFIXES))})"
            )
    else:
        files = [root]
    reader = _Reader(tokenizer, seq_len, render_chat, key)
    for file in files:
        reader.read(file)
    return reader.finish(root if root.is_dir() else None)


class _Reader:
    """The examples of a list of files, text windows packed across the text files."""

    def __init__(
        self, tokenizer: Tokenizer, seq_len: int, render_chat: RenderChat | None, key: str
    ) -> None:
        self.tok = tokenizer
        self.seq_len = seq_len
        self.render_chat = render_chat
        self.seq_key = _sibling(key, "seq_len")
        bos = tokenizer.bos_token_id
        adds_bos = (
            bos is not None
            and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]
            and tokenizer.encode("a", add_special_tokens=False)[:1] != [bos]
        )
        self.bos: list[int] = [bos] if adds_bos and bos is not None else []
        self.out: list[Example] = []
        self.stream: list[int] = []  # text tokens not yet in a window
        self.text_files: list[Path] = []
        self.text_tokens = 0
        self.text_windows = 0
        self.documents = 0

    def eos(self, where: str) -> int:
        if not self.tok.eos_token_ids:
            raise ValidationError(f"{where}: the tokenizer has no EOS token")
        return self.tok.eos_token_ids[0]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def read(self, file: Path) -> None:
        kind = _kind(file)
        if kind == "text":
            self.text(file)
        elif kind == "json":
            for where, record in _json_records(file):
                self.out.append(self.record(record, where))
        else:
            for where, record in _jsonl_records(file):
                self.out.append(self.record(record, where))

    def finish(self, directory: Path | None) -> list[Example]:
        if self.text_files and not self.text_windows:
            if directory is not None and len(self.text_files) > 1:
                where = f"{directory} ({len(self.text_files)} text files)"
            else:
                where = str(self.text_files[0])
            raise ValidationError(
                f"{where}: {self.text_tokens} tokens, shorter than one window of "
                f"{self.seq_key}={self.seq_len}"
            )
        return self.out

    # -- plain text -----------------------------------------------------------------------
    def text(self, file: Path) -> None:
        self.text_files.append(file)
        started = False
        for piece in _text_pieces(file):
            ids = self.encode(piece)
            if not ids:
                continue
            if not started:  # an empty file is no document
                started = True
                if self.documents:
                    self.add([self.eos(str(file))])
                self.documents += 1
                self.add(self.bos)
            self.add(ids)

    def add(self, ids: list[int]) -> None:
        s = self.seq_len
        self.stream.extend(ids)
        self.text_tokens += len(ids)
        full = len(self.stream) // s
        for k in range(full):
            window = self.stream[k * s : (k + 1) * s]
            self.out.append(Example(window, list(window)))
        if full:
            del self.stream[: full * s]
            self.text_windows += full

    # -- records --------------------------------------------------------------------------
    def record(self, record: Any, where: str) -> Example:
        if not isinstance(record, dict):
            raise ValidationError(f"{where}: expected a JSON object, got {_json_type(record)}")
        if "messages" in record:
            messages = _messages(record["messages"], where)
            if not any(m["role"] == "assistant" for m in messages):
                raise ValidationError(
                    f"{where}: no assistant turn (only assistant tokens are scored)"
                )
            if self.render_chat is None:
                ids, labels = self.plain_chat(messages, where)
            else:
                ids, labels = self.template_chat(messages, where)
        elif "instruction" in record and "output" in record:
            fields = {}
            for name in ("instruction", "input", "output"):
                value = record.get(name, "")
                if not isinstance(value, str):
                    raise ValidationError(
                        f"{where}: {name!r}: expected a string, got {_json_type(value)}"
                    )
                fields[name] = value
            ids, labels = self.alpaca(fields, where)
        else:
            keys = ", ".join(map(str, record)) or "none"
            raise ValidationError(
                f"{where}: expected messages or instruction/output (got keys: {keys})"
            )
        return self.truncate(ids, labels, where)

    def truncate(self, ids: list[int], labels: list[int], where: str) -> Example:
        if not any(x != IGNORE for x in labels[1:]):
            raise ValidationError(f"{where}: the answer has no tokens to score")
        if len(ids) > self.seq_len:
            total = len(ids)
            first = next(i for i, x in enumerate(labels) if i and x != IGNORE)
            ids, labels = ids[: self.seq_len], labels[: self.seq_len]
            if not any(x != IGNORE for x in labels[1:]):
                raise ValidationError(
                    f"{where}: every scored token lies beyond {self.seq_key}={self.seq_len} "
                    f"(the example has {total} tokens, the first scored one at position {first})"
                )
        return Example(ids, labels)

    def template_chat(
        self, messages: list[dict[str, str]], where: str
    ) -> tuple[list[int], list[int]]:
        """Tokens of the conversation as the template writes it, assistant turns scored."""
        assert self.render_chat is not None
        render_chat = self.render_chat

        def render(msgs: list[dict[str, str]], generation_prompt: bool) -> str:
            try:
                return render_chat(msgs, generation_prompt)
            except PlugformerError as exc:
                raise ValidationError(f"{where}: {exc}") from None

        full = render(messages, False)
        ids = self.encode(full)
        labels = [IGNORE] * len(ids)
        turn = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            turn += 1
            prompt = render(messages[:i], True)
            through = render(messages[: i + 1], False)
            if not (through.startswith(prompt) and full.startswith(through)):
                raise ValidationError(
                    f"{where}: the chat template does not render this conversation "
                    f"incrementally (the text before or through assistant turn {turn} is not a "
                    "prefix of the whole conversation's), so its tokens cannot be located"
                )
            start, end = self.encode(prompt), self.encode(through)
            if ids[: len(start)] != start or ids[: len(end)] != end:
                raise ValidationError(
                    f"{where}: the tokens before or through assistant turn {turn} are not a "
                    "prefix of the whole conversation's tokens (the text merges into one token "
                    "across the turn's boundary), so its tokens cannot be located"
                )
            labels[len(start) : len(end)] = ids[len(start) : len(end)]
        return ids, labels

    def plain_chat(self, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
        """``role: content`` lines, without a template; assistant content + EOS scored."""
        ids, labels = list(self.bos), [IGNORE] * len(self.bos)
        for m in messages:
            if m["role"] == "assistant":
                head = self.encode("assistant: ")
                body = [*self.encode(m["content"]), self.eos(where)]
                ids += head + body
                labels += [IGNORE] * len(head) + body
            else:
                line = self.encode(f"{m['role']}: {m['content']}\n")
                ids += line
                labels += [IGNORE] * len(line)
        return ids, labels

    def alpaca(self, fields: dict[str, str], where: str) -> tuple[list[int], list[int]]:
        instruction, input_, output = fields["instruction"], fields["input"], fields["output"]
        if self.render_chat is not None:
            user = f"{instruction}\n\n{input_}" if input_ else instruction
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": output},
            ]
            return self.template_chat(messages, where)
        template = ALPACA_PROMPT_INPUT if input_ else ALPACA_PROMPT
        prompt = [*self.bos, *self.encode(template.format(instruction=instruction, input=input_))]
        answer = [*self.encode(output), self.eos(where)]
        return prompt + answer, [IGNORE] * len(prompt) + answer


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{where}: 'messages': expected a non-empty list of objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            got = _json_type(m)
            raise ValidationError(f"{where}: messages[{i}]: expected an object, got {got}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValidationError(
                f"{where}: messages[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}"
            )
        if not isinstance(content, str):
            raise ValidationError(
                f"{where}: messages[{i}].content: expected a string, got {_json_type(content)}"
            )
        out.append({"role": role, "content": content})
    return out


# -- files ------------------------------------------------------------------------------------


def _kind(file: Path) -> str:
    """``text``, ``json`` (a list of objects, or one object) or ``jsonl`` (one per line)."""
    suffix = file.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix == ".jsonl":
        return "jsonl"
    with _open(file) as f:
        head = f.read(1 << 16)
    start = head.lstrip()
    if suffix == ".json" and start.startswith(b"["):
        return "json"
    first = start.split(b"\n", 1)[0]
    try:
        record = json.loads(first.decode("utf-8").removeprefix("\ufeff"))
    except ValueError:  # not UTF-8 (the readers say where), not JSON, or longer than the head
        record = None
    if suffix == ".json":  # one object per line, or one (pretty-printed) object
        return "jsonl" if isinstance(record, dict) else "json"
    # any other name: JSONL when the first non-blank line is an object of a known shape
    known = isinstance(record, dict) and ("messages" in record or "instruction" in record)
    return "jsonl" if known else "text"


def _open(file: Path) -> BinaryIO:
    try:
        return open(file, "rb")  # the caller closes it
    except OSError as exc:
        raise ValidationError(f"{file}: cannot read: {exc.strerror or exc}") from None


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """``(number, line)`` of a UTF-8 file, read line by line (a BOM dropped)."""
    with _open(file) as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValidationError(f"{file}:{number}: not UTF-8 text ({exc.reason})") from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _jsonl_records(file: Path) -> Iterator[tuple[str, Any]]:
    for number, line in _lines(file):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValidationError(f"{file}:{number}: not valid JSON ({_json_error(exc)})") from None
        yield f"{file}:{number}", record


def _json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)


def _json_records(file: Path) -> Iterator[tuple[str, Any]]:
    """The items of a JSON list (each named by the line it starts on), or its one object."""
    with _open(file) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValidationError(f"{file}:{line}: not UTF-8 text ({exc.reason})") from None
    del raw
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def fail(pos: int, msg: str) -> ValidationError:
        line = text.count("\n", 0, pos) + 1
        return ValidationError(f"{file}:{line}: not valid JSON ({msg})")

    def decode(pos: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"{file}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None

    pos = skip(0)
    if pos == len(text):
        raise ValidationError(f"{file}: empty; expected a JSON list of objects")
    if text[pos] != "[":  # one object
        record, end = decode(pos)
        if skip(end) != len(text):
            raise fail(skip(end), "extra data after the first value")
        yield f"{file}:{text.count(chr(10), 0, pos) + 1}", record
        return
    pos, line, counted = skip(pos + 1), 1, 0
    if pos < len(text) and text[pos] == "]":
        end = pos + 1
    else:
        while True:
            line += text.count("\n", counted, pos)
            counted = pos
            record, end = decode(pos)
            yield f"{file}:{line}", record
            pos = skip(end)
            if pos < len(text) and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                end = pos + 1
                break
            raise fail(pos, "expected ',' or ']' after a list item")
    if skip(end) != len(text):
        raise fail(skip(end), "extra data after the list")


def _text_pieces(file: Path) -> Iterator[str]:
    """The text of ``file`` in pieces of about :data:`PIECE_CHARS` characters, decoded
    incrementally (UTF-8 checked, a BOM dropped). A piece ends at the first space between two
    letters after that size, where byte-level BPE pre-tokenizers (GPT-2, Llama 3, SmolLM) split
    anyway, the space going with the word after it, so the pieces' tokens are the whole text's;
    only where no such space comes within 16 pieces' length is a piece cut at a line end."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts: list[str] = []
    size = 0
    number = 1
    first = True
    with _open(file) as f:
        while True:
            raw = f.readline(PIECE_CHARS)  # a line, or a piece of a very long one
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise ValidationError(f"{file}:{number}: not UTF-8 text ({exc.reason})") from None
            if not raw:
                break
            number += raw.count(b"\n")
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            if size + len(text) >= PIECE_CHARS:
                cut = _CUT.search(text)
                if cut is not None:
                    parts.append(text[: cut.start() + 1])
                    yield "".join(parts)
                    text, parts, size = text[cut.start() + 1 :], [], 0
                elif size >= 16 * PIECE_CHARS:
                    yield "".join(parts)
                    parts, size = [], 0
            if text:
                parts.append(text)
                size += len(text)
    if parts:
        yield "".join(parts)


_CUT = re.compile(r"[^\W\d_] [^\W\d_]")  # a space between two letters


# -- splitting, ordering, batching ------------------------------------------------------------


class TrainData:
    """Examples split into ``train`` and ``eval`` by ``seed``, ordered per epoch, batched.

    ``eval`` holds ``round(eval_fraction * n)`` examples (at least 1 when ``eval_fraction > 0``
    and there are 2 or more, never all of them), drawn by ``torch.randperm`` seeded with
    ``seed``; both splits keep the examples' original order. ``order(epoch)`` is a permutation
    of the train split seeded with ``seed + epoch``, the same on every machine, so a run that
    knows how many examples it consumed resumes exactly (:meth:`next_indices`).
    """

    def __init__(
        self,
        examples: list[Example],
        *,
        seq_len: int,
        eval_fraction: float,
        seed: int,
        pad_id: int,
        key: str = "train.data",
    ) -> None:
        self.seq_len = _check_int(seq_len, _sibling(key, "seq_len"), 1)
        fraction_key = _sibling(key, "eval_fraction")
        if (
            isinstance(eval_fraction, bool)
            or not isinstance(eval_fraction, int | float)
            or not 0 <= eval_fraction < 1
        ):
            raise ConfigError(f"{fraction_key}: expected a number in [0, 1), got {eval_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{_sibling(key, 'seed')}: expected an int, got {seed!r}")
        self.pad_id = _check_int(pad_id, "pad_id", 0)
        self.seed = seed
        if not examples:
            raise ConfigError(f"{key}: no training examples")
        for i, ex in enumerate(examples):
            if not ex.input_ids or len(ex.input_ids) > self.seq_len:
                raise ValidationError(
                    f"{key}: example {i} has {len(ex.input_ids)} tokens; expected 1 to "
                    f"{_sibling(key, 'seq_len')}={self.seq_len}"
                )
        n = len(examples)
        n_eval = 0
        if eval_fraction > 0 and n >= 2:
            n_eval = min(n - 1, max(1, round(eval_fraction * n)))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        held = set(perm[:n_eval])
        self.train: list[Example] = [ex for i, ex in enumerate(examples) if i not in held]
        self.eval: list[Example] = [ex for i, ex in enumerate(examples) if i in held]
        self._order: tuple[int, list[int]] | None = None

    def _rows(self, split: str) -> list[Example]:
        if split == "train":
            return self.train
        if split == "eval":
            return self.eval
        raise ValidationError(f"split: expected 'train' or 'eval', got {split!r}")

    def batch(
        self, indices: Iterable[int], split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids`` [B, S] long, ``labels`` [B, S] long (IGNORE on padding) and ``valid``
        [B, S] bool (False on padding) of the examples at ``indices`` of ``split``, padded on
        the right with ``pad_id`` to S, the longest of them."""
        rows = self._rows(split)
        picked = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(rows):
                raise ValidationError(
                    f"batch: index {i!r} is outside the {split} split (size {len(rows)})"
                )
            picked.append(rows[i])
        if not picked:
            raise ValidationError("batch: no indices")
        width = max(len(ex.input_ids) for ex in picked)
        ids = torch.full((len(picked), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(picked), width), IGNORE, dtype=torch.long)
        valid = torch.zeros((len(picked), width), dtype=torch.bool)
        for b, ex in enumerate(picked):
            n = len(ex.input_ids)
            ids[b, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
            labels[b, :n] = torch.tensor(ex.labels, dtype=torch.long)
            valid[b, :n] = True
        return ids, labels, valid

    def order(self, epoch: int) -> list[int]:
        """The train indices of ``epoch``: ``torch.randperm`` seeded with ``seed + epoch``."""
        epoch = _check_int(epoch, "epoch", 0)
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(len(self.train), generator=gen).tolist())
        return list(self._order[1])

    def position(self, examples_seen: int) -> tuple[int, int]:
        """``(epoch, offset)`` of the next train example after ``examples_seen`` consumed."""
        examples_seen = _check_int(examples_seen, "examples_seen", 0)
        epoch, offset = divmod(examples_seen, len(self.train))
        return epoch, offset

    def next_indices(self, examples_seen: int, n: int) -> list[int]:
        """The ``n`` train indices that follow ``examples_seen`` consumed, across epochs."""
        n = _check_int(n, "n", 0)
        epoch, offset = self.position(examples_seen)
        out: list[int] = []
        while len(out) < n:
            out += self.order(epoch)[offset : offset + n - len(out)]
            epoch, offset = epoch + 1, 0
        return out
