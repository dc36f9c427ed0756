"""GPTQ checkpoints across tools: plugformer <-> GPTQModel (and transformers' GPTQ path).

    python benchmarks/gptq_interop.py [--out .bench] [--threads 2]

1. Builds a tiny random transformers Llama (2 layers, hidden 64) saved as safetensors. A few
   output rows of some layers are made non-negative, so that asymmetric grids meet zero
   points of 0 (the case where GPTQ v1's stored ``zero - 1`` underflows).
2. plugformer -> peers: ``plugformer quantize quant=gptq quant.bits=4 quant.group_size=32``
   for sym true/false x desc_act false/true; each directory is loaded by GPTQModel (CPU, its
   torch kernel) and by transformers' ``from_pretrained`` (which goes through optimum and
   GPTQModel), and by plugformer (``model.path=DIR``).
3. GPTQModel -> plugformer: the same float model quantized by GPTQModel (random-token
   calibration), saved, then loaded by GPTQModel and by plugformer.

Compares logits on fixed token ids (float32 on both sides: GPTQModel's float16 scales are
widened exactly) and every quantized layer's dequantized weight; prints max abs differences
and writes ``gptq_interop/results.json`` under ``--out``. The peer side runs inside its own
virtual environment (``--out``/venv-gptqmodel, installed on first use: the CPU torch first,
then GPTQModel's requirements other than torch, then gptqmodel itself without dependencies,
because its release pins a newer torch than the CPU build on disk). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PEER = Path(__file__).resolve().parent / "peers" / "gptqmodel_peer.py"
TORCH = "torch==2.13.0"
GPTQMODEL = "gptqmodel==7.7.0"
IDS = [1, 17, 42, 99, 5, 150, 3, 77, 8, 64, 12, 31, 100, 7, 140, 2]
VARIANTS = [(sym, act) for sym in (True, False) for act in (False, True)]


def venv_python(out: Path) -> Path:
    venv = out / "venv-gptqmodel"
    py = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return py
    print(f"installing gptqmodel into {venv} (first use)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)

    def pip(*args: str) -> None:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *args], check=True)

    pip(TORCH)  # first, so that nothing below pulls a CUDA build
    pip("--no-deps", GPTQMODEL)
    from_metadata = (
        "import importlib.metadata as m, re; print('\\n'.join(r for r in m.requires('gptqmodel')"
        " if 'extra ==' not in r and re.split('[ <>=;]', r)[0].lower() != 'torch'))"
    )
    reqs = subprocess.run(
        [str(py), "-c", from_metadata], check=True, capture_output=True, text=True
    )
    (venv / "requirements.txt").write_text(reqs.stdout)
    (venv / "constraints.txt").write_text(TORCH + "\n")
    pip("-c", str(venv / "constraints.txt"), "-r", str(venv / "requirements.txt"), "optimum")
    (venv / ".installed").write_text("")
    return py


def char_tokenizer() -> Any:
    """One token per printable ASCII character: calibration text for plugformer's GPTQ."""
    from tokenizers import Tokenizer, models

    chars = ["[UNK]", "\n", *map(chr, range(32, 127))]
    return Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, [], unk_token="[UNK]"))


def build_float_model(path: Path) -> None:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # non-negative rows: asymmetric zero points of 0
            for lin in (layer.mlp.up_proj, layer.self_attn.q_proj):
                lin.weight[3:40:3].abs_()
    model.save_pretrained(path, safe_serialization=True)
    char_tokenizer().save(str(path / "tokenizer.json"))


def plugformer_side(path: Path) -> dict[str, Any]:
    """plugformer's float32 logits and each quantized layer's dequantized weight, by HF name."""
    import plugformer
    from plugformer.core.quant.linear import QuantLinear

    engine = plugformer.Engine.from_overrides([f"model.path={path}", "model.dtype=float32"])
    with torch.no_grad():
        logits = engine.logits(torch.tensor([IDS]))
    weights = {}
    assert engine.checkpoint is not None and engine.family is not None
    for hf in engine.checkpoint.tensor_names():
        if hf.endswith(".qweight"):
            ours = engine.family.tensor_name(hf[: -len("qweight")] + "weight")
            module = engine.model.get_submodule(ours[: -len(".weight")])
            assert isinstance(module, QuantLinear)
            weights[hf[: -len(".qweight")]] = module.dequantize(torch.float32)
    return {"logits": logits, "weights": weights}


def peer(py: Path, *args: str, threads: int) -> dict[str, Any]:
    env = {**os.environ, "PEER_THREADS": str(threads)}
    proc = subprocess.run([str(py), str(PEER), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def compare(ours: dict[str, Any], theirs_file: Path) -> dict[str, Any]:
    theirs = torch.load(theirs_file)
    missing = sorted(set(ours["weights"]) ^ set(theirs["weights"]))
    w_diff = max(
        (ours["weights"][n] - theirs["weights"][n]).abs().max().item()
        for n in ours["weights"]
        if n in theirs["weights"]
    )
    return {
        "logits_max_abs_diff": (ours["logits"] - theirs["logits"]).abs().max().item(),
        "logits_max_abs": ours["logits"].abs().max().item(),
        "weights_max_abs_diff": w_diff,
        "layers_compared": len(ours["weights"]) - len(missing),
        "layers_unmatched": missing,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / ".bench")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    work = args.out / "gptq_interop"
    work.mkdir(parents=True, exist_ok=True)
    py = venv_python(args.out)
    build_float_model(work / "float")
    results: dict[str, Any] = {}

    def run(label: str, directory: Path, loaders: tuple[str, ...]) -> None:
        ours = plugformer_side(directory)
        for loader in loaders:
            key = f"{label} | {loader}"
            print(f"running {key}", file=sys.stderr)
            dump = directory / f"{loader}_logits.pt"
            info = peer(py, "logits", str(directory), str(dump), "--loader", loader,
                        "--ids", ",".join(map(str, IDS)), threads=args.threads)  # fmt: skip
            results[key] = info if "error" in info else {**info, **compare(ours, dump)}

    # the last: asymmetric forced to v1, which GPTQModel refuses (not written by GPTQModel)
    for sym, act, fmt in [*((s, a, None) for s, a in VARIANTS), (False, False, "gptq")]:
        label = f"plugformer-written sym={sym} desc_act={act}" + (f" {fmt}" if fmt else "")
        out_dir = work / f"pf_sym{sym}_act{act}{fmt or ''}"
        cmd = [sys.executable, "-m", "plugformer", "quantize", f"model.path={work / 'float'}",
               "quant=gptq", "quant.bits=4", "quant.group_size=32", f"quant.sym={str(sym).lower()}",
               f"quant.desc_act={str(act).lower()}", "quant.nsamples=8", "quant.seqlen=64",
               f"output_dir={out_dir}"] + ([f"checkpoint_format={fmt}"] if fmt else [])  # fmt: skip
        print(f"running {label}: quantize", file=sys.stderr)
        subprocess.run(cmd, check=True, capture_output=True)
        qc = json.loads((out_dir / "config.json").read_text())["quantization_config"]
        results[f"{label} | config"] = {"checkpoint_format": qc["checkpoint_format"]}
        run(label, out_dir, ("gptqmodel", "transformers"))
    for sym, act in VARIANTS:
        label = f"GPTQModel-written sym={sym} desc_act={act}"
        out_dir = work / f"gm_sym{sym}_act{act}"
        print(f"running {label}: quantize", file=sys.stderr)
        info = peer(py, "quantize", str(work / "float"), str(out_dir), "--sym", str(sym).lower(),
                    "--desc-act", str(act).lower(), threads=args.threads)  # fmt: skip
        results[f"{label} | config"] = info
        if "error" not in info:
            run(label, out_dir, ("gptqmodel", "transformers"))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print("| checkpoint | loaded by | kernel | max abs logit diff vs plugformer "
          "| max abs weight diff | max abs logit |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for key, r in results.items():
        if key.endswith("| config"):
            continue
        label, loader = key.split(" | ")
        if "error" in r:
            print(f"| {label} | {loader} | - | FAILED: {r['error']} | - | - |")
            continue
        print(f"| {label} | {loader} | {','.join(r['kernels'])} | {r['logits_max_abs_diff']:.3g} "
              f"| {r['weights_max_abs_diff']:.3g} | {r['logits_max_abs']:.3g} |")  # fmt: skip


if __name__ == "__main__":
    main()
