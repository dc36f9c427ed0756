"""What weight-only quantizers share: which layers they quantize, settings checks against the
model's sizes, calibration samples, and the layer-by-layer calibration driver.

Quantizers rewrite the ``nn.Linear`` layers inside the decoder's blocks (``layers.*``); the
embedding and the head stay in floating point (GPTQ's and transformers' default).

A quantizer that wants calibration data has a ``calibration`` attribute holding a
:class:`CalibrationRequest`; the engine then passes ``quantize(model, calibration)`` the token
ids of :func:`calibration_samples` (see :mod:`plugformer.core.interfaces.quant`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.quant import CAPABILITIES as QUANTIZER_CAPABILITIES
from plugformer.core.progress import Progress
from plugformer.core.quant.linear import QuantLinear, layout_problems, swap_module
from plugformer.core.quant.pack import SUPPORTED_BITS


def block_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """``(path, module)`` of every ``nn.Linear`` inside the decoder's blocks."""
    layers = getattr(model, "layers", None)
    if layers is None:
        return
    for i, block in enumerate(layers):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                yield f"layers.{i}.{name}", module


def spec_in_features(spec: Any) -> dict[str, int]:
    """Input features of the decoder's linear layers by (glob) name, from the spec."""
    qo = spec.num_heads * spec.dim_per_head
    sizes = {
        "layers.*.attn.wq/wk/wv": spec.hidden_size,
        "layers.*.attn.wo": qo,
        "layers.*.mlp (gate/up)": spec.hidden_size,
        "layers.*.mlp.down": spec.intermediate_size,
    }
    return sizes


def settings_problems(
    bits: int, group_size: int, in_features: dict[str, int], prefix: str = "quant"
) -> list[str]:
    """Refusals for ``bits``/``group_size`` against the layers' input features."""
    if bits not in SUPPORTED_BITS:
        return [f"{prefix}.bits={bits} is not supported (supported: 2, 3, 4, 8)"]
    if group_size != -1 and group_size <= 0:
        return [f"{prefix}.group_size={group_size} must be positive, or -1 for per-channel"]
    problems = []
    for layer, n in in_features.items():
        for p in layout_problems(n, 32, bits, group_size):  # out_features checked on the model
            problems.append(f"layer {layer} (in_features={n}): {p}")
    if problems and group_size != -1:
        sizes = set(in_features.values())
        ok = [g for g in (16, 32, 64, 128, 256) if all(n % g == 0 for n in sizes)]
        problems.append(
            f"{prefix}.group_size values that divide every layer: "
            + ", ".join(str(g) for g in [*ok, -1])
        )
    return problems


def check_model(model: nn.Module, bits: int, group_size: int, prefix: str = "quant") -> None:
    """Raise :class:`ConfigError` naming the first linear layer the settings cannot store."""
    for path, linear in block_linears(model):
        problems = layout_problems(linear.in_features, linear.out_features, bits, group_size)
        if problems:
            raise ConfigError(
                f"{prefix}: layer {path} ({linear.in_features} -> {linear.out_features}): "
                + "; ".join(problems)
            )


# -- calibration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationRequest:
    """What calibration a quantizer wants: ``nsamples`` windows of ``seqlen`` tokens, drawn
    with ``seed`` from the text file ``text`` (None: the built-in English text)."""

    text: str | None = None
    nsamples: int = 32
    seqlen: int = 512
    seed: int = 0


def calibration_problems(request: CalibrationRequest, prefix: str = "quant") -> list[str]:
    problems = []
    if request.nsamples <= 0:
        problems.append(f"{prefix}.nsamples={request.nsamples} must be positive")
    if request.seqlen < 2:
        problems.append(f"{prefix}.seqlen={request.seqlen} must be at least 2")
    if request.text is not None and not Path(request.text).expanduser().is_file():
        problems.append(f"{prefix}.calibration: {request.text!r} is not a file")
    return problems


def calibration_samples(
    tokenizer: Any, request: CalibrationRequest, max_seq_len: int
) -> list[torch.Tensor]:
    """``nsamples`` token-id tensors [1, seqlen] cut at seeded random offsets from the text
    (GPTQ's recipe); a text shorter than ``seqlen`` tokens gives windows of its own length."""
    if request.text is None:
        from plugformer.core.quant.calibration_text import DEFAULT_TEXT

        text = DEFAULT_TEXT
    else:
        path = Path(request.text).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"quant.calibration: cannot read {str(path)!r}: {exc}") from None
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)
    if ids.numel() < 2:
        raise ConfigError("quant.calibration: the calibration text has fewer than 2 tokens")
    seqlen = min(request.seqlen, max_seq_len, ids.numel())
    generator = torch.Generator().manual_seed(request.seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (request.nsamples,), generator=generator)
    return [ids[s : s + seqlen].unsqueeze(0) for s in starts.tolist()]


def calibration_for(quantizer: Any, tokenizer: Any, spec: Any) -> list[torch.Tensor] | None:
    """The calibration a quantizer asks for (its ``calibration`` capability), else None."""
    request = capability(quantizer, QUANTIZER_CAPABILITIES, "calibration")
    if not isinstance(request, CalibrationRequest):
        return None
    if tokenizer is None:
        raise ConfigError(
            "quant: calibration needs the model's tokenizer to encode its text, and this "
            "checkpoint has none (tokenizer.json)"
        )
    return calibration_samples(tokenizer, request, spec.max_seq_len)


# -- the layer-by-layer driver -------------------------------------------------------------
class _Stop(Exception):
    """Raised by a hook once the layers being calibrated have seen their inputs."""


Solve = Callable[[str, nn.Linear, Any], QuantLinear]


def _subsets(block: nn.Module, x: torch.Tensor, ctx: Any) -> list[list[str]]:
    """The block's linear layers in call order, grouped by shared input (q/k/v; gate/up)."""
    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, inp, name=name: calls.append((name, inp[0])))
        for name, m in block.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        block(x, ctx)
    finally:
        for h in hooks:
            h.remove()
    subsets: list[list[str]] = []
    previous: torch.Tensor | None = None
    for name, inp in calls:
        if any(name in s for s in subsets):
            continue
        if previous is not None and inp is previous:
            subsets[-1].append(name)
        else:
            subsets.append([name])
        previous = inp
    return subsets


def _inputs(block: nn.Module, linears: dict[str, nn.Linear], x: torch.Tensor, ctx: Any):
    """The inputs ``linears`` get when ``block`` runs on ``x`` (the pass stops after the last
    of them, in call order)."""
    got: dict[str, torch.Tensor] = {}
    last = list(linears)[-1]

    def hook(name: str, _m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        got[name] = inp[0]
        if name == last:
            raise _Stop

    handles = [
        m.register_forward_pre_hook(functools.partial(hook, name)) for name, m in linears.items()
    ]
    try:
        with contextlib.suppress(_Stop):
            block(x, ctx)
    finally:
        for handle in handles:
            handle.remove()
    return got


@contextlib.contextmanager
def _weights(linears: dict[str, nn.Linear], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run the block with ``weights`` (its float weights), then put the current ones back."""
    current = {name: m.weight.detach().clone() for name, m in linears.items()}
    for name, m in linears.items():
        m.weight.copy_(weights[name])
    try:
        yield
    finally:
        for name, m in linears.items():
            m.weight.copy_(current[name])


@torch.no_grad()
def quantize_sequentially(
    model: nn.Module,
    calibration: list[torch.Tensor],
    new_stats: Callable[[nn.Linear], Any],
    solve: Solve,
    label: str = "quantizing",
    batch_size: int = 8,
    float_inputs: bool = False,
) -> None:
    """Quantize the blocks' linear layers one block at a time, each layer calibrated on the
    inputs it gets once the layers before it (this block's included) are quantized.

    ``new_stats(linear)`` makes a statistics object with ``add(x)`` (x: [..., in_features]),
    or with ``float_inputs`` ``add(x, x_float)``, ``x_float`` being the input the layer gets
    in the float model at the same positions. ``solve(path, linear, stats)`` returns the
    layer's :class:`QuantLinear`. Inside a block, layers that read the same input (q/k/v,
    gate/up) are calibrated together (GPTQ's ``true_sequential``). A layer's float weight is
    replaced by its dequantized weight for the later passes, and every layer is swapped for
    its ``QuantLinear`` at the end."""
    layers: Any = model.layers
    lengths = {t.shape[-1] for t in calibration}
    chunks = [t.reshape(1, -1) for t in calibration]
    if len(lengths) == 1:  # same length: batch them
        stacked = torch.cat(chunks)
        chunks = list(stacked.split(batch_size))
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []  # the inputs of the current block, one per chunk
    contexts = []  # the decoder's forward context of each chunk (mask, rotary state)

    def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
        hidden.append(args[0])
        contexts.append(args[1])
        raise _Stop

    handle = layers[0].register_forward_pre_hook(grab)
    try:
        for ids in chunks:
            with contextlib.suppress(_Stop):
                model(ids.to(device))
    finally:
        handle.remove()
    hidden_fp = list(hidden)  # the float model's stream (used with float_inputs)
    swaps: list[tuple[str, QuantLinear]] = []
    with Progress(label, len(layers), unit="layers") as bar:
        for i, block in enumerate(layers):
            linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
            floats = {n: m.weight.detach().clone() for n, m in linears.items()}
            for subset in _subsets(block, hidden[0], contexts[0]) if linears else []:
                chosen = {n: linears[n] for n in subset}
                stats = {n: new_stats(linears[n]) for n in subset}
                for c, ctx in enumerate(contexts):
                    x = _inputs(block, chosen, hidden[c], ctx)
                    if float_inputs:
                        with _weights(linears, floats):
                            x_fp = _inputs(block, chosen, hidden_fp[c], ctx)
                        for n in subset:
                            stats[n].add(x[n], x_fp[n])
                    else:
                        for n in subset:
                            stats[n].add(x[n])
                for name in subset:
                    linear = linears[name]
                    q = solve(f"layers.{i}.{name}", linear, stats.pop(name))
                    linear.weight.copy_(q.dequantize(linear.weight.dtype).to(linear.weight.device))
                    swaps.append((f"layers.{i}.{name}", q))
            hidden = [block(h, ctx) for h, ctx in zip(hidden, contexts, strict=True)]
            if float_inputs:
                with _weights(linears, floats):
                    hidden_fp = [block(h, ctx) for h, ctx in zip(hidden_fp, contexts, strict=True)]
            bar.update(1)
    for path, q in swaps:
        swap_module(model, path, q.to(device))


def quantized_summary(model: nn.Module) -> str:
    """``"210 linear layers (4-bit, group_size=64, sym, act-order)"``."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    kinds = sorted(
        {
            f"{m.bits}-bit, group_size={m.group_size}, {'sym' if m.sym else 'asym'}"
            + (", act-order" if m.desc_act else "")
            for m in layers
        }
    )
    return f"{len(layers)} linear layers ({'; '.join(kinds) or 'none'})"
