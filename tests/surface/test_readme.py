"""The README's test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_commands = [b for b in blocks if "pytest" in b]
    assert len(test_commands) == 1
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0].strip() in ci_lines


def _python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)\n```", readme, flags=re.S)


def _block(marker: str) -> str:
    found = [b for b in _python_blocks() if marker in b]
    assert len(found) == 1, marker
    return found[0]


def test_readme_python_examples_run():
    from plugformer.core.loader import reset

    api, plugin = _block("engine.logits("), _block("my_attention")
    reset()
    try:
        ns: dict = {}
        exec(compile(api, "README.md", "exec"), ns)
        assert ns["logits"].shape == (1, 3, 49152)
        assert ns["reply"].text and ns["out"].token_ids
        ns = {}
        exec(compile(plugin, "README.md", "exec"), ns)
        assert ns["engine"].attention_config.name == "my_attention"
        assert ns["engine"].logits([[256, 72, 105]]).shape == (1, 3, 258)
    finally:
        reset()


def test_readme_serving_example_runs(capsys):
    ns: dict = {}
    exec(compile(_block("AsyncEngine"), "README.md", "exec"), ns)
    printed = capsys.readouterr().out
    answers = ns["asyncio"].run(ns["ask"]("Hi!"))  # the same request again: the same text
    assert printed.startswith("[") and repr(answers) in printed
    assert ns["served"].scheduler.pool.free_blocks == ns["served"].scheduler.pool.num_blocks


def _cookbook_spans() -> list[str]:
    """Every command of the override cookbook's table, as written (a Python aside such as
    ``(Python: `logit_bias={...}`)`` is not a command)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Override cookbook", 1)[1].split("\n| want | override |\n", 1)[1]
    table = table.split("\n\n", 1)[0]
    spans = []
    for row in table.splitlines()[1:]:
        cell = row.rstrip("|").rsplit("|", 1)[1]
        cell = re.sub(r"\((Python|PyTorch)[^)]*\)", "", cell)
        spans += re.findall(r"`([^`]+)`", cell)
    return spans


def _shell_words(span: str) -> list[str]:
    """The words bash makes of ``span`` (quotes removed, braces expanded), as a user's shell."""
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {span}"], capture_output=True, text=True, check=True
    )
    return out.stdout.split("\0")[:-1]


COOKBOOK = _cookbook_spans()


def test_the_cookbook_is_found():
    assert len(COOKBOOK) >= 30
    assert "positional=alibi" in COOKBOOK


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_hf_llama, byte_tokenizer_files):
    path = tmp_path_factory.mktemp("models") / "x"
    tiny_hf_llama(vocab_size=260, bos_token_id=256, eos_token_id=257).save_pretrained(
        path, safe_serialization=True
    )
    byte_tokenizer_files(path)
    return path


@pytest.mark.parametrize("span", COOKBOOK)
def test_cookbook_row_runs_verbatim(span, hf_dir, tmp_path, monkeypatch, capsys):
    """Each row runs as a user's shell would pass it: ``generate`` (or the row's own command)
    on ``model=tiny`` when the row names no model; ``/models/x`` and ``DIR`` are placeholders
    for a real checkpoint and a fresh directory. A ``torchrun`` row is composed and checked
    for its prompt here (the parallel tests launch torchrun itself)."""
    from plugformer.core import cli
    from plugformer.core.native import build as native

    words = [w.replace("/models/x", str(hf_dir)) for w in _shell_words(span)]
    words = [re.sub(r"=DIR$", f"={tmp_path / 'out'}", w) for w in words]
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value before the command
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    command = "generate"
    if words and words[0] == "torchrun":
        at = words.index("plugformer")
        assert words[at - 1] == "-m" and words[at + 1] == "generate", span
        opts = cli.parse_options("generate", words[at + 2 :])
        assert opts.prompt, f"{span}: no prompt"
        assert cli.main(["config", *opts.overrides]) == 0, capsys.readouterr().err
        return
    if words and words[0] == "plugformer":
        command, words = words[1], words[2:]
    if not any(w.startswith(("model=", "model.path=")) for w in words):
        # the tiny random model, or a tiny checkpoint where the command needs tensor names
        words = [f"model.path={hf_dir}" if command == "quantize" else "model=tiny", *words]
    extra = ["hi", "max_new_tokens=2", "--quiet"] if command == "generate" else []
    code = cli.main([command, *extra, *words])
    err = capsys.readouterr().err
    if "linear_kernel=native" in words and native.unavailable_reason() is not None:
        assert code == 2 and "linear_kernel=native cannot run" in err  # this machine lacks it
        return
    assert code == 0, f"{span}: {err}"
