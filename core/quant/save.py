"""Save a quantized model as a GPTQ checkpoint directory (what ``plugformer quantize`` writes).

The directory is a Hugging Face model directory in the GPTQ layout that transformers, GPTQModel
and vLLM load, and ``model.path=DIR`` loads back to identical logits:

* ``model.safetensors``: every tensor under its Hugging Face name (the names the checkpoint it
  came from uses; for a GGUF file, the names the gguf plugin gives). A quantized linear layer
  ``<prefix>.weight`` is stored as ``<prefix>.qweight`` int32, ``<prefix>.qzeros`` int32,
  ``<prefix>.scales`` float16, ``<prefix>.g_idx`` int32 (and ``<prefix>.bias``); the other
  tensors in the model's dtype, so nothing is rounded twice;
* ``config.json``: the model's config plus ``quantization_config`` (``quant_method: gptq``,
  ``bits``, ``group_size``, ``desc_act``, ``sym``, ``checkpoint_format``, ...). The format is
  ``gptq`` (v1, ``qzeros`` hold ``zero - 1``) for symmetric grids, which every GPTQ reader
  takes, and ``gptq_v2`` (``qzeros`` hold the zero points) for asymmetric ones: GPTQModel
  refuses asymmetric v1 files unless GPTQModel wrote them (v1 cannot store a zero point of 0
  the same way in every tool), and loads v2, as do transformers (through GPTQModel) and vLLM.
  ``checkpoint_format=gptq`` forces v1 (plugformer's zero points are at least 1, so nothing is
  lost; old exllama-style kernels need it);
* ``generation_config.json``, and the tokenizer: ``tokenizer.json`` and ``tokenizer_config.json``
  (special tokens, chat template), for a model whose tokenizer is a ``tokenizers`` one (GGUF
  metadata tokenizers included).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.family import map_tensor_name
from plugformer.core.quant.linear import QuantLinear
from plugformer.core.quant.pack import pack
from plugformer.core.tokenizers.hf import HFTokenizer

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _hf_names(checkpoint: Any, family: Any, spec: Any) -> dict[str, str]:
    """Our tensor name -> the checkpoint's (Hugging Face) name."""
    names: dict[str, str] = {}
    for hf in checkpoint.tensor_names():
        ours = map_tensor_name(family, hf, spec, checkpoint.hf_config)
        if isinstance(ours, str):
            names.setdefault(ours, hf)
    return names


CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


def checkpoint_format_for(layers: list[QuantLinear], requested: str | None = None) -> str:
    """The format to write: ``requested``, else v1 for symmetric layers and v2 otherwise."""
    if requested is not None:
        if requested not in CHECKPOINT_FORMATS:
            raise ConfigError(
                f"checkpoint_format: {requested!r} is not supported (supported: gptq, gptq_v2)"
            )
        return requested
    return "gptq" if all(m.sym for m in layers) else "gptq_v2"


def stored_qzeros(m: QuantLinear, fmt: str) -> torch.Tensor:
    """``m.qzeros`` as ``fmt`` stores them (v1: ``zero - 1``, v2: ``zero``)."""
    if m.zero_format == fmt:
        return m.qzeros
    zeros = m.zero_points().to(torch.int64) - (1 if fmt == "gptq" else 0)
    if zeros.min() < 0:
        raise ConfigError(
            "quantize: a zero point of 0 has no GPTQ v1 form that every reader agrees on; "
            "write checkpoint_format=gptq_v2"
        )
    return pack(zeros, m.bits, dim=1)


def quantization_config(
    layers: list[QuantLinear], method: str, fmt: str | None = None
) -> dict[str, Any]:
    """The ``quantization_config`` of layers that share one layout (else a ConfigError),
    written in checkpoint format ``fmt`` (default: :func:`checkpoint_format_for`)."""
    layouts = {(m.bits, m.group_size, m.sym, m.desc_act, m.zero_format) for m in layers}
    if len(layouts) != 1:
        raise ConfigError(
            "quantize: the quantized layers use several layouts "
            f"({sorted(layouts)}); one GPTQ quantization_config describes only one"
        )
    bits, group_size, sym, desc_act, zero_format = layouts.pop()
    fmt = checkpoint_format_for(layers, fmt)
    if zero_format == "float":
        raise ConfigError(
            "quantize: float zero points (GGUF Q4_1) have no GPTQ representation; "
            "quantize from floating-point weights instead"
        )
    from plugformer.core.version import __version__

    return {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "checkpoint_format": fmt,
        "format": fmt,
        "pack_dtype": "int32",
        "lm_head": False,
        "static_groups": False,
        "true_sequential": True,
        "meta": {"quantizer": [f"plugformer:{__version__}"], "method": method},
    }


def save_quantized(
    engine: Any, output_dir: str | Path, checkpoint_format: str | None = None
) -> Path:
    """Write ``engine``'s quantized model to ``output_dir``; returns the directory.
    ``checkpoint_format``: ``gptq`` or ``gptq_v2`` (default: v1 when symmetric, else v2)."""
    model, checkpoint, family = engine.model, engine.checkpoint, engine.family
    if checkpoint is None or family is None:
        raise ConfigError(
            "quantize: the model has no checkpoint to take tensor names from; choose a named "
            "model or model.path=<checkpoint>"
        )
    layers = {p: m for p, m in model.named_modules() if isinstance(m, QuantLinear)}
    foreign = [
        f"{p} ({type(m).__name__})"
        for p, m in model.named_modules()
        if not isinstance(m, (nn.Linear, QuantLinear))
        and isinstance(getattr(m, "in_features", None), int)
        and isinstance(getattr(m, "out_features", None), int)
    ]  # layers standing where linear layers were, of a class this writer does not know
    if foreign:
        raise ConfigError(
            f"quantize: cannot save {len(foreign)} quantized layer(s) in the GPTQ layout: "
            f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}; their class must "
            "be QuantLinear or declare quantized_weights() (see plugformer.core.interfaces.quant)"
        )
    if not layers:
        raise ConfigError("quantize: no layer was quantized; choose quant=gptq or quant=rtn")
    quant = dataclasses.asdict(engine.config.quant)  # the composed quantizer's config
    method = quant["name"]
    fmt = checkpoint_format_for(list(layers.values()), checkpoint_format)
    qconfig = quantization_config(list(layers.values()), method, fmt)
    damp = quant.get("damp_percent")
    if damp is not None:
        qconfig["damp_percent"] = damp
    hf_of = _hf_names(checkpoint, family, engine.spec)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:  # tied (the head sharing the embedding): stored once
            continue
        seen.add(id(t))
        path, _, leaf = name.rpartition(".")
        if path in layers:
            hf = next(
                (hf_of[f"{path}.{w}"][: -len(w)] + leaf for w in ("weight", "qweight")
                 if f"{path}.{w}" in hf_of),
                None,
            )  # fmt: skip
        else:
            hf = hf_of.get(name)
        if hf is None:
            raise ConfigError(f"quantize: no checkpoint name for our tensor {name!r}")
        if path in layers and leaf == "qzeros":
            t = stored_qzeros(layers[path], fmt)
        tensors[hf] = t.detach().to("cpu").contiguous()

    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = dict(checkpoint.hf_config)
    config["quantization_config"] = qconfig
    config["torch_dtype"] = DTYPE_NAMES.get(engine.dtype, "float32")
    _write_json(out / "config.json", config)
    generation = dict(engine.generation_config)
    tok = engine.tokenizer_or_none
    if isinstance(tok, HFTokenizer) and tok.eos_token_ids:
        generation["eos_token_id"] = (
            tok.eos_token_ids[0] if len(tok.eos_token_ids) == 1 else list(tok.eos_token_ids)
        )
    if generation:
        _write_json(out / "generation_config.json", generation)
    if isinstance(tok, HFTokenizer):
        save_tokenizer(tok, out, engine.spec.max_seq_len)
    return out


def save_tokenizer(tok: HFTokenizer, out: Path, max_len: int) -> None:
    """``tokenizer.json`` and a ``tokenizer_config.json`` that :meth:`HFTokenizer.from_dir`
    (and transformers' ``PreTrainedTokenizerFast``) read back to the same tokenizer."""
    tok.backend.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "add_bos_token": tok.add_bos_token,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    _write_json(out / "tokenizer_config.json", config)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
