"""The command line: ``plugformer <command> [options] [text] [hydra overrides]``.

Errors are one line on stderr (``plugformer: error: ...``) with exit code 2 for configuration
errors and 1 otherwise; ``--traceback`` (or ``PLUGFORMER_TRACEBACK=1``) shows the traceback.
Ctrl-C exits 130 after a newline. Help, ``--version`` and argument errors are answered before
any model (or torch) work starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plugformer.core.errors import ConfigError, PlugformerError, ValidationError

USAGE = """\
usage: plugformer <command> [options] [key=value ...]
       plugformer <command> --help     (the command's options, defaults and override groups)
       plugformer --version

commands:
  generate   generate text: plugformer generate "Hello" [sampler=top_p sampler.top_p=0.9]
  chat       interactive multi-turn chat (tokens streamed): plugformer chat [--system "..."]
  config     print the composed config for the given overrides
  plugins    list registered plugins (kind, name, source, version, plugin)
  bench      measure load, prefill, decode (batch 1 and 8), sampler and peak memory (JSON)
  quantize   write a quantized model directory (GPTQ layout): plugformer quantize quant=gptq
             quant.bits=4 quant.group_size=64 output_dir=DIR; load it with model.path=DIR
  eval       plugformer eval perplexity data=<text file> [window=512 stride=256]
  train      train or fine-tune: plugformer train train.data=FILE|DIR [train.steps=100 ...]
             (adapter=lora: LoRA/QLoRA, saved as a PEFT directory)
  merge      fold an adapter into the weights: plugformer merge adapter.path=DIR output_dir=OUT

Overrides are Hydra overrides: attention=mha, positional=alibi, model.seed=3, ...
--traceback (or PLUGFORMER_TRACEBACK=1) shows the traceback of an error.
"""

#: the config groups (one per registry kind) and the model zoo, for the commands' help
_GROUPS = """\
override groups (plugformer plugins lists the names; plugformer config shows the values):
  model=NAME | model.path=DIR|FILE   a zoo model (default smollm2-135m-instruct) or a checkpoint
  attention=  positional=  sampler=  parallel=  quant=  family=  checkpoint=
  optimizer=  schedule=  (training)   adapter=lora|dora | adapter.path=DIR (a PEFT adapter)
  e.g. sampler=top_p sampler.top_p=0.9 sampler.temperature=0.8
"""

_RUN_KEYS = """\
common keys (default):
  max_new_tokens=N      new tokens at most (default: 32)
  min_new_tokens=N      new tokens before EOS may end it (default: 0)
  ignore_eos=BOOL       run to max_new_tokens (default: false)
  seed=N                sampling seed (default: 0)
  device=NAME           cpu, cuda, cuda:N, mps (default: cpu)
  use_chat_template=BOOL  wrap the prompt in the model's chat template (default: true)
  linear_kernel=NAME    kernel of quantized layers (default: auto)
  fuse_projections=BOOL join q/k/v and gate/up after loading (default: false)
  sampler=NAME          greedy, temperature, top_k, top_p, ... (default: greedy)
"""

COMMAND_HELP: dict[str, str] = {
    "generate": f"""\
usage: plugformer generate [options] [TEXT ...] [key=value ...]

Generate text from a prompt; tokens are streamed to stdout, a summary line goes to stderr.
The prompt is taken verbatim (quote it for the shell only):
  TEXT                  the prompt (several words are joined by spaces)
  -                     read the prompt from stdin
  --prompt-file FILE    read the prompt from FILE
  -p, --prompt TEXT     the prompt, also when it looks like key=value
  --ids 1,2,3           token ids as the prompt (a checkpoint without a tokenizer)
  --system TEXT         the system message of the chat template
  prompt=TEXT, system_prompt=TEXT   the same as overrides (verbatim too)
options:
  -q, --quiet           no summary line (prompt tokens, new tokens, first token, tokens/s)
  --progress            show the loading line also when stderr is not a terminal
  --traceback           show the traceback of an error

{_RUN_KEYS}
{_GROUPS}""",
    "chat": f"""\
usage: plugformer chat [options] [key=value ...]

Interactive chat: tokens streamed. Ctrl-C stops the current reply (the conversation is kept),
Ctrl-D or /exit quits. Commands: /reset, /save FILE, /load FILE, /exit. When the conversation
would overflow the context, the oldest turns are dropped (with a notice).
options:
  --system TEXT         the system message (or system_prompt=TEXT)
  -q, --quiet           no notices on stderr
  --progress            show the loading line also when stderr is not a terminal
  --traceback           show the traceback of an error

{_RUN_KEYS}
{_GROUPS}""",
    "config": f"""\
usage: plugformer config [key=value ...]

Print the composed config (YAML) for the overrides.

{_GROUPS}""",
    "plugins": """\
usage: plugformer plugins [plugins.block=[NAME,...]] [plugins.autoload=false]

List the registered plugins: kind, name, source, version, plugin.
""",
    "bench": f"""\
usage: plugformer bench [key=value ...]

Measure load time, prefill, decode (batch 1 and 8), the sampler and peak memory; prints JSON.

{_GROUPS}""",
    "quantize": f"""\
usage: plugformer quantize quant=gptq [quant.bits=4 quant.group_size=64] output_dir=DIR

Write a quantized model directory (GPTQ layout); load it with model.path=DIR.

{_GROUPS}""",
    "eval": f"""\
usage: plugformer eval perplexity data=FILE [window=512 stride=256] [key=value ...]

Perplexity of a text file.

{_GROUPS}""",
    "train": f"""\
usage: plugformer train train.data=FILE|DIR [train.steps=100 train.lr=3e-4 ...]

Train or fine-tune any composition (see the README's Training section; plugformer config
shows every train.* key and its default). With adapter=lora (or dora) only an adapter trains,
over the frozen (and possibly quantized: QLoRA) base; it is saved as a PEFT directory:
  plugformer train adapter=lora adapter.r=16 adapter.target_modules=all-linear train.data=F

{_GROUPS}""",
    "merge": f"""\
usage: plugformer merge adapter.path=DIR output_dir=OUT [key=value ...]

Fold an adapter (a PEFT directory) into its base model's weights and write the merged model;
plugformer generate model.path=OUT then runs it without the adapter.

{_GROUPS}""",
}


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
    # not registries, but names a user types the same way: the zoo and the quantized kernels
    from plugformer.core.config import model_names
    from plugformer.core.quant.linear import BACKENDS

    rows += [("model", n, "zoo", _version(), f"conf/model/{n}.yaml") for n in model_names()]
    rows += [("linear_kernel", n, "builtin", _version(), "plugformer.core.quant") for n in BACKENDS]
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
#: what a Hydra override looks like: ``key=value``, ``+key=value``, ``~key``, ``group@pkg=x``
_OVERRIDE = re.compile(r"(\+{1,2}|~)?[A-Za-z_][\w.@/-]*(=.*)?", re.DOTALL)
_KEY_VALUE = re.compile(r"(\+{1,2}|~)?[A-Za-z_][\w.@/-]*=.*", re.DOTALL)


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


@dataclasses.dataclass
class Options:
    """What a ``generate`` / ``chat`` command line says besides its Hydra overrides."""

    overrides: list[str] = dataclasses.field(default_factory=list)
    prompt: str | None = None  # text, verbatim
    ids: list[int] | None = None  # --ids
    system: str | None = None
    quiet: bool = False
    progress: bool = False


_OPTIONS = {
    "generate": ["--prompt", "-p", "--prompt-file", "--ids", "--system", "--quiet", "-q",
                 "--progress"],
    "chat": ["--system", "--quiet", "-q", "--progress"],
}  # fmt: skip
_TAKES_VALUE = {"--prompt", "-p", "--prompt-file", "--ids", "--system"}


def _read_text(path: str, what: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc}") from None
    return text[:-1] if text.endswith("\n") else text  # the file's last newline, not the text's


def _ids_of(value: str) -> list[int]:
    if not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", value):
        raise ConfigError(f"--ids: expected comma-separated token ids like 1,2,3, got {value!r}")
    return [int(t) for t in value.split(",")]


def parse_options(command: str, args: list[str]) -> Options:
    """Split a ``generate``/``chat`` command line into its options, its prompt and its Hydra
    overrides. Words that are not options nor ``key=value`` are the prompt (joined by
    spaces); everything after ``--`` is prompt text too."""
    known = _OPTIONS[command]
    opts = Options()
    words: list[str] = []
    sources: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            words.extend(args[i:])
            break
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in known:
            if name in _TAKES_VALUE:
                if eq:
                    value = inline
                elif i < len(args):
                    value, i = args[i], i + 1
                else:
                    raise ConfigError(f"{name}: missing value")
                if name in ("--prompt", "-p"):
                    words.append(value)
                elif name == "--prompt-file":
                    opts.prompt = _read_text(value, name)
                    sources.append(name)
                elif name == "--ids":
                    opts.ids = _ids_of(value)
                    sources.append(name)
                else:
                    opts.system = value
            elif name in ("--quiet", "-q"):
                opts.quiet = True
            else:
                opts.progress = True
        elif arg == "-":
            opts.prompt = _read_text("-", "stdin")
            sources.append("-")
        elif re.fullmatch(r"--?[A-Za-z][\w-]*", name):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"unknown option {name} for {command}{hint} (plugformer {command} --help)"
            )
        elif _KEY_VALUE.fullmatch(arg) or (arg.startswith("~") and _OVERRIDE.fullmatch(arg)):
            opts.overrides.append(arg)
        else:
            words.append(arg)
    if words:
        if command == "chat":
            raise ConfigError(
                f"chat reads its messages from the terminal, not the command line (got "
                f"{words[0]!r}); use --system TEXT for the system message"
            )
        opts.prompt = " ".join(words)
        sources.append("the prompt text")
    texts, rest = take_text(opts.overrides)
    if "prompt" in texts:
        sources.append("prompt=")
        opts.prompt = texts["prompt"]
    if "system_prompt" in texts:
        if opts.system is not None:
            raise ConfigError("system_prompt: given twice (--system and system_prompt=)")
        opts.system = texts["system_prompt"]
    if len(sources) > 1:
        raise ConfigError(f"prompt: given more than once ({', '.join(sources)}); give one")
    opts.overrides = rest
    return opts


def _compose_with_text(overrides: list[str]) -> Any:
    from plugformer.core.config import compose

    texts, rest = take_text(overrides)
    return dataclasses.replace(compose(rest), **texts)


def preflight(config: Any, explicit_max_new_tokens: bool) -> None:
    """Check, before the model loads, what the Python API would refuse only after: the device,
    the linear kernel for the dtype and device, the per-request options (the API's own
    rules, :func:`plugformer.core.generation.make_request`) and the sampler's knobs."""
    import torch

    from plugformer.core.generation import make_request
    from plugformer.core.loader import get_plugins
    from plugformer.core.sampling import SamplerChain

    try:
        device = torch.device(config.device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device: {config.device!r} is not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU"
            raise PlugformerError(
                f"device={config.device}: {build} (torch {torch.__version__}); use device=cpu"
            )
        if device.index is not None and device.index >= count:
            raise PlugformerError(
                f"device={config.device}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PlugformerError(f"device={config.device}: MPS is not available here; use device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device: {config.device!r} is not supported; use cpu, cuda or mps")
    kernel, dtype = config.linear_kernel, config.model.dtype
    if kernel in ("torch_int4", "torch_int8") and (device.type != "cpu" or dtype == "float32"):
        raise ConfigError(
            f"linear_kernel: {kernel} runs on the CPU in bfloat16 or float16, not "
            f"{device.type} {dtype}; add model.dtype=bfloat16 or use linear_kernel=auto"
        )
    if kernel in ("native", "native_portable") and device.type != "cpu":
        raise ConfigError(f"linear_kernel: {kernel} runs on the CPU only; use linear_kernel=auto")
    if kernel == "triton" and device.type != "cuda":
        raise ConfigError("linear_kernel: triton runs on CUDA only; use linear_kernel=auto")
    chain = SamplerChain(get_plugins(config.plugins).registry, config.sampler)
    make_request(
        chain,
        sys.maxsize,
        1,
        max_new_tokens=config.max_new_tokens,
        default_max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        ignore_eos=config.ignore_eos,
        stop=list(config.stop),
        default_seed=config.seed,
    )
    spec = config.model.spec
    known_spec = config.model.path is None and config.model.source is None
    too_long = known_spec and spec.max_seq_len and config.max_new_tokens >= spec.max_seq_len
    if explicit_max_new_tokens and too_long:
        raise ValidationError(
            f"max_new_tokens: {config.max_new_tokens} new tokens exceed the context of "
            f"{spec.max_seq_len} (with at least one prompt token)"
        )


def _given(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+").partition("=")[0] == key for o in overrides)


def _model_label(config: Any) -> str:
    return str(config.model.path) if config.model.path is not None else config.model.name


class _Loading:
    """The loading line on stderr (on a terminal, or with ``--progress``)."""

    def __init__(self, config: Any, show: bool) -> None:
        self.label, self.show, self.tty = _model_label(config), show, sys.stderr.isatty()
        self.start = time.perf_counter()

    def __enter__(self) -> _Loading:
        if self.show:
            end = "" if self.tty else "\n"
            print(f"plugformer: loading {self.label} ...", file=sys.stderr, end=end, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.show:
            return
        if exc[0] is not None:  # the error or Ctrl-C is reported on its own line
            if self.tty:
                print(file=sys.stderr, flush=True)
            return
        took = time.perf_counter() - self.start
        line = f"plugformer: loaded {self.label} in {took:.1f} s"
        print(("\r\033[K" if self.tty else "") + line, file=sys.stderr, flush=True)


def _start(command: str, args: list[str]) -> tuple[Options, Any, Any]:
    """Options, config and engine of a generate/chat command line: everything is checked
    before the model loads."""
    from plugformer.core.config import compose

    opts = parse_options(command, args)
    config = compose(opts.overrides)
    config = dataclasses.replace(config, prompt=opts.prompt, system_prompt=opts.system)
    preflight(config, _given(opts.overrides, "max_new_tokens"))
    if command == "generate" and not config.prompt and opts.ids is None:
        raise ConfigError(
            'prompt: missing; give it as plugformer generate "TEXT", --prompt-file FILE, '
            "- (stdin) or --ids 1,2,3"
        )
    if command == "chat" and config.parallel.name != "single":
        raise ConfigError(
            f"chat reads one terminal in one process; with parallel={config.parallel.name} "
            '(under torchrun) use generate "TEXT"'
        )
    from plugformer.core.engine import Engine

    with _Loading(config, opts.progress or sys.stderr.isatty()):
        engine = Engine(config)
    return opts, config, engine


def summary_line(n_prompt: int, n_new: int, ttft: float, total: float) -> str:
    """``5 prompt tokens, 32 new tokens in 0.41 s (first token 0.05 s), 86.1 tokens/s``: the
    rate is the decode rate, over the tokens after the first (the first one pays the prefill),
    as llama.cpp's and Ollama's eval rate."""
    decode = total - ttft
    rate = (n_new - 1) / decode if n_new > 1 and decode > 0 else (n_new / total if total else 0)
    return (
        f"plugformer: {n_prompt} prompt tokens, {n_new} new tokens in {total:.2f} s "
        f"(first token {ttft:.2f} s), {rate:.1f} tokens/s"
    )


def _generate(args: list[str]) -> int:
    opts, config, engine = _start("generate", args)
    main_rank = engine.parallel.rank == 0  # under torchrun every rank generates, one prints
    explicit = config.max_new_tokens if _given(opts.overrides, "max_new_tokens") else None
    try:
        prompt = opts.ids if opts.ids is not None else prompt_of(config.prompt)
        ids = engine._prompt_ids(prompt)
        start = time.perf_counter()
        first, n_new = 0.0, 0
        for delta, _ in engine.stream(ids, explicit):
            if n_new == 0:
                first = time.perf_counter() - start
            n_new += 1
            if main_rank:
                sys.stdout.write(delta)
                sys.stdout.flush()
        total = time.perf_counter() - start
    finally:
        engine.close()
    if main_rank:
        sys.stdout.write("\n")
        sys.stdout.flush()
        if not opts.quiet:
            print(summary_line(len(ids), n_new, first, total), file=sys.stderr)
    return 0


def trim_history(
    engine: Any, messages: list[dict[str, str]], room: int
) -> tuple[list[dict[str, str]], int]:
    """Drop the oldest turns (a system message is kept) until the conversation's prompt leaves
    ``room`` tokens in the context; returns the messages and how many were dropped."""
    context = engine.spec.max_seq_len
    dropped = 0
    msgs = list(messages)
    while len(engine.encode_chat(msgs)) + room > context:
        first = 1 if msgs and msgs[0]["role"] == "system" else 0
        if len(msgs) - first <= 1:  # only the newest message is left: it cannot be shortened
            break
        del msgs[first]
        dropped += 1
        while len(msgs) - first > 1 and msgs[first]["role"] != "user":
            del msgs[first]  # a conversation starts with the user
            dropped += 1
    return msgs, dropped


def _chat(args: list[str]) -> int:
    opts, config, engine = _start("chat", args)
    system = config.system_prompt
    messages: list[dict[str, str]] = (
        [] if system is None else [{"role": "system", "content": system}]
    )
    interactive = sys.stdin.isatty()
    room = min(config.max_new_tokens, max(engine.spec.max_seq_len // 4, 1))

    def note(text: str) -> None:
        if not opts.quiet or text.startswith("plugformer: error"):
            print(text, file=sys.stderr, flush=True)

    if interactive:
        note(
            "plugformer chat: Ctrl-C stops a reply; /reset, /save FILE, /load FILE; "
            "/exit or Ctrl-D quits"
        )
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)  # the shell prompt on its own line
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            note("plugformer chat: /exit or Ctrl-D quits")
            continue
        cmd, _, arg = line.strip().partition(" ")
        if cmd in ("/exit", "/quit", "/bye"):
            break
        if cmd == "/reset":
            messages = messages[:1] if system is not None else []
            continue
        if cmd in ("/save", "/load"):
            if not arg.strip():
                note(f"plugformer: error: {cmd} FILE: missing file name")
                continue
            try:
                if cmd == "/save":
                    Path(arg.strip()).write_text(
                        json.dumps(messages, indent=1, ensure_ascii=False) + "\n"
                    )
                    note(f"plugformer chat: saved {len(messages)} messages to {arg.strip()}")
                else:
                    loaded = json.loads(Path(arg.strip()).read_text())
                    if not isinstance(loaded, list) or not all(
                        isinstance(m, dict)
                        and isinstance(m.get("role"), str)
                        and isinstance(m.get("content"), str)
                        for m in loaded
                    ):
                        raise ValueError("expected a JSON list of {role, content} messages")
                    messages = [{"role": m["role"], "content": m["content"]} for m in loaded]
                    note(f"plugformer chat: loaded {len(messages)} messages from {arg.strip()}")
            except (OSError, ValueError) as exc:
                note(f"plugformer: error: {cmd} {arg.strip()}: {exc}")
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        messages, dropped = trim_history(engine, messages, room)
        if dropped:
            note(f"plugformer chat: the context is full; dropped the {dropped} oldest message(s)")
        reply: list[int] = []
        try:
            for delta, token in engine.stream_chat(messages):
                reply.append(token)
                sys.stdout.write(delta)
                sys.stdout.flush()
        except ValidationError as exc:  # e.g. the context is full: say so, keep chatting
            messages.pop()
            print(f"\nplugformer: error: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # stop this reply, keep what was said
            sys.stdout.write("\n")
            sys.stdout.flush()
            note("plugformer chat: reply stopped")
            messages.append({"role": "assistant", "content": _reply_text(engine, reply)})
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": _reply_text(engine, reply)})
    return 0


def _reply_text(engine: Any, reply: list[int]) -> str:
    eos = engine._eos
    ids = reply[:-1] if reply and reply[-1] in eos else reply
    return str(engine.tokenizer.decode(ids))


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


def _merge(overrides: list[str]) -> int:
    from plugformer.core.commands.merge import merge_command

    return merge_command(overrides)


def _train(overrides: list[str]) -> int:
    from plugformer.core.config import compose
    from plugformer.core.train.trainer import train

    config = compose(overrides)
    summary = train(config)
    line = f"trained {summary['steps']} steps: loss {summary['loss']:.4f}"
    if summary.get("eval_ppl") is not None:
        line += f", eval loss {summary['eval_loss']:.4f} (perplexity {summary['eval_ppl']:.2f})"
    print(line)
    if summary.get("adapter_dir"):
        base = config.model.path if config.model.path is not None else config.model.name
        where = f"model.path={base}" if config.model.path is not None else f"model={base}"
        out = summary["adapter_dir"]
        print(f"adapter: {out} (plugformer generate {where} adapter.path={out})")
    else:
        out = summary["model_dir"]
        print(f"model: {out} (plugformer generate model.path={out})")
    print(f"metrics: {summary['metrics']}")
    return 0


def _config(overrides: list[str]) -> int:
    from plugformer.core.commands.bench import model_label
    from plugformer.core.config import compose_dictconfig, to_config, to_yaml

    texts, overrides = take_text(overrides)
    cfg = compose_dictconfig(overrides)
    for key, value in texts.items():
        cfg[key] = value
    header = ""
    if cfg.model.path is not None or cfg.model.source is not None:
        try:
            spec, where = _checkpoint_spec(to_config(cfg))
        except PlugformerError as exc:  # config still shows what was asked for
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            header = f"# model.spec: not read ({first})\n"
        else:
            if spec is not None:
                cfg.model.spec = spec
                header = f"# model.spec: read from {where}\n"
    if cfg.model.path is not None:
        # the checkpoint at model.path is what loads: name it, and drop the zoo entry's
        # download source, which composition keeps from the default model but nothing reads
        cfg.model.name = model_label(cfg.model)
        cfg.model.source = None
    print(header + to_yaml(cfg), end="")
    return 0


def _checkpoint_spec(config: Any) -> tuple[Any, str]:
    """The spec of the model a config loads, read from its checkpoint's metadata (fetching the
    zoo model first, as ``generate`` would), and where it came from; (None, "") for a
    checkpoint whose family gives no spec."""
    from plugformer.core.builder import open_model
    from plugformer.core.loader import get_plugins

    opened = open_model(config, get_plugins(config.plugins).registry)
    if opened.checkpoint is None or opened.family is None:
        return None, ""
    spec = opened.family.spec_from_hf(opened.checkpoint.hf_config)
    if spec is None:
        return None, ""
    model = config.model
    where = model.path if model.path is not None else f"{model.source.member} ({model.name})"
    return spec.upgraded(), where


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "generate": _generate,
    "chat": _chat,
    "config": _config,
    "plugins": _plugins,
    "bench": _bench,
    "quantize": _quantize,
    "eval": _eval,
    "train": _train,
    "merge": _merge,
}

_QUOTE_HINT = (
    " (a value with spaces or punctuation needs Hydra quotes inside the shell's: "
    '\'key="a, b!"\'; a prompt needs none: plugformer generate "any text")'
)


def _error(exc: BaseException, show_tb: bool) -> int:
    if show_tb:
        traceback.print_exc()
    if isinstance(exc, PlugformerError):
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if msg.startswith("bad override:"):
            msg += _QUOTE_HINT
        print(f"plugformer: error: {msg}", file=sys.stderr)
        return exc.exit_code
    first = (str(exc).strip().splitlines() or [""])[0]
    print(
        f"plugformer: error: {type(exc).__name__}: {first} (unexpected: rerun with "
        "--traceback and report it)",
        file=sys.stderr,
    )
    return 1


@contextlib.contextmanager
def _exit_at_once_on_ctrl_c() -> Any:
    """While torch, Hydra and the plugins import, Ctrl-C exits 130 at once.

    Some third-party modules wrap their imports in ``try``/``except``: a KeyboardInterrupt raised
    there is swallowed, or resurfaces later as a half-imported module ("cannot load module more
    than once"). Nothing has been written yet, so leaving at once loses nothing."""

    def leave(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(2, b"\n")  # the shell prompt on its own line
        os._exit(130)

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # not the main thread's default handler (ignored, or the caller's own): keep it
        return
    signal.signal(signal.SIGINT, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _import_heavy() -> None:
    """The third-party imports every command pays, under :func:`_exit_at_once_on_ctrl_c` (the
    plugins load later, with the command's ``plugins.block``/``plugins.allow``)."""
    with _exit_at_once_on_ctrl_c():
        import hydra  # noqa: F401
        import numpy  # noqa: F401
        import torch  # noqa: F401


def _run(args: list[str], show_tb: bool) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        if len(args) > 1 and args[0] == "help" and args[1] in COMMAND_HELP:
            print(COMMAND_HELP[args[1]], end="")
            return 0
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] in ("--version", "-V", "version"):
        print(f"plugformer {_version()}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(
            f"plugformer: error: unknown command {command!r}{hint} "
            f"(commands: {', '.join(COMMANDS)}; plugformer --help)",
            file=sys.stderr,
        )
        return 2
    if any(a in ("-h", "--help") for a in rest):  # plugformer generate --help
        print(COMMAND_HELP[command], end="")
        return 0
    try:
        if command not in _OPTIONS:
            rest = [a for a in rest if a not in ("--quiet", "-q")]
        _import_heavy()
        return COMMANDS[command](rest)
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # one line, never a traceback (unless asked)
        return _error(exc, show_tb)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    show_tb = os.environ.get("PLUGFORMER_TRACEBACK", "") not in ("", "0")
    if "--traceback" in args:
        show_tb = True
        args.remove("--traceback")
    try:
        return _run(args, show_tb)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        print(file=sys.stderr)  # the shell prompt on its own line
        return 130
    except BrokenPipeError:  # plugformer generate ... | head
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return 0
