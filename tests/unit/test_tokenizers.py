"""Tokenizers from model files and chat templates, against Hugging Face transformers.

The oracle is transformers' tokenizer loaded from the same files: the default model's GGUF
(SmolLM2-135M-Instruct, fetched as the CLI fetches it), small GGUF files written here with
``gguf.GGUFWriter``, and ``tokenizer.json`` directories written with ``tokenizers``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from plugformer.core.errors import CheckpointError, PlugformerError, ValidationError  # noqa: E402
from plugformer.core.interfaces.tokenizer import Tokenizer  # noqa: E402
from plugformer.core.tokenizers.byte import ByteTokenizer  # noqa: E402
from plugformer.core.tokenizers.chat import ChatTemplateError, render_chat  # noqa: E402
from plugformer.core.tokenizers.hf import HFTokenizer, gguf_tokenizer  # noqa: E402

# Unicode (accents, CJK, emoji with a skin tone), runs of spaces/tabs/newlines, digits,
# punctuation, contractions and special tokens written in the text.
TEXT = (
    "Héllo wörld! Ça va? naïve café 日本語のテキスト 中文 😀🚀👍🏽\n"
    "  two spaces,   three\tone tab\t\ttwo tabs\n\n\nthree newlines \r\n"
    "Count 1234567 and 3.14159 or x=42; (a+b)*c-d/e [ok] {k: v} <tag/> @#$%^&~`|\\ ...!?\n"
    "I'm sure they'll say it's fine, don't you think? We've SEEN It'S ok.\n"
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n  trailing  "
)
# Whitespace directly before a digit: SmolLM2's own tokenizer splits digits off first
# (``Digits(individual_digits=True)``, llama.cpp's ``smollm`` pre-tokenizer); transformers'
# GGUF converter does not, so there the two differ (see test_smollm_digit_split_*).
DIGIT_TEXT = "Total:\n\n\n 1234567 apples,  89 pears\t7 figs, 2024-01-02 ١٢٣ ½"


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The ``tokenizer.*`` metadata of a GGUF file, read with gguf-py's reader."""
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def hf_tokens(hf: Any, ids: list[int]) -> list[str]:
    return hf.convert_ids_to_tokens(ids)


# -- SmolLM2's GGUF -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_meta(smollm2_gguf: Path) -> dict[str, Any]:
    return gguf_metadata(smollm2_gguf)


@pytest.fixture(scope="module")
def ours(smol_meta: dict[str, Any]) -> HFTokenizer:
    return gguf_tokenizer(smol_meta)


@pytest.fixture(scope="module")
def hf(smollm2_gguf: Path) -> Any:
    path = smollm2_gguf
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def saved_dir(hf: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """transformers' GGUF tokenizer written out as a model directory (save_pretrained)."""
    path = tmp_path_factory.mktemp("smol_tokenizer")
    hf.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("add_special", [True, False])
def test_gguf_encode_equals_transformers(ours: HFTokenizer, hf: Any, add_special: bool) -> None:
    ids = ours.encode(TEXT, add_special_tokens=add_special)
    expected = hf.encode(TEXT, add_special_tokens=add_special)
    assert ids == expected, (hf_tokens(hf, ids), hf_tokens(hf, expected))
    assert ours.encode("") == hf.encode("") == []


def test_gguf_special_tokens_in_text_stay_whole(ours: HFTokenizer) -> None:
    ids = ours.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == ours.token_to_id("<|im_start|>") == 1
    assert ids[-1] == ours.token_to_id("<|im_end|>") == 2


@pytest.mark.parametrize("skip", [True, False])
def test_gguf_decode_equals_transformers(ours: HFTokenizer, hf: Any, skip: bool) -> None:
    ids = hf.encode(TEXT)
    assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_gguf_round_trip(ours: HFTokenizer) -> None:
    for text in (TEXT, DIGIT_TEXT, "", " ", "\n", "😀"):
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    skipped = ours.decode(ours.encode("<|im_start|>user\nHi<|im_end|>"))
    assert skipped == "user\nHi"


def test_gguf_bos_eos_and_vocab(ours: HFTokenizer, hf: Any) -> None:
    assert isinstance(ours, Tokenizer)
    assert ours.vocab_size == len(hf) == 49152
    assert ours.bos_token_id == hf.bos_token_id == 1
    assert ours.eos_token_ids == [hf.eos_token_id] == [2]
    assert ours.bos_token == hf.bos_token and ours.eos_token == hf.eos_token
    # SmolLM2's GGUF says add_bos_token=false: no BOS, like transformers
    assert ours.add_bos_token is False
    assert ours.encode("Hi")[0] != ours.bos_token_id
    assert ours.encode("Hi") == hf("Hi")["input_ids"]
    assert ours.special_ids == {i for i, t in hf.added_tokens_decoder.items() if t.special}
    assert set(hf.all_special_ids) <= ours.special_ids
    for i in (0, 1, 2, 17, 905, 49151):
        assert ours.id_to_token(i) == hf.convert_ids_to_tokens(i)
        assert ours.token_to_id(ours.id_to_token(i) or "") == i
    assert ours.token_to_id("no such token ever") is None
    assert ours.chat_template == hf.chat_template


def test_gguf_add_bos_flag(smol_meta: dict[str, Any], hf: Any) -> None:
    with_bos = gguf_tokenizer({**smol_meta, "tokenizer.ggml.add_bos_token": True})
    assert with_bos.add_bos_token is True
    assert with_bos.encode("Hi there") == [hf.bos_token_id, *hf.encode("Hi there")]
    assert with_bos.encode("Hi there", add_special_tokens=False) == hf.encode("Hi there")


def test_smollm_digit_split_follows_the_models_own_tokenizer(
    ours: HFTokenizer, hf: Any, saved_dir: Path, tmp_path: Path
) -> None:
    """SmolLM2's published tokenizer.json splits digits off before the GPT-2 regex, and so does
    llama.cpp's ``smollm`` pre-tokenizer; we follow them. transformers' GGUF tokenizer lacks the
    split, which only shows where whitespace runs into a digit ("\\n\\n\\n 1")."""
    spec = json.loads((saved_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            },
        ],
    }
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((saved_dir / name).read_bytes())
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    original = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in (TEXT, DIGIT_TEXT):
        ids = ours.encode(text)
        assert ids == original.encode(text), (
            hf_tokens(hf, ids),
            hf_tokens(hf, original.encode(text)),
        )
    # "\n\n\n 1": ours ends the whitespace run at the digit; transformers' GGUF path does not
    assert hf_tokens(hf, ours.encode("a\n\n\n 1")) == ["a", "ĊĊ", "ĊĠ", "1"]


# -- small GGUF files: each pre-tokenizer, BOS flag, user-defined tokens ---------------------

CORPUS = [
    "Hello world, it's 2024 and we've got 1234567 apples!  Ain't it?",
    "The quick brown fox jumps over the lazy dog. THE END'S NEAR",
    "I'm sure they'll say it's fine; don't you think?\n\n\tOK\r\n",
    "Numbers: 3.14159, 42, 1000000 and 007.   spaces   here",
    "    indented\n\tcode(x);\n\n  return 12;\n",
    "café naïve résumé 日本語 中文 😀 ½ ²",
]


@pytest.fixture(scope="module")
def tiny_vocab() -> tuple[list[str], list[str]]:
    """Tokens and merges of a 420-token byte-level BPE trained on CORPUS (digits merge too)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for token, i in model["vocab"].items():
        tokens[i] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def write_gguf(path: Path, tokens: list[str], merges: list[str], **kv: Any) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(kv.get("model", "gpt2"))
    writer.add_tokenizer_pre(kv.get("pre", "gpt-2"))
    writer.add_token_list(tokens)
    types = kv.get("types") or [3 if t.startswith("<|") else 1 for t in tokens]
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if "add_bos" in kv:
        writer.add_add_bos_token(kv["add_bos"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Pre-tokenizers whose split transformers' GGUF converter knows too.
@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "gpt-4o", "tekken"])
@pytest.mark.parametrize("add_bos", [False, True])
def test_small_gguf_equals_transformers(
    tiny_vocab: tuple[list[str], list[str]], tmp_path: Path, pre: str, add_bos: bool
) -> None:
    tokens, merges = tiny_vocab
    path = write_gguf(tmp_path / "t.gguf", tokens, merges, pre=pre, add_bos=add_bos)
    ours = gguf_tokenizer(gguf_metadata(path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert ours.add_bos_token is add_bos
    for text in (TEXT, DIGIT_TEXT, *CORPUS):
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            expected = hf.encode(text, add_special_tokens=special)
            assert ids == expected, (pre, text, hf_tokens(hf, ids), hf_tokens(hf, expected))
        assert ours.decode(expected) == hf.decode(expected, skip_special_tokens=True)
        assert ours.decode(expected, skip_special_tokens=False) == hf.decode(
            expected, skip_special_tokens=False
        )


def test_small_gguf_user_defined_tokens(
    tiny_vocab: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    """Type 4 (user-defined) tokens match whole but are not special; a "control" token not
    spelled in the byte alphabet is a mislabel and is not added (both as transformers)."""
    tokens, merges = list(tiny_vocab[0]), tiny_vocab[1]
    tokens += ["<think>", "<sp ace>"]
    types = [3 if t.startswith("<|") else 1 for t in tokens[:-2]] + [4, 3]
    path = write_gguf(tmp_path / "u.gguf", tokens, merges, types=types)
    ours = gguf_tokenizer(gguf_metadata(path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = "a<think>b</think> c <sp ace> <|im_end|>"
    assert ours.encode(text) == hf.encode(text)
    assert ours.token_to_id("<think>") in ours.encode(text)
    assert ours.token_to_id("<think>") not in ours.special_ids
    assert ours.decode(ours.encode(text)) == hf.decode(hf.encode(text), skip_special_tokens=True)


def test_gguf_metadata_errors(smol_meta: dict[str, Any]) -> None:
    def err(meta: dict[str, Any]) -> str:
        with pytest.raises(CheckpointError) as info:
            gguf_tokenizer(meta)
        msg = str(info.value)
        assert "\n" not in msg
        return msg

    msg = err({**smol_meta, "tokenizer.ggml.model": "llama"})
    assert "tokenizer.ggml.model" in msg and "'llama'" in msg
    msg = err({**smol_meta, "tokenizer.ggml.pre": "no-such-pre"})
    assert "tokenizer.ggml.pre" in msg and "no-such-pre" in msg and "smollm" in msg
    assert "tokenizer.ggml.tokens" in err({"tokenizer.ggml.model": "gpt2"})
    assert "bos_token_id" in err({**smol_meta, "tokenizer.ggml.bos_token_id": 10**6})
    types = list(smol_meta["tokenizer.ggml.token_type"])[:-1]
    assert "token_type" in err({**smol_meta, "tokenizer.ggml.token_type": types})
    merges = ["a b c", *smol_meta["tokenizer.ggml.merges"]]
    assert "merges[0]" in err({**smol_meta, "tokenizer.ggml.merges": merges})
    assert "merges" in err({**smol_meta, "tokenizer.ggml.merges": ["Ġ zzzzz"]})
    assert "tokens[2]" in err({**smol_meta, "tokenizer.ggml.tokens": ["a", "b", 3]})


# -- tokenizer.json directories ------------------------------------------------------------


def test_from_dir_equals_transformers(saved_dir: Path, ours: HFTokenizer) -> None:
    mine = HFTokenizer.from_dir(saved_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(str(saved_dir))
    for special in (True, False):
        assert mine.encode(TEXT, special) == theirs.encode(TEXT, add_special_tokens=special)
    ids = theirs.encode(TEXT)
    for skip in (True, False):
        assert mine.decode(ids, skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert mine.chat_template == theirs.chat_template == ours.chat_template  # chat_template.jinja
    assert (mine.bos_token_id, mine.eos_token_ids) == (theirs.bos_token_id, [theirs.eos_token_id])
    assert mine.vocab_size == len(theirs) and mine.special_ids == ours.special_ids
    assert mine.add_bos_token is False


def tiny_tokenizer_json(bos_in_post_processor: bool) -> tokenizers.Tokenizer:
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=["<unk>", "<s>", "</s>", "<|eot|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    if bos_in_post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    return tok


def write_dir(path: Path, tok: tokenizers.Tokenizer, config: dict[str, Any], gen: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if gen is not None:
        (path / "generation_config.json").write_text(json.dumps(gen), encoding="utf-8")
    return path


TEMPLATES = [
    {
        "name": "default",
        "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}"
        "{{ eos_token }}{% endfor %}",
    },
    {"name": "tool_use", "template": "{{ tools }}"},
]


def test_from_dir_tiny_tokenizer(tmp_path: Path) -> None:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "special": True, "__type": "AddedToken"},
        "chat_template": TEMPLATES,
    }
    path = write_dir(tmp_path / "m", tiny_tokenizer_json(True), config, {"eos_token_id": [2, 3]})
    mine = HFTokenizer.from_dir(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(path))
    for text in (TEXT, DIGIT_TEXT, *CORPUS, ""):
        for special in (True, False):
            assert mine.encode(text, special) == theirs.encode(text, add_special_tokens=special)
        ids = theirs.encode(text)
        for skip in (True, False):
            assert mine.decode(ids, skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert mine.add_bos_token is True and mine.encode("Hi")[0] == mine.bos_token_id == 1
    assert mine.eos_token_ids == [2, 3]  # tokenizer_config's EOS, then generation_config's
    assert mine.chat_template == TEMPLATES[0]["template"]
    messages = [{"role": "user", "content": "Hi"}]
    assert render_chat(
        mine.chat_template, messages, bos_token=mine.bos_token, eos_token=mine.eos_token
    ) == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_from_dir_add_bos_without_post_processor(tmp_path: Path) -> None:
    """With no post-processor in tokenizer.json, ``add_bos_token`` from tokenizer_config.json
    decides (transformers 5 ignores the flag whenever tokenizer.json exists; llama.cpp's
    converter and transformers 4 honour it)."""
    tok = tiny_tokenizer_json(False)
    base = {"bos_token": "<s>", "eos_token": "</s>"}
    plain = HFTokenizer.from_dir(write_dir(tmp_path / "a", tok, base, None))
    assert plain.add_bos_token is False and plain.eos_token_ids == [2]
    flagged = HFTokenizer.from_dir(
        write_dir(tmp_path / "b", tok, {**base, "add_bos_token": True}, {"eos_token_id": 3})
    )
    assert flagged.add_bos_token is True
    assert flagged.encode("Hi") == [1, *plain.encode("Hi")]
    assert flagged.encode("Hi", add_special_tokens=False) == plain.encode("Hi")
    assert flagged.eos_token_ids == [2, 3]


def test_from_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        HFTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        HFTokenizer.from_dir(tmp_path)
    tiny_tokenizer_json(False).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json"):
        HFTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": "yes"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="add_bos_token"):
        HFTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": "x"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"generation_config\.json"):
        HFTokenizer.from_dir(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 99999}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="99999"):
        HFTokenizer.from_dir(tmp_path)


def test_runtime_errors_are_typed(ours: HFTokenizer) -> None:
    for bad in ([-1], [ours.vocab_size], [1.5]):
        with pytest.raises(ValidationError, match="outside the vocabulary"):
            ours.decode(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="text"):
        ours.encode(b"bytes")  # type: ignore[arg-type]


def test_byte_tokenizer_is_still_a_tokenizer() -> None:
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.decode(tok.encode("héllo")) == "héllo"


# -- chat templates --------------------------------------------------------------------------

TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan? Answer in 日本語 😀"},
]
SYSTEM = {"role": "system", "content": "You are terse."}


@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("gen_prompt", [True, False])
def test_smollm2_chat_template_equals_transformers(
    ours: HFTokenizer, hf: Any, system: bool, gen_prompt: bool
) -> None:
    messages = [SYSTEM, *TURNS] if system else list(TURNS)
    assert ours.chat_template is not None
    text = render_chat(
        ours.chat_template,
        messages,
        add_generation_prompt=gen_prompt,
        bos_token=ours.bos_token,
        eos_token=ours.eos_token,
    )
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)
    assert text == expected
    assert ("You are a helpful AI assistant named SmolLM" in text) is not system
    assert ours.encode(text, add_special_tokens=False) == hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=gen_prompt, return_dict=False
    )


def test_template_features_match_transformers(hf: Any) -> None:
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'skip' %}"
        "{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m | tojson }}\n"
        "{% endfor %}{{ ns.n }}{% if add_generation_prompt %}>{% endif %}"
    )
    messages = [{"role": "user", "content": "héllo <b>"}, {"role": "skip", "content": "x"}]
    expected = hf.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert render_chat(template, messages) == expected


def test_raise_exception_gives_typed_error() -> None:
    template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('x') }}{% endif %}"
    with pytest.raises(ChatTemplateError) as info:
        render_chat(template, TURNS)
    assert isinstance(info.value, ValidationError) and isinstance(info.value, PlugformerError)
    assert str(info.value) == "chat template raised an error: x"
    assert render_chat(template, [SYSTEM]) == ""


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ raise_exception.__globals__ }}",
        "{{ namespace.__init__.__globals__['os'] }}",
        "{% set ns = namespace(__class__=1) %}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
        "{{ messages.append({'role': 'x'}) }}",
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ 'x' * 100000000 }}",
        "{{ 10 ** 100000 }}",
        "{% for i in range(10**9) %}{% endfor %}",
        "{{ '{0.__class__}'.format('') }}",
    ],
)
def test_sandbox_blocks_unsafe_templates(template: str) -> None:
    with pytest.raises(ChatTemplateError) as info:
        render_chat(template, TURNS)
    assert "\n" not in str(info.value)


def test_template_syntax_and_runtime_errors() -> None:
    with pytest.raises(ChatTemplateError, match="syntax error at line 2"):
        render_chat("ok\n{% for %}", TURNS)
    with pytest.raises(ChatTemplateError, match="failed"):
        render_chat("{{ messages[0]['content'] + 1 }}", TURNS)
    with pytest.raises(ChatTemplateError, match="failed"):
        render_chat("{{ messages[99]['content'].upper() }}", TURNS)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "messages: expected a list"),
        ([["user", "hi"]], r"messages\[0\]: expected a dict"),
        ([{"content": "hi"}], "missing 'role'"),
        ([{"role": "user"}], "missing 'content'"),
        ([{"role": "user", "content": None}], "'content'.*expected str"),
        ([{"role": 1, "content": "x"}], "'role'.*expected str"),
        ([{"role": "user", "content": "x", "extra": object()}], "plain data"),
    ],
)
def test_messages_are_validated(messages: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        render_chat("{{ messages }}", messages)


def test_extra_variables_and_messages_are_copies() -> None:
    messages = [{"role": "user", "content": "hi", "name": "bob"}]
    out = render_chat(
        "{{ bos_token }}{{ messages[0].name }}{{ tools[0].name }}{{ eos_token }}",
        messages,
        bos_token="<s>",
        eos_token="</s>",
        tools=[{"name": "search"}],
    )
    assert out == "<s>bobsearch</s>"
    with pytest.raises(ValidationError, match="tools"):
        render_chat("{{ tools }}", messages, tools=[print])
