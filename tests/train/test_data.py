"""Training data: text packing, chat and Alpaca loss masks, the seeded split and order, batches.

Real values throughout: the byte tokenizer's ids are the UTF-8 bytes (BOS 256, EOS 257), so an
expected token stream is written by hand from the file's bytes, and the scored tokens of a chat
decode to exactly the assistant's text. A small byte-level BPE trained here (and SmolLM2's own
tokenizer, where its GGUF is in the cache) checks the same with tokens that merge.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from plugformer.core.errors import ConfigError, ValidationError
from plugformer.core.tokenizers.byte import ByteTokenizer
from plugformer.core.tokenizers.chat import render_chat
from plugformer.core.train import data as data_mod
from plugformer.core.train.data import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_INPUT,
    IGNORE,
    Example,
    TrainData,
    read_examples,
    template_renderer,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "train"
STORIES, CHAT, ALPACA = DATA / "stories.txt", DATA / "chat.jsonl", DATA / "alpaca.json"
BOS, EOS = 256, 257
A = "assistant"

#: A simple template: every turn ``<|role|>\ncontent<|end|>\n``.
SIMPLE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
#: SmolLM2-Instruct's chat template (from its GGUF), with its default system prompt.
SMOL = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def renderer(template: str) -> Any:
    return lambda messages, generation_prompt: render_chat(template, messages, generation_prompt)


def scored(example: Example) -> list[int]:
    return [x for x in example.labels if x != IGNORE]


def conversations() -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in CHAT.read_text().splitlines()]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class NoBosBytes(ByteTokenizer):
    """Bytes without BOS (``encode`` adds nothing), like SmolLM2's tokenizer."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))


# -- shipped data -----------------------------------------------------------------------------


def test_shipped_data_sizes() -> None:
    assert 2_000 < STORIES.stat().st_size < 8_000
    assert 8 <= len(conversations()) <= 12
    assert any(m[0]["role"] == "system" for m in conversations())
    items = json.loads(ALPACA.read_text())
    assert 6 <= len(items) <= 10 and any(item.get("input") for item in items)


# -- plain text -------------------------------------------------------------------------------


def test_text_windows_are_the_token_stream_cut_by_hand() -> None:
    stream = [BOS, *STORIES.read_bytes()]  # one document: BOS, no EOS
    examples = read_examples(STORIES, ByteTokenizer(), 64)
    assert len(examples) == len(stream) // 64 == 56
    for k, ex in enumerate(examples):
        assert ex.input_ids == stream[64 * k : 64 * (k + 1)]
        assert ex.labels == ex.input_ids
    assert bytes(examples[0].input_ids[1:17]) == b"The lighthouse o"


def test_directory_documents_are_joined_with_eos(tmp_path: Path) -> None:
    write(tmp_path, "b.md", "second doc\n")
    write(tmp_path, "a.txt", "first document here\n")
    write(tmp_path, "c.txt", "")  # empty: no document
    write(tmp_path, ".hidden.txt", "never read")
    write(tmp_path, "notes.csv", "never,read")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "d.txt", "never read either")
    a, b = list(b"first document here\n"), list(b"second doc\n")
    stream = [BOS, *a, EOS, BOS, *b]
    got = read_examples(tmp_path, ByteTokenizer(), 8)
    assert [ex.input_ids for ex in got] == [stream[i : i + 8] for i in range(0, 32, 8)]
    stream = [*a, EOS, *b]  # a tokenizer that adds no BOS gets none
    got = read_examples(tmp_path, NoBosBytes(), 5)
    assert [ex.input_ids for ex in got] == [stream[i : i + 5] for i in range(0, 30, 5)]


def test_text_is_read_in_pieces_cut_where_tokens_do_not_change(
    monkeypatch: pytest.MonkeyPatch, bpe: Any
) -> None:
    monkeypatch.setattr(data_mod, "PIECE_CHARS", 200)
    pieces = list(data_mod._text_pieces(STORIES))
    text = STORIES.read_text(encoding="utf-8")
    assert len(pieces) > 5 and "".join(pieces) == text
    for before, after in itertools.pairwise(pieces):  # a space between two letters
        assert before[-1].isalpha() and after[0] == " " and after[1].isalpha()
    assert [t for p in pieces for t in bpe.encode(p, False)] == bpe.encode(text, False)
    stream = bpe.encode(text, add_special_tokens=False)
    windows = read_examples(STORIES, bpe, 32)
    assert [ex.input_ids for ex in windows] == [
        stream[i : i + 32] for i in range(0, len(stream) // 32 * 32, 32)
    ]


def test_text_with_a_bom_and_crlf_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    (ex,) = read_examples(path, NoBosBytes(), 20)
    assert bytes(ex.input_ids) == b"line one\r\nline two\r\n"


def test_text_shorter_than_one_window(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        read_examples(STORIES, ByteTokenizer(), 5000)
    assert str(err.value) == (
        f"{STORIES}: 3602 tokens, shorter than one window of train.seq_len=5000"
    )
    write(tmp_path, "a.txt", "abc")
    write(tmp_path, "b.txt", "de")
    with pytest.raises(ValidationError, match=r"\(2 text files\): 8 tokens, shorter than one "):
        read_examples(tmp_path, ByteTokenizer(), 64, key="run.data")
    with pytest.raises(ValidationError, match=r"run\.seq_len=64"):
        read_examples(tmp_path, ByteTokenizer(), 64, key="run.data")


def test_text_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(ValidationError, match=rf"^{path}:3: not UTF-8 text"):
        read_examples(path, ByteTokenizer(), 4)


# -- chat -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "end"), [(SIMPLE, "<|end|>\n"), (SMOL, "<|im_end|>\n")])
def test_chat_scores_exactly_the_assistant_turns(template: str, end: str) -> None:
    tok = ByteTokenizer()
    examples = read_examples(CHAT, tok, 2048, render_chat=renderer(template))
    assert len(examples) == len(conversations()) == 10
    for ex, messages in zip(examples, conversations(), strict=True):
        assert tok.decode(ex.input_ids) == render_chat(template, messages, False)
        answers = "".join(m["content"] + end for m in messages if m["role"] == "assistant")
        assert tok.decode(scored(ex)) == answers
        # the scored positions are runs that each end where the template closes a turn
        runs = "".join("x" if x != IGNORE else "." for x in ex.labels)
        turns = sum(m["role"] == "assistant" for m in messages)
        assert len([r for r in runs.split(".") if r]) == turns


def test_chat_with_a_merging_bpe_and_special_tokens(bpe: Any) -> None:
    examples = read_examples(CHAT, bpe, 2048, render_chat=template_renderer(bpe))
    im_end = bpe.token_to_id("<|im_end|>")
    for ex, messages in zip(examples, conversations(), strict=True):
        assert ex.input_ids == bpe.encode(render_chat(SMOL, messages, False), False)
        answers = "".join(
            m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant"
        )
        assert bpe.decode(scored(ex), skip_special_tokens=False) == answers
        assert scored(ex).count(im_end) == sum(m["role"] == "assistant" for m in messages)
    # tokens merge: fewer tokens than bytes
    assert len(examples[0].input_ids) < len(render_chat(SMOL, conversations()[0], False))


def test_chat_without_a_template_uses_role_lines() -> None:
    (ex, *_) = read_examples(CHAT, ByteTokenizer(), 2048)
    user, answer = (m["content"] for m in conversations()[0])
    prompt = [BOS, *f"user: {user}\n".encode(), *b"assistant: "]
    assert ex.input_ids == [*prompt, *answer.encode(), EOS]
    assert ex.labels == [IGNORE] * len(prompt) + [*answer.encode(), EOS]


def test_chat_is_truncated_keeping_its_beginning() -> None:
    tok = ByteTokenizer()
    full = read_examples(CHAT, tok, 2048, render_chat=renderer(SIMPLE))[6]  # two turns
    cut = read_examples(CHAT, tok, 180, render_chat=renderer(SIMPLE))[6]
    assert len(full.input_ids) > 180 and len(cut.input_ids) == 180
    assert cut.input_ids == full.input_ids[:180] and cut.labels == full.labels[:180]


def test_chat_whose_answers_are_all_cut_off(tmp_path: Path) -> None:
    long_user = {"role": "user", "content": "x" * 100}
    line = json.dumps({"messages": [long_user, {"role": "assistant", "content": "ok"}]})
    path = write(tmp_path, "c.jsonl", f"{line}\n{line}\n")
    with pytest.raises(ValidationError) as err:
        read_examples(path, ByteTokenizer(), 50, render_chat=renderer(SIMPLE))
    assert str(err.value) == (
        f"{path}:1: every scored token lies beyond train.seq_len=50 "
        "(the example has 141 tokens, the first scored one at position 131)"
    )


# -- alpaca -----------------------------------------------------------------------------------


def test_alpaca_without_a_template_uses_the_alpaca_prompt() -> None:
    tok = ByteTokenizer()
    items = json.loads(ALPACA.read_text())
    examples = read_examples(ALPACA, tok, 1024)
    assert len(examples) == len(items) == 8
    for ex, item in zip(examples, items, strict=True):
        fmt = ALPACA_PROMPT_INPUT if item.get("input") else ALPACA_PROMPT
        prompt = [BOS, *fmt.format(**{"input": "", **item}).encode()]
        answer = [*item["output"].encode(), EOS]
        assert ex.input_ids == prompt + answer
        assert ex.labels == [IGNORE] * len(prompt) + answer
    third = bytes(examples[2].input_ids[1:-1])
    assert b"### Input:\n20 degrees Celsius\n\n### Response:\n" in third


def test_alpaca_with_a_template_is_a_user_and_an_assistant_turn() -> None:
    tok = ByteTokenizer()
    items = json.loads(ALPACA.read_text())
    examples = read_examples(ALPACA, tok, 1024, render_chat=renderer(SIMPLE))
    for ex, item in zip(examples, items, strict=True):
        user = item["instruction"] + (f"\n\n{item['input']}" if item.get("input") else "")
        text = f"<|user|>\n{user}<|end|>\n<|assistant|>\n{item['output']}<|end|>\n"
        assert tok.decode(ex.input_ids) == text
        assert tok.decode(scored(ex)) == item["output"] + "<|end|>\n"


# -- the real SmolLM2 tokenizer (optional: its GGUF in the cache) -----------------------------


def test_smollm2_tokenizer_and_template(smollm2_gguf: Path) -> None:
    path = smollm2_gguf
    from plugformer.core.checkpoints.gguf import GGUFFile
    from plugformer.core.tokenizers import from_gguf_metadata

    gguf = GGUFFile(path)
    try:
        tok = from_gguf_metadata(gguf.metadata)
    finally:
        gguf.close()
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template
    render = template_renderer(tok)
    examples = read_examples(CHAT, tok, 512, render_chat=render)
    for ex, messages in zip(examples, conversations(), strict=True):
        answers = "".join(
            m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant"
        )
        assert tok.decode(scored(ex), skip_special_tokens=False) == answers
    items = json.loads(ALPACA.read_text())
    for ex, item in zip(read_examples(ALPACA, tok, 512, render_chat=render), items, strict=True):
        assert tok.decode(scored(ex), skip_special_tokens=False) == item["output"] + "<|im_end|>\n"
    stream = tok.encode(STORIES.read_text(), add_special_tokens=False)  # no BOS: SmolLM2 adds none
    windows = read_examples(STORIES, tok, 100)
    cuts = range(0, len(stream) - 99, 100)
    assert [w.input_ids for w in windows] == [stream[i : i + 100] for i in cuts]


# -- files and their errors -------------------------------------------------------------------


def test_json_kinds(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    record = {"instruction": "Say hi.", "output": "hi"}
    want = read_examples(write(tmp_path, "a.jsonl", json.dumps(record) + "\n"), tok, 256)
    assert len(want) == 1
    pretty = write(tmp_path, "one.json", json.dumps(record, indent=2))
    lines = write(tmp_path, "lines.json", f"{json.dumps(record)}\n\n{json.dumps(record)}\n")
    sniffed = write(tmp_path, "data.train", json.dumps(record) + "\n")
    assert read_examples(pretty, tok, 256) == want
    assert read_examples(lines, tok, 256) == want * 2
    assert read_examples(sniffed, tok, 256) == want
    assert read_examples(write(tmp_path, "empty.json", "[ ]"), tok, 256) == []
    # a text file given directly, whatever its name
    prose = write(tmp_path, "README", '{"not": "a record"}\nand some prose after it\n')
    assert read_examples(prose, tok, 8)[0].input_ids == [BOS, *b'{"not":']


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    good = json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    cases = {
        "{not json}": r":3: not valid JSON \(Expecting property name enclosed in double quotes "
        r"at column 2\)$",
        json.dumps({"prompt": "a", "completion": "b"}): r":3: expected messages or "
        r"instruction/output \(got keys: prompt, completion\)$",
        "[1, 2]": r":3: expected a JSON object, got a list$",
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}): r":3: no "
        r"assistant turn \(only assistant tokens are scored\)$",
        json.dumps({"messages": [{"role": "bot", "content": "a"}]}): r":3: messages\[0\]\.role: "
        r"expected one of system, user, assistant, got 'bot'$",
        json.dumps({"messages": [{"role": "user", "content": 5}]}): r":3: messages\[0\]\.content: "
        r"expected a string, got a number$",
        json.dumps({"messages": []}): r":3: 'messages': expected a non-empty list of objects$",
        json.dumps({"instruction": "a", "output": None}): r":3: 'output': expected a string, "
        r"got null$",
    }
    for bad, message in cases.items():
        path = write(tmp_path, "d.jsonl", f"{good}\n\n{bad}\n{good}\n")
        with pytest.raises(ValidationError, match=f"^{path}{message}"):
            read_examples(path, ByteTokenizer(), 256, render_chat=renderer(SIMPLE))


def test_json_list_errors_name_the_items_line(tmp_path: Path) -> None:
    items = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}, {"x": 1}]
    path = write(tmp_path, "items.json", json.dumps(items, indent=2))
    with pytest.raises(ValidationError, match=rf"^{path}:10: expected messages or instruction"):
        read_examples(path, ByteTokenizer(), 256)
    path = write(tmp_path, "broken.json", '[\n  {"instruction": "a", "output": "b"},\n  {"x": ]\n')
    with pytest.raises(ValidationError, match=rf"^{path}:3: not valid JSON \(Expecting value"):
        read_examples(path, ByteTokenizer(), 256)
    path = write(tmp_path, "unclosed.json", '[{"instruction": "a", "output": "b"}\n\n')
    with pytest.raises(ValidationError, match=rf"^{path}:3: not valid JSON \(expected ',' or ']'"):
        read_examples(path, ByteTokenizer(), 256)


def test_template_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "c.jsonl", CHAT.read_text())
    counting = "{{ messages | length }}\n" + SIMPLE  # the text before a turn changes with it
    with pytest.raises(ValidationError) as err:
        read_examples(path, ByteTokenizer(), 1024, render_chat=renderer(counting))
    assert str(err.value).startswith(
        f"{path}:1: the chat template does not render this conversation incrementally"
    )
    failing = "{{ raise_exception('no system messages') if messages[0].role == 'system' }}"
    with pytest.raises(ValidationError) as err:
        read_examples(path, ByteTokenizer(), 1024, render_chat=renderer(failing + SIMPLE))
    assert str(err.value) == (f"{path}:2: chat template raised an error: no system messages")


class MergingBytes(NoBosBytes):
    """Bytes, except that ``ab`` is one token (300): a boundary a prefix cannot see."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        out: list[int] = []
        for part in text.encode().split(b"ab"):
            out += [*part, 300]
        return out[:-1]


def test_tokens_that_merge_across_a_turn_are_refused(tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'user' %}Q {{ m.content }}\n{% else %}"
        "a{{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}a{% endif %}"
    )
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b is next"}]
    path = write(tmp_path, "m.jsonl", "\n" + json.dumps({"messages": convo}) + "\n")
    with pytest.raises(ValidationError) as err:
        read_examples(path, MergingBytes(), 64, render_chat=renderer(template))
    assert str(err.value).startswith(
        f"{path}:2: the tokens before or through assistant turn 1 are not a prefix of the whole "
        "conversation's tokens"
    )
    convo[1]["content"] = "c is fine"
    path.write_text(json.dumps({"messages": convo}))
    (ex,) = read_examples(path, MergingBytes(), 64, render_chat=renderer(template))
    assert bytes(scored(ex)) == b"c is fine\n"


def test_missing_path_and_empty_directory_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^train\.data: {tmp_path}/nope does not exist$"):
        read_examples(tmp_path / "nope", ByteTokenizer(), 64)
    write(tmp_path, "notes.csv", "a,b")
    with pytest.raises(ConfigError, match=rf"^my\.data: directory {tmp_path} has no data files"):
        read_examples(tmp_path, ByteTokenizer(), 64, key="my.data")
    with pytest.raises(ConfigError, match=r"^train\.seq_len: expected an int >= 2, got 1$"):
        read_examples(STORIES, ByteTokenizer(), 1)


def test_directory_of_mixed_kinds_in_name_order(tmp_path: Path) -> None:
    for src in (STORIES, CHAT, ALPACA):
        write(tmp_path, src.name, src.read_text())
    tok = ByteTokenizer()
    got = read_examples(tmp_path, tok, 1024)
    alpaca = read_examples(ALPACA, tok, 1024)
    chat = read_examples(CHAT, tok, 1024)
    stories = read_examples(STORIES, tok, 1024)
    assert got == alpaca + chat + stories and len(stories) == 3


# -- TrainData --------------------------------------------------------------------------------


def rows(n: int, width: int = 4) -> list[Example]:
    return [Example([i] * (1 + i % width), [i] * (1 + i % width)) for i in range(n)]


def data(n: int = 10, **kw: Any) -> TrainData:
    args: dict[str, Any] = {"seq_len": 8, "eval_fraction": 0.2, "seed": 3, "pad_id": 0, **kw}
    return TrainData(rows(n), **args)


def test_split_is_seeded_disjoint_and_sized() -> None:
    d = data(10)
    held = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:2].sort().values
    assert [ex.input_ids[0] for ex in d.eval] == held.tolist()
    assert sorted(ex.input_ids[0] for ex in d.train + d.eval) == list(range(10))
    assert [ex.input_ids[0] for ex in data(10).eval] == held.tolist()
    assert any(
        [ex.input_ids[0] for ex in data(10, seed=s).eval] != held.tolist() for s in range(4, 8)
    )
    assert (len(data(10, eval_fraction=0.01).eval), len(data(10, eval_fraction=0).eval)) == (1, 0)
    assert (len(data(2, eval_fraction=0.9).eval), len(data(1, eval_fraction=0.5).eval)) == (1, 0)
    assert len(data(100, eval_fraction=0.25).eval) == 25


def test_order_is_a_seeded_permutation() -> None:
    d = data(10, eval_fraction=0)
    first = d.order(0)
    assert sorted(first) == list(range(10))
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert d.order(0) == first == data(10, eval_fraction=0).order(0)
    assert d.order(1) != first and data(10, eval_fraction=0, seed=4).order(0) != first
    assert d.order(1) == torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()


def test_next_indices_cross_epochs_like_concatenated_orders() -> None:
    d = data(10)  # 8 train examples
    stream = d.order(0) + d.order(1) + d.order(2)
    assert d.position(0) == (0, 0) and d.position(13) == (1, 5) and d.position(16) == (2, 0)
    assert d.next_indices(5, 10) == stream[5:15]
    assert d.next_indices(0, 20) == stream[:20]
    assert d.next_indices(13, 3) == stream[13:16]
    assert d.next_indices(7, 0) == []
    # resuming from a count gives the same indices as one uninterrupted run
    run = [i for step in range(6) for i in d.next_indices(3 * step, 3)]
    assert run == stream[:18]


def test_batch_pads_on_the_right() -> None:
    examples = [Example([5, 6, 7], [IGNORE, 6, 7]), Example([8], [8]), Example([1, 2], [1, 2])]
    d = TrainData(examples, seq_len=4, eval_fraction=0, seed=0, pad_id=99)
    ids, labels, valid = d.batch([1, 0])
    assert ids.dtype == labels.dtype == torch.long and valid.dtype == torch.bool
    assert ids.tolist() == [[8, 99, 99], [5, 6, 7]]
    assert labels.tolist() == [[8, IGNORE, IGNORE], [IGNORE, 6, 7]]
    assert valid.tolist() == [[True, False, False], [True, True, True]]
    ids, labels, valid = d.batch([2])
    assert ids.tolist() == [[1, 2]] and valid.all()
    e = TrainData(examples, seq_len=4, eval_fraction=0.5, seed=0, pad_id=0)
    assert e.batch([0], split="eval")[0].tolist() == [e.eval[0].input_ids]


def test_traindata_errors() -> None:
    with pytest.raises(ConfigError, match=r"^train\.eval_fraction: expected a number in \[0, 1\)"):
        data(eval_fraction=1.0)
    with pytest.raises(ConfigError, match=r"^train\.data: no training examples$"):
        TrainData([], seq_len=8, eval_fraction=0, seed=0, pad_id=0)
    with pytest.raises(ValidationError, match=r"example 3 has 4 tokens; expected 1 to train\.seq"):
        data(seq_len=3)
    d = data(10)
    with pytest.raises(ValidationError, match=r"index 8 is outside the train split \(size 8\)"):
        d.batch([0, 8])
    with pytest.raises(ValidationError, match="split: expected 'train' or 'eval'"):
        d.batch([0], split="test")
    with pytest.raises(ValidationError, match="batch: no indices"):
        d.batch([])
    with pytest.raises(ValidationError, match="4 input ids but 3 labels"):
        Example([1, 2, 3, 4], [1, 2, 3])


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe() -> Any:
    """A 400-token byte-level BPE trained on the shipped data, with ChatML special tokens and
    SmolLM2's template (no BOS added, EOS ``<|im_end|>``)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from plugformer.core.tokenizers import from_hf_json

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [STORIES.read_text(), CHAT.read_text(), ALPACA.read_text()]
    tok.train_from_iterator(corpus, trainer)
    return from_hf_json(
        tok.to_str(), bos_token="<|endoftext|>", eos_token="<|im_end|>", chat_template=SMOL
    )
