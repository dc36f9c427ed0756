"""The ``quantize`` and ``eval`` commands of the command line (see :mod:`plugformer.core.cli`).

* ``plugformer quantize quant=gptq quant.bits=4 quant.group_size=64 output_dir=DIR [overrides]``
  quantizes the configured model and writes a GPTQ checkpoint directory
  (:func:`plugformer.core.qsave.save_quantized`; ``checkpoint_format=gptq|gptq_v2`` overrides
  its choice of v1 for symmetric and v2 for asymmetric grids); ``model.path=DIR`` loads it back.
* ``plugformer eval perplexity data=<text file> [window=512] [stride=256] [overrides]`` prints
  the number of scored tokens, then ``perplexity=<value>`` as its last line.

``output_dir``, ``checkpoint_format``, ``data``, ``window`` and ``stride`` belong to the
command, not to the config; everything else is a Hydra override.
"""

from __future__ import annotations

import sys
import time

from plugformer.core.errors import ConfigError, UnknownNameError

EVAL_TASKS = ("perplexity",)


def take_options(args: list[str], keys: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments for ``keys`` from the Hydra overrides."""
    options: dict[str, str] = {}
    rest: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in keys:
            if key in options:
                raise ConfigError(f"{key}: given twice")
            options[key] = value
        else:
            rest.append(arg)
    return options, rest


def _positive_int(options: dict[str, str], key: str, default: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: expected a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {value}")
    return value


def quantize_command(args: list[str]) -> int:
    from plugformer.core.config import compose
    from plugformer.core.engine import Engine
    from plugformer.core.qsave import CHECKPOINT_FORMATS, save_quantized
    from plugformer.core.quantize import quantized_summary

    options, overrides = take_options(args, ("output_dir", "checkpoint_format"))
    if not options.get("output_dir"):
        raise ConfigError("output_dir: missing value; set it with output_dir=DIR")
    fmt = options.get("checkpoint_format")
    if fmt is not None and fmt not in CHECKPOINT_FORMATS:
        raise ConfigError(f"checkpoint_format: {fmt!r} is not supported (supported: gptq, gptq_v2)")
    config = compose(overrides)
    if config.model.path is None and config.model.source is None:
        raise ConfigError(
            f"model: {config.model.name!r} has no checkpoint to take tensor names from; choose "
            "a model with weights (the default, model.path=<checkpoint>)"
        )
    if config.fuse_projections:
        raise ConfigError(
            "fuse_projections: a fused model cannot be saved in the GPTQ layout; drop it here "
            "and use it when running the saved model"
        )
    if config.quant.name == "none":
        raise ConfigError(
            "quant: choose a quantizer, e.g. quant=gptq quant.bits=4 quant.group_size=64 "
            "(or quant=rtn)"
        )
    start = time.perf_counter()
    engine = Engine(config)
    total = time.perf_counter() - start
    seconds = getattr(engine.quantizer, "seconds", None)
    out = save_quantized(engine, options["output_dir"], fmt)
    took = f"{seconds:.1f} s" if seconds is not None else f"{total:.1f} s with loading"
    print(f"quantized {quantized_summary(engine.model)} in {took}")
    print(f"wrote {out}")
    return 0


def eval_command(args: list[str]) -> int:
    from plugformer.core.config import compose
    from plugformer.core.engine import Engine
    from plugformer.core.evaluate import perplexity, read_text

    if not args or "=" in args[0]:
        raise ConfigError("eval: name a task, e.g. plugformer eval perplexity data=<text file>")
    task, rest = args[0], args[1:]
    if task not in EVAL_TASKS:
        raise UnknownNameError("eval task", task, EVAL_TASKS)
    options, overrides = take_options(rest, ("data", "window", "stride"))
    if not options.get("data"):
        raise ConfigError("data: missing value; set it with data=<text file>")
    text = read_text(options["data"])
    engine = Engine(compose(overrides))
    window = _positive_int(options, "window", min(512, engine.spec.max_seq_len))
    stride = _positive_int(options, "stride", max(window // 2, 1))
    ppl, count = perplexity(engine, engine.tokenizer.encode(text), window, stride)
    print(f"tokens={count} window={window} stride={stride}")
    print(f"perplexity={ppl:.4f}")
    sys.stdout.flush()
    return 0
