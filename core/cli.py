"""The command line: ``plugformer <command> [hydra overrides]``.

Errors are one line on stderr (``plugformer: error: ...``) with exit code 2 for configuration
errors and 1 otherwise; ``--traceback`` (or ``PLUGFORMER_TRACEBACK=1``) shows the traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from plugformer.core.errors import PlugformerError

USAGE = """\
usage: plugformer <command> [--traceback] [key=value ...]

commands:
  generate   generate text: plugformer generate prompt="Hello" [sampler=top_p sampler.top_p=0.9]
  chat       interactive multi-turn chat (tokens streamed): plugformer chat [system_prompt="..."]
  config     print the composed config for the given overrides
  plugins    list registered plugins (kind, name, source, version, plugin)
  bench      measure load, prefill, decode (batch 1 and 8), sampler and peak memory (JSON)
  quantize   write a quantized model directory (GPTQ layout): plugformer quantize quant=gptq
             quant.bits=4 quant.group_size=64 output_dir=DIR; load it with model.path=DIR
  eval       plugformer eval perplexity data=<text file> [window=512 stride=256]
  train      train or fine-tune: plugformer train train.data=FILE|DIR [train.steps=100 ...]

Overrides are Hydra overrides: attention=mha, positional=alibi, model.seed=3, ...
"""


def _plugins(overrides: list[str]) -> int:
    from plugformer.core.config import plugin_settings
    from plugformer.core.loader import get_plugins

    loaded = get_plugins(plugin_settings(overrides))
    rows = [("KIND", "NAME", "SOURCE", "VERSION", "PLUGIN")]
    for e in loaded.registry.entries():
        if e.source.origin == "distribution":
            source, version = e.source.distribution or "?", e.source.version or "?"
        else:
            source, version = e.source.origin, "" if e.source.origin == "local" else _version()
        rows.append((e.kind, e.name, source, version, e.source.plugin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _version() -> str:
    from plugformer.core.version import __version__

    return __version__


#: keys whose values are free text, taken verbatim (not parsed as Hydra override values, so
#: quotes, commas, brackets, ``=`` and ``${...}`` in a prompt are just text)
TEXT_KEYS = ("prompt", "system_prompt")
_IDS = re.compile(r"\[\s*\d+(\s*,\s*\d+)*\s*\]")


def take_text(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``prompt=...`` / ``system_prompt=...`` from the Hydra overrides, verbatim (one
    pair of matching outer quotes removed, as Hydra would)."""
    texts: dict[str, str] = {}
    rest: list[str] = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and key in TEXT_KEYS:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            texts[key] = value
        else:
            rest.append(arg)
    return texts, rest


def prompt_of(text: str) -> str | list[int]:
    """A CLI prompt: token ids when written as a list of integers (``prompt=[5,6,7]``, for a
    checkpoint without a tokenizer), else the text itself."""
    if _IDS.fullmatch(text.strip()):
        return [int(t) for t in re.findall(r"\d+", text)]
    return text


def _compose_with_text(overrides: list[str]) -> Any:
    from plugformer.core.config import compose

    texts, rest = take_text(overrides)
    return dataclasses.replace(compose(rest), **texts)


def _config(overrides: list[str]) -> int:
    from plugformer.core.commands.bench import model_label
    from plugformer.core.config import compose_dictconfig, to_yaml

    texts, overrides = take_text(overrides)
    cfg = compose_dictconfig(overrides)
    for key, value in texts.items():
        cfg[key] = value
    if cfg.model.path is not None:
        # the checkpoint at model.path is what loads: name it, and drop the zoo entry's
        # download source, which composition keeps from the default model but nothing reads
        cfg.model.name = model_label(cfg.model)
        cfg.model.source = None
    print(to_yaml(cfg), end="")
    return 0


def _generate(overrides: list[str]) -> int:
    from plugformer.core.engine import Engine
    from plugformer.core.errors import ConfigError

    config = _compose_with_text(overrides)
    if not config.prompt:
        raise ConfigError('prompt: missing value; set it with prompt="..."')
    engine = Engine(config)
    main_rank = engine.parallel.rank == 0  # under torchrun every rank generates, one prints
    try:
        for delta, _ in engine.stream(prompt_of(config.prompt)):
            if main_rank:
                sys.stdout.write(delta)
                sys.stdout.flush()
    finally:
        engine.close()
    if main_rank:
        sys.stdout.write("\n")
    return 0


def _chat(overrides: list[str]) -> int:
    from plugformer.core.engine import Engine
    from plugformer.core.errors import ConfigError, ValidationError

    config = _compose_with_text(overrides)
    if config.parallel.name != "single":
        raise ConfigError(
            f"chat reads one terminal in one process; with parallel={config.parallel.name} "
            "(under torchrun) use generate prompt=..."
        )
    engine = Engine(config)
    messages: list[dict[str, str]] = []
    if config.system_prompt is not None:
        messages.append({"role": "system", "content": config.system_prompt})
    interactive = sys.stdin.isatty()
    if interactive:
        print("plugformer chat: /reset starts over, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = messages[:1] if config.system_prompt is not None else []
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply: list[int] = []
        try:
            for delta, token in engine.stream_chat(messages):
                reply.append(token)
                sys.stdout.write(delta)
                sys.stdout.flush()
        except ValidationError as exc:  # e.g. the context is full: say so, keep chatting
            messages.pop()
            print(f"\nplugformer: {exc}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": engine.tokenizer.decode(reply)})
    return 0


def _bench(overrides: list[str]) -> int:
    from plugformer.core.commands.bench import main as bench_main
    from plugformer.core.config import compose

    return bench_main(compose(overrides))


def _quantize(overrides: list[str]) -> int:
    from plugformer.core.commands.quantize import quantize_command

    return quantize_command(overrides)


def _eval(overrides: list[str]) -> int:
    from plugformer.core.commands.eval import eval_command

    return eval_command(overrides)


def _train(overrides: list[str]) -> int:
    from plugformer.core.config import compose
    from plugformer.core.train.trainer import train

    summary = train(compose(overrides))
    line = f"trained {summary['steps']} steps: loss {summary['loss']:.4f}"
    if summary.get("eval_ppl") is not None:
        line += f", eval loss {summary['eval_loss']:.4f} (perplexity {summary['eval_ppl']:.2f})"
    print(line)
    print(f"model: {summary['model_dir']} (plugformer generate model.path={summary['model_dir']})")
    print(f"metrics: {summary['metrics']}")
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "generate": _generate,
    "chat": _chat,
    "config": _config,
    "plugins": _plugins,
    "bench": _bench,
    "quantize": _quantize,
    "eval": _eval,
    "train": _train,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    show_tb = os.environ.get("PLUGFORMER_TRACEBACK", "") not in ("", "0")
    if "--traceback" in args:
        show_tb = True
        args.remove("--traceback")
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, overrides = args[0], args[1:]
    if any(a in ("-h", "--help") for a in overrides):  # plugformer bench --help
        print(USAGE, end="")
        return 0
    if command not in COMMANDS:
        print(f"plugformer: error: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
        return 2
    try:
        return COMMANDS[command](overrides)
    except PlugformerError as exc:
        if show_tb:
            traceback.print_exc()
        print(f"plugformer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
