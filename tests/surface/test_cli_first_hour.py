"""The first hour on the command line (issue 15): prompts as people type them, one-line errors
with the right exit code before the model loads, per-command help, did-you-mean, the summary
line, token-id prompts, saved models that run, whole characters only, and chat."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import plugformer
from plugformer.core import cli
from plugformer.core.config import GROUP_KINDS, compose
from plugformer.core.model.save import save_decoder

TINY = "model=tiny"
GREEDY = ["max_new_tokens=5", "ignore_eos=true"]

#: every character class of the issue: quotes, commas, brackets, =, $, #, &, CJK, emoji,
#: accented Latin, newlines, and Hydra's own syntax
TEXTS = [
    "Hi!",
    "What's 2+2?",
    'She said "no", then left.',
    "Hello, how are you?",
    "[1, 2] {a: b} (c)",
    "1+1=2, x = y?",
    "$HOME ${oc.env:HOME} costs $5",
    "# not a comment & not a job; | pipe",
    "请用一句话介绍巴黎",
    "emoji 😊🌟 ok",
    "café naïve Ærø",
    "line one\nline two\n\nend",
]


@pytest.fixture(scope="module")
def engine():
    return plugformer.Engine.from_overrides([TINY])


def _api(engine, prompt, **kw):
    return engine.generate(prompt, max_new_tokens=5, ignore_eos=True, **kw)


# -- item 1: prompts -----------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_positional_prompt_is_verbatim_with_overrides_after(text):
    opts = cli.parse_options("generate", [TINY, text, "max_new_tokens=3", "seed=4"])
    assert opts.prompt == text
    assert opts.overrides == [TINY, "max_new_tokens=3", "seed=4"]
    opts = cli.parse_options("generate", ["--system", text, "-p", "x=y", TINY])
    assert (opts.system, opts.prompt, opts.overrides) == (text, "x=y", [TINY])


def test_words_are_joined_and_double_dash_ends_overrides():
    opts = cli.parse_options("generate", ["Tell", "me", TINY, "more", "--", "a=b", "-q"])
    assert opts.prompt == "Tell me more a=b -q" and opts.overrides == [TINY]
    assert not opts.quiet


@pytest.mark.parametrize("text", ["emoji 😊🌟 ok", "请用一句话介绍巴黎", "a\nb, [c] = ${d} & #e"])
def test_generate_positional_file_and_stdin_match_the_api(
    engine, text, tmp_path, capsys, monkeypatch
):
    want = _api(engine, text).text + "\n"
    assert cli.main(["generate", text, TINY, *GREEDY, "-q"]) == 0
    assert capsys.readouterr().out == want
    path = tmp_path / "p.txt"
    path.write_text(text + "\n", encoding="utf-8")  # the file's last newline is not the text's
    assert cli.main(["generate", "--prompt-file", str(path), TINY, *GREEDY, "-q"]) == 0
    assert capsys.readouterr().out == want
    monkeypatch.setattr(sys, "stdin", io.StringIO(text + "\n"))
    assert cli.main(["generate", TINY, "-", *GREEDY, "-q"]) == 0
    assert capsys.readouterr().out == want


def test_system_sets_the_system_prompt(monkeypatch):
    seen = {}

    def fake_start(command, args):
        opts = cli.parse_options(command, args)
        seen["system"] = opts.system
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_start", fake_start)
    assert cli.main(["chat", "--system", "Réponds en français, s'il te plaît!", TINY]) == 130
    assert seen["system"] == "Réponds en français, s'il te plaît!"


def test_prompt_given_twice_is_refused(capsys):
    assert cli.main(["generate", TINY, "hello", "prompt=bye"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plugformer: error: prompt: given more than once (the prompt text,")


# -- item 3: one line, right exit code, before the model loads ------------------------------
BAD = [
    (["linear_kernel=torch_int4"], 2, "linear_kernel: torch_int4 runs on the CPU in bfloat16"),
    (["device=foo"], 2, "device: 'foo' is not a device"),
    (["max_new_tokens=0"], 2, "max_new_tokens: expected an integer >= 1, got 0"),
    (["max_new_tokens=-1"], 2, "max_new_tokens: expected an integer >= 1, got -1"),
    (["max_new_tokens=100000"], 2, "max_new_tokens: 100000 new tokens exceed the context of 256"),
    (["min_new_tokens=-2"], 2, "min_new_tokens: expected an integer >= 0"),
    (["sampler=top_p", "sampler.top_p=5"], 2, "sampler 'top_p' refused"),
    (["sampler.temperature=abc"], 2, "sampler.temperature: Value 'abc'"),
    (["temperature=0.8"], 2, "did you mean 'sampler.temperature'?"),
    (["top_p=0.9"], 2, "did you mean 'sampler.top_p'?"),
    (["positional.theta=5e5"], 2, "theta belongs to positional=rope or "),
    (["positional=alibi", "positional.rotary_dim=8"], 2, "unknown key of positional=alibi"),
    (["stop=[Hi!]"], 2, "bad override"),
    (["--promt", "x"], 2, "unknown option --promt for generate; did you mean --prompt?"),
    (["model=nope"], 2, "unknown model 'nope'"),
    (["model.path=/no/such/dir"], 1, "/no/such/dir"),
    *[([f"{kind}=nope"], 2, f"unknown {kind} 'nope'") for kind in GROUP_KINDS],
]


@pytest.mark.parametrize(("args", "code", "text"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_invocations_are_one_line_before_loading(args, code, text, capsys, monkeypatch):
    loads = []
    if "model.path" not in args[0]:  # the rest are refused before the model loads
        monkeypatch.setattr(
            "plugformer.core.engine.Engine.__init__", lambda *a, **k: loads.append(a) or 1 / 0
        )
    rc = cli.main(["generate", TINY, "hello", *args])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert (rc, len(lines)) == (code, 1), err
    assert lines[0].startswith("plugformer: error: ") and text in lines[0], err
    assert "Traceback" not in err and loads == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_build_is_a_refusal_before_loading(capsys, monkeypatch):
    monkeypatch.setattr("plugformer.core.engine.Engine.__init__", lambda *a, **k: 1 / 0)
    assert cli.main(["generate", TINY, "hello", "device=cuda"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("plugformer: error: device=cuda: ")


def test_api_refuses_what_the_cli_refuses(engine):
    for n in (0, -1, 100000):
        with pytest.raises(plugformer.ValidationError, match="max_new_tokens"):
            engine.generate("hello", max_new_tokens=n)


def test_unexpected_error_is_one_line_with_traceback_on_request(capsys, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "config", lambda o: {}["boom"])
    assert cli.main(["config"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "plugformer: error: KeyError: 'boom' (unexpected: rerun with --traceback and report it)\n"
    )
    assert cli.main(["config", "--traceback"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_unknown_command_did_you_mean(capsys):
    assert cli.main(["generat"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "unknown command 'generat'; did you mean 'generate'?" in err[0]


def test_ctrl_c_while_starting_exits_130_with_a_newline():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "plugformer", "generate", TINY, "--progress", "hi"]
    proc = subprocess.Popen(
        # a long generation (seconds), so the signal lands while the CLI works
        [*cmd, "model.spec.max_seq_len=4096", "max_new_tokens=4000", "ignore_eos=true"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # a shell's background job starts with SIGINT ignored; a terminal's Ctrl-C does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the CLI is running: the loading line
    assert first.startswith("plugformer: loading tiny")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.endswith("\n")


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.7, 1.0, 1.5, 2.5])
def test_ctrl_c_at_any_moment_of_start_up_exits_130(delay):
    """The signal lands while Python imports torch and the plugins (0.15-2.5 s in), before the
    loading line: the same exit, with no traceback."""
    proc = subprocess.Popen(
        # a long generation, so the process is still running when the signal lands
        [sys.executable, "-m", "plugformer", "generate", TINY, "hi", "model.spec.max_seq_len=4096",
         "max_new_tokens=4000", "ignore_eos=true"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # 130, or killed by SIGINT itself (-2): Python ends that way when a KeyboardInterrupt passed
    # through a nested interpreter call, and a shell reports both as $? = 130
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "error" not in err


# -- item 2: help, version -----------------------------------------------------------------
def test_each_command_has_its_own_help_with_true_defaults(capsys):
    assert cli.main(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--prompt-file FILE", "--ids 1,2,3", "--system TEXT", "--quiet", " - "):
        assert option in text
    for kind in GROUP_KINDS:
        assert f"{kind}=" in text
    defaults = dict(re.findall(r"^  (\w+)=\S+ .*\(default: ([^)]+)\)$", text, re.M))
    config = compose([TINY])
    assert len(defaults) >= 9
    for key, shown in defaults.items():
        value = config.sampler.name if key == "sampler" else getattr(config, key)
        assert shown == (str(value).lower() if isinstance(value, bool) else str(value)), key
    helps = set()
    for command in cli.COMMANDS:
        assert cli.main([command, "-h"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: plugformer {command}")
        helps.add(out)
    assert len(helps) == len(cli.COMMANDS)


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"plugformer {plugformer.__version__}\n"


def test_help_does_not_import_torch():
    """``--help`` and ``--version`` answer before any heavy import (the whole package is lazy)."""
    code = (
        "import sys; from plugformer.core.cli import main; "
        "assert main(['generate', '--help']) == 0 and main(['--version']) == 0; "
        "heavy = sorted(m for m in ('torch', 'numpy', 'hydra', 'omegaconf') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# -- item 6: ids, saved models, whole characters -------------------------------------------
def test_ids_option(engine, capsys):
    assert cli.main(["generate", TINY, "--ids", "256,72, 105", *GREEDY, "-q"]) == 0
    assert capsys.readouterr().out == _api(engine, [256, 72, 105]).text + "\n"
    assert cli.main(["generate", TINY, "--ids", "1,x"]) == 2
    assert "--ids: expected comma-separated token ids" in capsys.readouterr().err


def test_saved_decoder_with_its_tokenizer_runs_from_the_cli(engine, tmp_path, capsys):
    out = save_decoder(engine.model, tmp_path / "m", tokenizer=engine.tokenizer)
    assert (out / "tokenizer_config.json").exists()
    assert cli.main(["generate", f"model.path={out}", "Hello, wörld", *GREEDY, "-q"]) == 0
    assert capsys.readouterr().out == _api(engine, "Hello, wörld").text + "\n"


def test_text_never_ends_in_a_partial_character(engine):
    # the byte tokenizer: 0xF0 starts a 4-byte character; forced, it never completes
    for n in (1, 2, 3):
        g = engine.generate("hi", n, ignore_eos=True, logit_bias={0xF0: 100.0})
        assert g.token_ids == [0xF0] * n and g.text == ""
    streamed = "".join(d for d, _ in engine.stream("hi", 2, logit_bias={0xC3: 100.0}))
    assert streamed == ""
    g = engine.generate("hi", max_new_tokens=3, ignore_eos=True, logit_bias={65: 100.0})
    assert g.text == "AAA"  # whole characters are kept


# -- item 4: summary and loading lines -----------------------------------------------------
def test_summary_line_after_a_generation(engine, capsys):
    assert cli.main(["generate", TINY, "Hello there", *GREEDY]) == 0
    err = capsys.readouterr().err.splitlines()
    n_prompt = len(engine.encode_prompt("Hello there"))
    assert len(err) == 1
    m = re.fullmatch(
        r"plugformer: (\d+) prompt tokens, (\d+) new tokens in ([\d.]+) s "
        r"\(first token ([\d.]+) s\), ([\d.]+) tokens/s",
        err[0],
    )
    assert m and (int(m[1]), int(m[2])) == (n_prompt, 5)
    assert float(m[4]) <= float(m[3]) and float(m[5]) > 0
    assert cli.main(["generate", TINY, "Hello there", *GREEDY, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert cli.main(["generate", TINY, "Hello", *GREEDY, "-q", "--progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "plugformer: loading tiny ..." and err[1].startswith("plugformer: loaded tiny")


def test_summary_rate_is_the_decode_rate():
    line = cli.summary_line(7, 11, 0.5, 1.5)
    assert line == (
        "plugformer: 7 prompt tokens, 11 new tokens in 1.50 s (first token 0.50 s), 10.0 tokens/s"
    )
    assert cli.summary_line(3, 1, 0.25, 0.25).endswith(
        "1 new tokens in 0.25 s (first token 0.25 s), 4.0 tokens/s"
    )


# -- item 5: chat --------------------------------------------------------------------------
class FakeEngine:
    """Tokens are characters; the reply echoes the last message reversed."""

    def __init__(self, config, interrupt_after=None):
        self.spec = SimpleNamespace(max_seq_len=40)
        self.parallel = SimpleNamespace(rank=0)
        self._eos = {0}
        self.tokenizer = SimpleNamespace(decode=lambda ids: "".join(chr(i) for i in ids))
        self.interrupt_after = interrupt_after
        self.seen: list[list[dict]] = []

    def encode_chat(self, messages):
        return [ord(c) for m in messages for c in m["content"] + "|"]

    def stream_chat(self, messages):
        self.seen.append([dict(m) for m in messages])
        for n, c in enumerate(messages[-1]["content"][::-1]):
            if self.interrupt_after is not None and n == self.interrupt_after:
                self.interrupt_after = None
                raise KeyboardInterrupt
            yield c, ord(c)
        yield "", 0  # EOS

    def close(self):
        pass


def _chat(monkeypatch, capsys, lines, **kw):
    fake = FakeEngine(None, **kw)
    monkeypatch.setattr("plugformer.core.engine.Engine", lambda config: fake)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(x + "\n" for x in lines)))
    rc = cli.main(["chat", TINY, "max_new_tokens=8"])
    return rc, fake, capsys.readouterr()


def test_chat_ctrl_c_stops_the_reply_and_keeps_the_conversation(monkeypatch, capsys, tmp_path):
    path = tmp_path / "c.json"
    rc, fake, out = _chat(monkeypatch, capsys, ["abcd", "xy", f"/save {path}"], interrupt_after=2)
    assert rc == 0 and out.out == "dc\nyx\n"
    saved = json.loads(path.read_text())
    assert saved == [
        {"role": "user", "content": "abcd"},
        {"role": "assistant", "content": "dc"},  # what was shown before Ctrl-C
        {"role": "user", "content": "xy"},
        {"role": "assistant", "content": "yx"},
    ]
    rc, fake, out = _chat(monkeypatch, capsys, [f"/load {path}", "q", "/exit", "never"])
    assert rc == 0 and out.out == "q\n"
    assert fake.seen == [[*saved, {"role": "user", "content": "q"}]]


def test_chat_trims_the_oldest_turns_with_a_notice(monkeypatch, capsys):
    rc, fake, out = _chat(monkeypatch, capsys, ["a" * 10, "b" * 10, "c" * 10])
    assert rc == 0
    # context 40, room 8: each turn costs 22 tokens (two messages of 10 + separators)
    assert [m["content"][0] for m in fake.seen[-1]] == ["c"]
    assert [m["content"][0] for m in fake.seen[1]] == ["b"]
    assert "dropped the 2 oldest message(s)" in out.err


def test_chat_load_refuses_a_bad_file(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"role": "user"}')
    rc, fake, out = _chat(monkeypatch, capsys, [f"/load {bad}", "hi"])
    assert rc == 0 and "expected a JSON list of {role, content} messages" in out.err
    assert fake.seen == [[{"role": "user", "content": "hi"}]]
