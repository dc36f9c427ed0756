"""Quantization quality and cost on the default model (SmolLM2-135M-Instruct), one command:

    python benchmarks/quant_quality.py [--threads 2] [--skip-kernels]

Perplexity of ``tests/data/heldout_en.txt`` (plain English prose written for plugformer, not
in the calibration text), windows of 512 tokens with stride 256, float32 activations, for:

* the floating-point model (the GGUF's Q4_1 weights dequantized to float32: the reference);
* round-to-nearest 4-bit, group size 64, symmetric and asymmetric (``quant=rtn``);
* GPTQ 4-bit, group size 64 with the plugin's defaults (``quant=gptq``), and its time.

Then (unless ``--skip-kernels``) the time of one [1536 x 576] linear layer per kernel, 1 and 128
tokens. Not part of CI (GPTQ on SmolLM2 takes minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "tests" / "data" / "heldout_en.txt"
WINDOW, STRIDE = 512, 256

RUNS = [  # label, overrides
    ("float32 (Q4_1 dequantized)", ["quant=none"]),
    ("RTN 4-bit g64 sym", ["quant=rtn", "quant.bits=4", "quant.group_size=64", "quant.sym=true"]),
    ("RTN 4-bit g64 asym", ["quant=rtn", "quant.bits=4", "quant.group_size=64", "quant.sym=false"]),
    ("GPTQ 4-bit g64", ["quant=gptq", "quant.bits=4", "quant.group_size=64"]),
]


def quality() -> list[tuple[str, float, float | None]]:
    import plugformer
    from plugformer.core.commands.eval import perplexity
    from plugformer.plugins.quant.none import NoQuant

    text = HELDOUT.read_text(encoding="utf-8")
    rows = []
    for label, overrides in RUNS:
        # the reference runs the GGUF weights as floats, not through the Q4_1 int4 path
        NoQuant.keeps_checkpoint_quantization = "quant=none" not in overrides
        engine = plugformer.Engine.from_overrides(overrides)
        NoQuant.keeps_checkpoint_quantization = True
        seconds = getattr(engine.quantizer, "seconds", None)
        ids = engine.tokenizer.encode(text)
        ppl, _ = perplexity(engine, ids, WINDOW, STRIDE, progress=False)
        rows.append((label, ppl, seconds))
        took = f"{seconds:7.1f} s" if seconds is not None else "      -"
        print(f"{label:<30} perplexity {ppl:8.3f}   quantization {took}", flush=True)
        if label.startswith("GPTQ"):
            print(f"{'':<30} ({' '.join(overrides)}; config {engine.quantizer.config})")
    return rows


def kernels() -> None:
    import copy

    from plugformer.core.quant.grid import rtn

    torch.manual_seed(0)
    linear = torch.nn.Linear(576, 1536, bias=False)
    bf16 = copy.deepcopy(linear).to(torch.bfloat16)
    cases = [
        ("F.linear float32", linear, torch.float32),
        ("F.linear bfloat16", bf16, torch.bfloat16),
    ]
    for name, base, packed in (
        ("int4 g64", rtn(linear, 4, 64, True), "torch_int4"),
        ("int8 per-channel", rtn(linear, 8, -1, True), "torch_int8"),
    ):
        for backend, dtype in ((packed, torch.bfloat16), ("dequant", torch.float32),
                               ("reference", torch.float32)):  # fmt: skip
            m = copy.deepcopy(base)
            m.set_backend(backend)
            cases.append((f"{name} {backend} {str(dtype).removeprefix('torch.')}", m, dtype))

    def best(module: torch.nn.Module, x: torch.Tensor) -> float:
        module(x)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t)
        return min(times) * 1e6

    print(f"\none [1536 x 576] linear, {torch.get_num_threads()} threads, best of 20 (us)")
    print(f"{'kernel':<42}{'1 token':>10}{'128 tokens':>12}")
    with torch.no_grad():
        for label, module, dtype in cases:
            t1 = best(module, torch.randn(1, 576).to(dtype))
            t128 = best(module, torch.randn(128, 576).to(dtype))
            print(f"{label:<42}{t1:>10.0f}{t128:>12.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-kernels", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = quality()
    fp = rows[0][1]
    gptq = next(r for r in rows if r[0].startswith("GPTQ"))
    rtn_same = next(r for r in rows if r[0] == "RTN 4-bit g64 asym")
    print(
        f"\nGPTQ/float32 = {gptq[1] / fp:.3f} (target <= 1.10); "
        f"GPTQ/RTN asym = {gptq[1] / rtn_same[1]:.3f} (target < 1); "
        f"GPTQ took {gptq[2]:.0f} s"
    )
    if not args.skip_kernels:
        kernels()
    return 0


if __name__ == "__main__":
    sys.exit(main())
