"""Peer side of benchmarks/gptq_interop.py: GPTQModel (and transformers' GPTQ path) on CPU.

Run inside its own virtual environment (torch CPU build, gptqmodel, optimum) by
benchmarks/gptq_interop.py; every command prints one JSON line last.

    python gptqmodel_peer.py logits DIR OUT.pt --loader gptqmodel|transformers --ids 1,2,3
    python gptqmodel_peer.py quantize FLOAT_DIR OUT_DIR --sym true --desc-act false

``logits`` loads a GPTQ directory, runs the token ids and saves float32 logits plus every
quantized layer's dequantized weight [out, in] (``dequantize_weight()`` of the loaded kernel
module, computed in float32) to OUT.pt. ``quantize`` quantizes a float model directory with
GPTQModel (4-bit, group 32, random-token calibration) and saves it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# GPTQModel sizes its CPU thread pools from the core count; on a 2-core machine the loader
# pool asks for 2 workers of a parent pool of 1 and refuses to start.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch


def _quant_modules(model: torch.nn.Module) -> dict[str, Any]:
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, BaseQuantLinear)}


def _restore_float_tensors(model: torch.nn.Module, path: str) -> int:
    from safetensors import safe_open

    count = 0
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        names = set(f.keys())
        tensors = [*model.named_parameters(), *model.named_buffers()]
        with torch.no_grad():
            for name, t in tensors:
                if name in names and t.is_floating_point():
                    t.copy_(f.get_tensor(name).float())
                    count += 1
    return count


def logits(path: str, out: str, loader: str, ids: list[int]) -> dict[str, Any]:
    x = torch.tensor([ids])
    restored = 0
    if loader == "gptqmodel":
        from gptqmodel import BACKEND, GPTQModel

        # the torch kernel accepts only float16/bfloat16 at load time; its forward runs in
        # whatever dtype the module holds, so the model is widened to float32 after loading
        # (exact for the float16 scales) and the checkpoint's float tensors are put back at
        # their stored precision (a float32 embedding would otherwise be rounded to float16)
        wrapper = GPTQModel.load(
            path, device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16
        )
        model = wrapper.model
        torch.nn.Module.float(model)
        restored = _restore_float_tensors(model, path)
    elif loader == "transformers":
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, device_map="cpu", dtype=torch.float32
        )
    else:
        raise SystemExit(f"unknown loader {loader!r}")
    model.eval()
    layers = _quant_modules(model)
    weights = {}
    with torch.no_grad():
        y = model(x).logits.float()
        for name, m in layers.items():
            weights[name] = m.dequantize_weight().float().t().contiguous()
    torch.save({"logits": y, "weights": weights}, out)
    kernels = sorted({type(m).__name__ for m in layers.values()})
    return {"loader": loader, "kernels": kernels, "layers": len(layers), "dtype": str(y.dtype),
            "float_tensors_restored": restored}  # fmt: skip


def quantize(src: str, out: str, sym: bool, desc_act: bool, samples: int, seqlen: int) -> dict:
    from pathlib import Path

    from gptqmodel import GPTQModel, QuantizeConfig

    vocab = json.loads((Path(src) / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(1)
    calibration = [
        {
            "input_ids": torch.randint(0, vocab, (1, seqlen), generator=g),
            "attention_mask": torch.ones(1, seqlen, dtype=torch.long),
        }
        for _ in range(samples)
    ]
    qc = QuantizeConfig(bits=4, group_size=32, sym=sym, desc_act=desc_act)
    model = GPTQModel.load(src, qc, device="cpu", dtype=torch.float16)
    model.quantize(calibration, batch_size=1)
    model.save(out)
    qcfg = json.loads((Path(out) / "config.json").read_text())["quantization_config"]
    keys = ("checkpoint_format", "sym", "desc_act", "bits", "group_size")
    return {"saved": out, **{k: qcfg.get(k) for k in keys}}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logits")
    lg.add_argument("path")
    lg.add_argument("out")
    lg.add_argument("--loader", default="gptqmodel")
    lg.add_argument("--ids", required=True)
    qz = sub.add_parser("quantize")
    qz.add_argument("src")
    qz.add_argument("out")
    qz.add_argument("--sym", default="true")
    qz.add_argument("--desc-act", default="false")
    qz.add_argument("--samples", type=int, default=8)
    qz.add_argument("--seqlen", type=int, default=64)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("PEER_THREADS", "2")))
    if a.cmd == "logits":
        result = logits(a.path, a.out, a.loader, [int(t) for t in a.ids.split(",")])
    else:
        result = quantize(a.src, a.out, a.sym == "true", a.desc_act == "true", a.samples, a.seqlen)
    import gptqmodel
    import transformers

    result.update(gptqmodel=gptqmodel.__version__, transformers=transformers.__version__,
                  torch=torch.__version__)  # fmt: skip
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
