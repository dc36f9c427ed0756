"""``plugformer merge adapter.path=DIR output_dir=OUT [model overrides]``: fold an adapter into
its base model's weights and write the merged model (plugformer's layout, with the tokenizer),
which ``plugformer generate model.path=OUT`` runs without the adapter. A quantized base is
dequantized first: the merged weights are dense, in ``model.dtype``."""

from __future__ import annotations

from plugformer.core.commands.options import take_options
from plugformer.core.errors import ConfigError


def merge_command(args: list[str]) -> int:
    from plugformer.core.adapters.attach import merge
    from plugformer.core.config import compose
    from plugformer.core.engine import Engine
    from plugformer.core.model.save import save_decoder
    from plugformer.core.train.save import spec_as_built

    options, overrides = take_options(args, ("output_dir",))
    if not options.get("output_dir"):
        raise ConfigError("output_dir: missing value; set it with output_dir=DIR")
    config = compose(overrides)
    if config.adapter.path is None:
        raise ConfigError("adapter.path: missing value; the adapter directory to merge")
    engine = Engine(config)
    layers = merge(engine.model, dtype=engine.dtype)
    out = save_decoder(
        engine.model, options["output_dir"], spec_as_built(engine), engine.tokenizer_or_none
    )
    print(f"merged {layers} adapted layers of {config.adapter.path}")
    print(f"wrote {out} (plugformer generate model.path={out})")
    return 0
