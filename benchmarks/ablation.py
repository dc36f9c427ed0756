"""The ablation the plugin system exists for: one tiny decoder trained from scratch with one
part swapped at a time, same data, steps and seed; and continued pretraining of SmolLM2.

    python benchmarks/ablation.py                      # the ablation: docs/ablation.png
    python benchmarks/ablation.py --smollm2            # and continued pretraining of SmolLM2
    python benchmarks/ablation.py --smollm2 --skip-ablation

**Ablation.** A Llama-style decoder (``model=tiny`` made larger: by default 4 layers, hidden
128, 4 heads, 2 KV heads, SwiGLU FFN 384, RMSNorm, the byte-level tokenizer) is trained from
random weights (``model.seed``) on the repository's own text (``tests/data/train/stories.txt``,
``tests/data/heldout_en.txt``, ``README.md``, ``CHANGELOG.md``, ``docs/*.md``: one packed
stream cut into ``--seq``-byte windows, a seeded ``train.eval_fraction`` of the windows held
out) for ``--steps`` AdamW steps (cosine schedule, 10% warm-up, weight decay 0.1, gradient
clipping 1.0), once per variant: ``positional=rope`` (the baseline), ``alibi``, ``none``,
``sinusoidal`` (also with the token embeddings scaled by sqrt(hidden), the paper's recipe:
``model.spec.embedding_scale``), ``learned``, and ``attention=mha`` (as many KV heads as
heads) against ``attention=gqa`` (the baseline's grouped KV heads). ``attention=gqa`` with
RoPE is the baseline's own configuration, so its row is the ``positional=rope`` run. The eval
loss is measured before the first step, every ``--eval-every`` steps and after the last; the
curves are drawn side by side into ``docs/ablation.png`` (``--plot``) and the final eval
losses printed as a table, after one JSON line per variant. Each variant trains in its own
process with ``--threads`` torch threads (default 1: this model is too small for two threads
to pay), ``--jobs`` of them at once (default: the CPU count); about 3-4 minutes on a quiet
2-core machine with one seed (``--seeds 0 1``: twice that).

**SmolLM2** (``--smollm2``): the default model (SmolLM2-135M-Instruct, its GGUF loaded dense
in float32) trained for ``--cpt-steps`` steps of ``--cpt-batch`` x ``--cpt-seq`` tokens on the
same text (``--cpt-data``), ``--cpt-threads`` threads; the perplexity of the held-out windows
(``train.eval_fraction``, never trained on: the run is shorter than one epoch) before the
first step, every ``--cpt-eval-every`` steps and after the last.

Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    ROOT / "tests" / "data" / "train" / "stories.txt",
    ROOT / "tests" / "data" / "heldout_en.txt",
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "docs").glob("*.md")),
]

#: label -> overrides on top of the baseline (positional=rope attention=gqa); None: the
#: baseline's own run under another name
VARIANTS: dict[str, list[str] | None] = {
    "positional=rope": [],
    "positional=alibi": ["positional=alibi"],
    "positional=none": ["positional=none"],
    "positional=sinusoidal": ["positional=sinusoidal"],
    # the paper's recipe (section 3.4): embeddings times sqrt(hidden), set below
    "positional=sinusoidal, embeddings x sqrt(d)": ["positional=sinusoidal"],
    "positional=learned": ["positional=learned"],
    "attention=mha": ["attention=mha"],  # num_kv_heads = num_heads, set below
    "attention=gqa": None,  # = positional=rope
}
PANELS = {
    "positional encoding (attention=gqa)": [
        "positional=rope", "positional=alibi", "positional=none", "positional=sinusoidal",
        "positional=sinusoidal, embeddings x sqrt(d)", "positional=learned",
    ],
    "attention (positional=rope)": ["attention=gqa", "attention=mha"],
}  # fmt: skip


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def corpus_dir(files: list[Path], where: Path) -> Path:
    """A directory holding copies of ``files`` (read as one packed stream, in this order)."""
    where.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        shutil.copyfile(f, where / f"{i:02d}-{f.stem}.txt")
    return where


def base_overrides(args: argparse.Namespace, data: Path, out: Path, seed: int) -> list[str]:
    return [
        "model=tiny",
        f"model.spec.hidden_size={args.hidden}",
        f"model.spec.num_layers={args.layers}",
        f"model.spec.num_heads={args.heads}",
        f"model.spec.num_kv_heads={args.kv_heads}",
        f"model.spec.intermediate_size={args.ffn}",
        f"model.spec.max_seq_len={args.seq}",
        f"model.seed={seed}",  # the initial weights
        "attention=gqa",
        "positional=rope",
        "optimizer=adamw",
        "schedule=cosine",
        f"train.data={data}",
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch}",
        f"train.seq_len={args.seq}",
        f"train.lr={args.lr}",
        f"train.warmup_steps={max(1, args.steps // 10)}",
        "train.weight_decay=0.1",
        "train.clip_grad=1.0",
        f"train.eval_fraction={args.eval_fraction}",
        f"train.seed={seed}",  # the held-out split and the order of the windows
        f"train.output_dir={out}",
        "train.progress=false",
        "train.log_every=0",
    ]


def run_variant(overrides: list[str], steps: int, every: int) -> dict[str, Any]:
    """Train one configuration step by step; the eval loss at step 0, every ``every`` steps
    and at the end, and the train loss of each step."""
    import plugformer
    from plugformer.core.train.trainer import Trainer

    start = time.perf_counter()
    trainer = Trainer(plugformer.compose(overrides))
    params = sum(p.numel() for p in trainer.params)
    curve = [(0, trainer.evaluate()["eval_loss"])]
    losses = []
    for _ in range(steps):
        m = trainer.step()
        losses.append(m["loss"])
        if trainer.step_count % every == 0 or trainer.step_count == steps:
            curve.append((trainer.step_count, trainer.evaluate()["eval_loss"]))
    return {
        "params": params,
        "train_windows": len(trainer.data.train),
        "eval_windows": len(trainer.data.eval),
        "eval_curve": curve,
        "train_losses": losses,
        "final_eval_loss": curve[-1][1],
        "best_eval_loss": min(v for _, v in curve),
        "final_train_loss": sum(losses[-5:]) / len(losses[-5:]),  # the last 5 steps' mean
        "seconds": round(time.perf_counter() - start, 1),
    }


def ablation(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    data = corpus_dir(args.data, work / "corpus")
    size = sum(f.stat().st_size for f in args.data)
    runs = {label: extra for label, extra in VARIANTS.items() if extra is not None}
    jobs = [(label, seed) for seed in args.seeds for label in runs]

    def launch(job: tuple[str, int]) -> dict[str, Any]:
        label, seed = job
        extra = list(runs[label])
        if label == "attention=mha":
            extra.append(f"model.spec.num_kv_heads={args.heads}")
        if "sqrt(d)" in label:
            extra.append(f"model.spec.embedding_scale={math.sqrt(args.hidden)}")
        out = work / f"run-{jobs.index(job)}"
        overrides = base_overrides(args, data, out, seed) + extra
        env = {**os.environ, "PLUGFORMER_THREADS": str(args.threads)}
        cmd = [sys.executable, __file__, "--worker", "--threads", str(args.threads),
               "--steps", str(args.steps), "--eval-every", str(args.eval_every),
               "--overrides", *overrides]  # fmt: skip
        print(f"training {label}, seed {seed}: {' '.join(extra) or 'the baseline'}",
              file=sys.stderr)  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-2000:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # one process per run
        done = dict(zip(jobs, pool.map(launch, jobs), strict=True))
    failed = {job: r["error"] for job, r in done.items() if "error" in r}
    if failed:
        raise SystemExit("\n".join(f"{label}, seed {seed}: {e}" for (label, seed), e in
                                    failed.items()))  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    for label, extra in VARIANTS.items():
        source = "positional=rope" if extra is None else label
        per_seed = {seed: done[(source, seed)] for seed in args.seeds}
        for seed, r in per_seed.items():
            line = {"variant": label, "seed": seed,
                    **{k: v for k, v in r.items() if k != "train_losses"}}  # fmt: skip
            print(json.dumps(line), flush=True)
        finals = [r["final_eval_loss"] for r in per_seed.values()]
        results[label] = {
            "params": per_seed[args.seeds[0]]["params"],
            "final_eval_loss": sum(finals) / len(finals),
            "per_seed": per_seed,
            "seconds": sum(r["seconds"] for r in per_seed.values()),
            **({"same_run_as": source} if extra is None else {}),
        }
    r = results["positional=rope"]["per_seed"][args.seeds[0]]
    seeds = ", ".join(map(str, args.seeds))
    setup = (
        f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads ({args.kv_heads} KV), "
        f"FFN {args.ffn}, byte tokens; {size / 1024:.0f} KB of repo text in {args.seq}-byte "
        f"windows ({r['train_windows']} train / {r['eval_windows']} held out); "
        f"{args.steps} AdamW steps x {args.batch} windows, lr {args.lr} cosine; "
        f"seed{'s' if len(args.seeds) > 1 else ''} {seeds}"
    )
    print(table(results, setup, args.seeds))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"setup": setup, "results": results}, indent=1))
    print(f"{len(jobs)} runs, {args.jobs} at a time: {time.perf_counter() - start:.0f} s",
          file=sys.stderr)  # fmt: skip
    plot(results, setup, args.plot)
    return results


def table(results: dict[str, dict[str, Any]], setup: str, seeds: list[int]) -> str:
    """Final eval loss per seed, their mean, and each seed's difference from RoPE's."""
    several = len(seeds) > 1
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        f"Setup: {setup}",
        "",
        f"| variant | parameters | final eval loss (nats/byte): {head}"
        + (" | mean" if several else "")
        + " | bits/byte | vs rope"
        + (" (per seed)" if several else "")
        + " | seconds |",
        "|---|---|" + "---|" * (len(seeds) + (1 if several else 0)) + "---|---|---|",
    ]
    rope = results["positional=rope"]["per_seed"]
    for label, r in results.items():
        note = " (the rope run)" if r.get("same_run_as") else ""
        finals = [r["per_seed"][s]["final_eval_loss"] for s in seeds]
        diffs = [f - rope[s]["final_eval_loss"] for f, s in zip(finals, seeds, strict=True)]
        cells = [f"{v:.4f}" for v in finals] + ([f"{r['final_eval_loss']:.4f}"] if several else [])
        lines.append(
            f"| {label}{note} | {r['params']:,} | " + " | ".join(cells)
            + f" | {r['final_eval_loss'] / math.log(2):.3f} | "
            + " / ".join(f"{d:+.3f}" for d in diffs) + f" | {r['seconds']:.0f} |"
        )  # fmt: skip
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], setup: str, out: Path) -> None:
    """The mean eval-loss curve of each variant over its seeds (the band: their range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    lows = []
    for ax, (title, labels) in zip(axes, PANELS.items(), strict=True):
        for label in labels:
            curves = [r["eval_curve"] for r in results[label]["per_seed"].values()]
            steps = [s for s, _ in curves[0]]
            values = [[v for _, v in c] for c in curves]  # [seed][point]
            mean = [sum(col) / len(col) for col in zip(*values, strict=True)]
            lows.append(min(mean))
            final = results[label]["final_eval_loss"]
            (line,) = ax.plot(steps, mean, "o-", markersize=3, label=f"{label}: {final:.3f}")
            if len(curves) > 1:
                lo = [min(col) for col in zip(*values, strict=True)]
                hi = [max(col) for col in zip(*values, strict=True)]
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        several = len(next(iter(results.values()))["per_seed"]) > 1
        legend = "final eval loss" + (" (mean of the seeds; band: their range)" if several else "")
        ax.legend(title=legend, fontsize=8, title_fontsize=8, loc="upper right")
    axes[0].set_ylabel("held-out cross-entropy (nats per byte)")
    # the start (ln 258 = 5.55 for every variant) is cut; room above the curves for legends
    axes[0].set_ylim(min(lows) - 0.15, min(lows) + 2.7)
    fig.suptitle("plugformer ablation, trained from scratch: " + setup, fontsize=9, wrap=True)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}", file=sys.stderr)


def smollm2(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Continued pretraining of the default model; held-out perplexity before and after."""
    import plugformer
    from plugformer.core.train.trainer import Trainer

    data = corpus_dir(args.cpt_data, work / "cpt-corpus")
    overrides = [
        "model.dtype=float32",  # on the CPU: the GGUF's blocks load as dense float32 weights
        "optimizer=adamw",
        "schedule=cosine",
        f"train.data={data}",
        f"train.steps={args.cpt_steps}",
        f"train.batch_size={args.cpt_batch}",
        f"train.seq_len={args.cpt_seq}",
        f"train.lr={args.cpt_lr}",
        f"train.warmup_steps={max(1, args.cpt_steps // 10)}",
        "train.weight_decay=0.1",
        f"train.precision={args.cpt_precision}",
        f"train.eval_fraction={args.cpt_eval_fraction}",
        f"train.seed={args.seeds[0]}",
        f"train.output_dir={work / 'cpt-run'}",
        "train.progress=false",
        "train.log_every=0",
    ]
    print("continued pretraining of SmolLM2-135M", file=sys.stderr)
    start = time.perf_counter()
    trainer = Trainer(plugformer.compose(overrides))
    before = trainer.evaluate()
    curve = [(0, before["eval_ppl"])]
    losses = []
    for _ in range(args.cpt_steps):
        m = trainer.step()
        losses.append(round(m["loss"], 4))
        if trainer.step_count % args.cpt_eval_every == 0 and trainer.step_count < args.cpt_steps:
            curve.append((trainer.step_count, trainer.evaluate()["eval_ppl"]))
            print(f"  step {trainer.step_count}: eval ppl {curve[-1][1]:.2f}", file=sys.stderr)
    after = trainer.evaluate()
    curve.append((args.cpt_steps, after["eval_ppl"]))
    tok = trainer.data
    out = {
        "part": "smollm2 continued pretraining",
        "text": [rel(f) for f in args.cpt_data],
        "train_windows": len(tok.train),
        "eval_windows": len(tok.eval),
        "seq_len": args.cpt_seq,
        "batch": args.cpt_batch,
        "steps": args.cpt_steps,
        "lr": args.cpt_lr,
        "precision": args.cpt_precision,
        "eval_loss_before": round(before["eval_loss"], 4),
        "eval_ppl_before": round(before["eval_ppl"], 3),
        "eval_loss_after": round(after["eval_loss"], 4),
        "eval_ppl_after": round(after["eval_ppl"], 3),
        "ppl_curve": [(s, round(p, 3)) for s, p in curve],
        "train_losses": losses,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(out), flush=True)
    print(
        f"SmolLM2-135M continued pretraining, {args.cpt_steps} steps x {args.cpt_batch} x "
        f"{args.cpt_seq} tokens ({len(tok.train)} train / {len(tok.eval)} held-out windows): "
        f"held-out perplexity {before['eval_ppl']:.2f} -> {after['eval_ppl']:.2f} "
        f"(eval loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}), "
        f"{out['seconds']} s"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="variants at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    ap.add_argument("--data", type=Path, nargs="+", default=CORPUS, help="text files")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=384)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-fraction", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run each")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "ablation.png")
    ap.add_argument("--json", type=Path, default=ROOT / ".bench" / "ablation.json")
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--smollm2", action="store_true", help="continued pretraining of SmolLM2")
    ap.add_argument("--cpt-data", type=Path, nargs="+", default=CORPUS)
    ap.add_argument("--cpt-steps", type=int, default=30)
    ap.add_argument("--cpt-batch", type=int, default=4)
    ap.add_argument("--cpt-seq", type=int, default=128)
    ap.add_argument("--cpt-lr", type=float, default=5e-5)
    ap.add_argument("--cpt-precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--cpt-eval-fraction", type=float, default=0.1)
    ap.add_argument("--cpt-eval-every", type=int, default=10)
    ap.add_argument("--cpt-threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads = args.threads if args.worker else args.cpt_threads
    os.environ["PLUGFORMER_THREADS"] = str(threads)  # read when plugformer is imported
    import torch

    torch.set_num_threads(threads)
    if args.worker:  # one variant, in its own process
        print(json.dumps(run_variant(args.overrides, args.steps, args.eval_every)))
        return
    with tempfile.TemporaryDirectory(prefix="plugformer-ablation-") as tmp:
        if not args.skip_ablation:
            ablation(args, Path(tmp))
        if args.smollm2:
            smollm2(args, Path(tmp))


if __name__ == "__main__":
    main()
