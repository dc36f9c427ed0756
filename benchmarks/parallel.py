"""Tensor and pipeline parallel against one process, on this machine and the default model.

    python benchmarks/parallel.py [--dtype float32] [--out .bench]

Runs ``plugformer bench`` once in one process and under ``torchrun`` with
``parallel=pipeline parallel.stages=2`` and ``parallel=tensor parallel.size=3`` (SmolLM2 has
9 heads and 3 KV heads, so tensor parallel 2 is refused; ``--tp`` sets another size for other
models). The cores are shared: each of N ranks gets cores / N threads. Prints a table of
decode tokens/s (batch 1 and 8), prefill tokens/s and per-rank peak and resident memory;
writes ``parallel.json`` under ``--out``. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def bench(overrides: list[str], ranks: int, threads: int) -> dict:
    env = {**os.environ, "PLUGFORMER_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "plugformer", "bench", *overrides]
    if ranks > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(ranks),
            *cmd[1:],
        ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tp", type=int, default=3)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--out", default=".bench")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    base = [f"model.dtype={args.dtype}"]
    runs = {
        "one process": (base, 1),
        f"pipeline x{args.pp}": (
            [*base, "parallel=pipeline", f"parallel.stages={args.pp}"],
            args.pp,
        ),
        f"tensor x{args.tp}": ([*base, "parallel=tensor", f"parallel.size={args.tp}"], args.tp),
    }
    results = {}
    for label, (overrides, ranks) in runs.items():
        results[label] = r = bench(overrides, ranks, max(cores // ranks, 1))
        print(f"{label}: {json.dumps(r)}", file=sys.stderr)
    print(
        "| run | decode b1 tok/s | decode b8 tok/s | prefill 512 tok/s "
        "| peak RSS per rank MB | RSS at the end per rank MB |"
    )
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        peaks = r.get("rank_peak_rss_mb", [r["peak_rss_mb"]])
        rss = r.get("rank_rss_mb", [r["rss_mb"]])
        print(
            f"| {label} | {r['decode_tok_s']} | {r['decode_b8_tok_s']} | {r['prefill_tok_s']} | "
            f"{' / '.join(f'{p:.0f}' for p in peaks)} | {' / '.join(f'{p:.0f}' for p in rss)} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parallel.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
