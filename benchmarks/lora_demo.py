"""A LoRA and a QLoRA on the default model, a persona from a small chat file, before and after.

    python benchmarks/lora_demo.py [--steps 40] [--threads 2] [--out .bench/lora_demo]

The data is ``examples/data/pirate_chat.jsonl`` (42 questions answered by "Cap'n Byte", a
pirate; written for this demo). Two runs, each in a fresh process so its memory high-water
mark is its own:

* **lora**: ``quant.dequantize=true adapter=lora`` — the default SmolLM2-135M-Instruct Q4_1
  file loaded dense in float32, a rank-16 LoRA on every linear layer but the head;
* **qlora**: ``adapter=lora`` — the same, over the Q4_1 blocks kept packed.

Both train the same steps on the same batches (``train.seed``), lr 1e-3 constant after 4
warm-up steps, 8 conversations a step, with 4 held out for the eval loss. Then the base model
and each adapter answer questions that are not in the file (greedy, 48 tokens). Writes
``OUT/lora_demo.json`` and ``docs/lora_demo.png`` (the two loss curves) and prints the
answers and a table: seconds, tokens/s, training peak RSS, final train and eval loss.
Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "pirate_chat.jsonl"
QUESTIONS = [
    "What is the capital of Italy?",
    "How do I bake bread?",
    "Who are you?",
    "Why do cats purr?",
]
MODES = {"lora": ["quant.dequantize=true"], "qlora": []}


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def overrides(mode: str, args: argparse.Namespace) -> list[str]:
    return [
        *MODES[mode],
        "adapter=lora", "adapter.r=16", "adapter.alpha=32",
        "adapter.target_modules=all-linear", f"train.data={DATA}", f"train.steps={args.steps}",
        "train.batch_size=8", "train.seq_len=128", "train.lr=1e-3",
        f"train.warmup_steps={min(4, args.steps - 1)}", "schedule=constant",
        "train.eval_fraction=0.1", f"train.eval_every={max(1, args.steps // 4)}",
        f"train.output_dir={args.out / mode}", "train.progress=false", "train.seed=0",
    ]  # fmt: skip


def child(mode: str, args: argparse.Namespace) -> None:
    """One training run; prints its JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    import plugformer

    start = time.perf_counter()
    summary = plugformer.train(plugformer.compose(overrides(mode, args)))
    seconds = time.perf_counter() - start
    metrics = [json.loads(x) for x in Path(summary["metrics"]).read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    print(json.dumps({
        "mode": mode, "seconds": round(seconds, 1), "adapter": summary["adapter_dir"],
        "peak_rss_mb": round(rss_mb("VmHWM")), "loss": summary["loss"],
        "eval_loss": summary["eval_loss"], "tokens_per_s": round(sum(rates) / len(rates), 1),
        "losses": summary["losses"],
    }))  # fmt: skip


def answers(adapter: str | None) -> list[str]:
    import plugformer

    extra = [f"adapter.path={adapter}"] if adapter else []
    engine = plugformer.Engine.from_overrides(["max_new_tokens=48", *extra])
    return [engine.chat([{"role": "user", "content": q}]).text.strip() for q in QUESTIONS]


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for run in runs:
        ax.plot(range(1, len(run["losses"]) + 1), run["losses"], label=run["mode"])
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (assistant tokens)")
    ax.set_title("LoRA and QLoRA on SmolLM2-135M Q4_1: a pirate persona")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "lora_demo")
    parser.add_argument("--child", choices=list(MODES))
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
               "--threads", str(args.threads), "--out", str(args.out)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    before = answers(None)
    after = {run["mode"]: answers(run["adapter"]) for run in runs}
    for i, q in enumerate(QUESTIONS):
        print(f"\nQ: {q}\n  base : {before[i]}")
        for mode, said in after.items():
            print(f"  {mode:5}: {said[i]}")
    print("\n| run | seconds | tokens/s | training peak RSS MB | train loss | eval loss |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['mode']} | {r['seconds']} | {r['tokens_per_s']} | {r['peak_rss_mb']:,} | "
              f"{r['loss']:.3f} | {r['eval_loss']:.3f} |")  # fmt: skip
    lora, qlora = runs
    print(f"| qlora / lora | {qlora['seconds'] / lora['seconds']:.2f}x | "
          f"{qlora['tokens_per_s'] / lora['tokens_per_s']:.2f}x | "
          f"{qlora['peak_rss_mb'] / lora['peak_rss_mb']:.2f}x | | |")  # fmt: skip
    plot(runs, ROOT / "docs" / "lora_demo.png")
    result = {"runs": runs, "questions": QUESTIONS, "base": before, "after": after}
    (args.out / "lora_demo.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
