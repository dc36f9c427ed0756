"""Prompts on the command line: free text taken verbatim (punctuation, quotes, brackets, ``=``
and ``${...}`` are just text), and token ids for checkpoints without a tokenizer."""

from __future__ import annotations

import pytest

import plugformer
from plugformer.core import cli
from plugformer.core.model.save import save_decoder

TINY = "model=tiny"
GREEDY = ["max_new_tokens=5", "ignore_eos=true"]


@pytest.fixture(scope="module")
def engine():
    return plugformer.Engine.from_overrides([TINY])


def test_take_text_keeps_prompts_verbatim():
    texts, rest = cli.take_text(
        [TINY, "prompt=Hi, what's ${oc.env:HOME} [1] = 2?", "system_prompt='Be brief.'"]
    )
    assert texts == {"prompt": "Hi, what's ${oc.env:HOME} [1] = 2?", "system_prompt": "Be brief."}
    assert rest == [TINY]
    assert cli.prompt_of("[5, 6,7]") == [5, 6, 7]
    assert cli.prompt_of("[5, x]") == "[5, x]"  # not all integers: text


@pytest.mark.parametrize(
    "prompt", ["Hello, how are you?", "What's 2+2?", "café ${oc.env:HOME}", "请用一句话介绍巴黎"]
)
def test_generate_takes_any_text(engine, prompt, capsys):
    assert cli.main(["generate", TINY, f"prompt={prompt}", *GREEDY]) == 0
    want = engine.generate(prompt, max_new_tokens=5, ignore_eos=True).text
    assert capsys.readouterr().out == want + "\n"


def test_token_ids_for_a_checkpoint_without_a_tokenizer(engine, tmp_path, capsys):
    out = save_decoder(engine.model, tmp_path / "m")  # config.json + weights, no tokenizer
    assert cli.main(["generate", f"model.path={out}", "prompt=[256,72,105]", *GREEDY]) == 0
    text = capsys.readouterr().out  # this checkpoint has no tokenizer: ids only, no text
    loaded = plugformer.Engine.from_overrides([f"model.path={out}"])
    want = loaded.generate([256, 72, 105], max_new_tokens=5, ignore_eos=True)
    assert text == want.text + "\n" and len(want.token_ids) == 5
    assert cli.main(["generate", TINY, "prompt=[256,72,105]", *GREEDY]) == 0  # ids, tokenizer
    ids = engine.generate([256, 72, 105], max_new_tokens=5, ignore_eos=True).text
    assert capsys.readouterr().out == ids + "\n"


def test_config_shows_the_prompt_as_typed(capsys):
    assert cli.main(["config", TINY, "prompt=a=b, [c] ${x}"]) == 0
    assert "prompt: a=b, [c] ${x}" in capsys.readouterr().out
