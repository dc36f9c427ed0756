"""``plugformer quantize``: quantize the configured model and write a GPTQ checkpoint directory.

``plugformer quantize quant=gptq quant.bits=4 quant.group_size=64 output_dir=DIR [overrides]``
writes the layout of :func:`plugformer.core.quant.save.save_quantized`
(``checkpoint_format=gptq|gptq_v2`` overrides its choice of v1 for symmetric and v2 for
asymmetric grids); ``model.path=DIR`` loads it back.
"""

from __future__ import annotations

import time

from plugformer.core.commands.options import take_options
from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.quant import CAPABILITIES as QUANTIZER_CAPABILITIES


def quantize_command(args: list[str]) -> int:
    from plugformer.core.config import compose
    from plugformer.core.engine import Engine
    from plugformer.core.quant.calibrate import quantized_summary
    from plugformer.core.quant.save import CHECKPOINT_FORMATS, save_quantized

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
    seconds = capability(engine.quantizer, QUANTIZER_CAPABILITIES, "seconds")
    out = save_quantized(engine, options["output_dir"], fmt)
    took = f"{seconds:.1f} s" if seconds is not None else f"{total:.1f} s with loading"
    print(f"quantized {quantized_summary(engine.model)} in {took}")
    print(f"wrote {out}")
    return 0
