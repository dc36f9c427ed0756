"""Training speed and memory beside the peer: full fine-tuning (``--mode full``) or LoRA
fine-tuning (``--mode lora``) of SmolLM2-135M with plugformer and with Hugging Face
transformers (+ PEFT), same weights, data and optimizer, in the same run.

    python benchmarks/train_compare.py [--mode full|lora] [--threads 2] [--seq 512] [--batch 4]
        [--warmup 2] [--steps 6] [--precisions fp32 bf16] [--lora-r 16] [--lora-alpha 32]
        [--peer venv|main] [--out .bench]

Each configuration (engine x precision) runs in a fresh process and prints one JSON line.
``--mode full`` (the default) trains every parameter:

* **plugformer**: ``plugformer.core.train.trainer.Trainer`` on the default model (the
  SmolLM2-135M-Instruct GGUF, loaded dense in float32), ``optimizer=adamw schedule=constant``,
  ``train.precision=fp32|bf16`` (bf16: autocast, float32 weights and optimizer state), one
  optimizer step per ``--batch`` windows of ``--seq`` tokens, no gradient accumulation or
  activation checkpointing. The first plugformer process writes the batches it trains on
  (its own packing of the text and seeded order) for the others; the next ones check that
  they draw the same.
* **transformers** (``benchmarks/peers/hf_train.py``): ``AutoModelForCausalLM`` from the same
  GGUF (the same dequantized float32 values), a plain loop with ``torch.optim.AdamW`` over the
  same parameter groups (weight matrices decayed, 1-D parameters not), lr, betas, weight decay,
  gradient clipping and batches, ``torch.autocast`` for bf16. With ``--peer venv`` (the
  default) it runs in ``OUT/venv-transformers``, the virtual environment benchmarks/compare.py
  installs on first use; ``--peer main`` runs it in a subprocess of this interpreter (the main
  venv's transformers). Its JSON line names the version.

``--mode lora`` trains a LoRA adapter (rank ``--lora-r``, alpha ``--lora-alpha``, no dropout)
on q/k/v/o_proj and gate/up/down_proj of every layer, the base frozen; the same optimizer
settings, over the adapter's parameters alone (its A and B matrices: all decayed). Three
configurations per precision:

* **plugformer lora**: the plugformer worker with ``quant.dequantize=true adapter=lora``: a
  plain LoRA over the GGUF loaded dense in float32. It runs first and writes its initial
  adapter (PEFT's directory: ``adapter_model.safetensors`` and ``adapter_config.json``) before
  any step, for the two others to start from.
* **plugformer qlora**: the same without ``quant.dequantize=true``: the base keeps the GGUF's
  Q4_1 blocks packed (QLoRA, the sliced dequantizing backward). Its adapter is overwritten
  with the saved initial one (the same PEFT tensor names, checked) before any step. The dense
  base of the lora run *is* the dequantized Q4_1, so the two losses should agree up to the
  order of floating-point operations; their difference is reported.
* **transformers+peft lora** (``hf_train.py --lora-init``): the transformers model above with
  ``peft.PeftModel.from_pretrained(model, INIT, is_trainable=True)`` on plugformer's initial
  adapter, AdamW over the trainable parameters with the same grouping rule. With ``--peer
  venv``, peft is installed into ``OUT/venv-transformers`` when it is missing.

Both do ``--warmup`` untimed steps and then ``--steps`` timed ones; tokens/s is the timed
steps' tokens over their wall time. Memory is read from ``/proc/self/status``: the RSS after
loading, the high-water mark while loading, and the high-water mark of the training steps
alone (``VmHWM`` restarted after loading through ``/proc/self/clear_refs``); the process peak
is the larger of the two. The losses of the last step are compared: the same weights, batches
and optimizer give the same loss up to the order of floating-point operations (tolerances
below; in lora mode plugformer lora against transformers+peft). Writes
``OUT/train_compare.json`` and prints a table with ratios (lora mode: plugformer lora against
transformers+peft, and plugformer qlora against plugformer lora). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
CORPUS = [
    ROOT / "tests" / "data" / "train" / "stories.txt",
    ROOT / "tests" / "data" / "heldout_en.txt",
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
#: |loss difference| allowed at the last step. fp32: the two sum 30 layers in other orders
#: (fused SDPA against transformers' attention, their own cross-entropy paths): the first
#: step's losses agree to ~1e-5, and AdamW turns the gradients' rounding differences into
#: weight differences of up to ~lr per step. bf16 autocast rounds every matmul input to 8
#: mantissa bits (~4e-3 relative) at points that differ between the two implementations.
TOLERANCE = {"fp32": 2e-3, "bf16": 5e-2}
#: the layers a LoRA adapter wraps in ``--mode lora`` (every linear layer of the blocks)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# -- measuring, shared with the workers ------------------------------------------------------
def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# -- the plugformer worker (a fresh process per configuration) -----------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import plugformer
    from plugformer.core.train.trainer import Trainer

    total = args.warmup + args.steps
    overrides = [
        "model.dtype=float32",
        "optimizer=adamw",
        "schedule=constant",
        f"train.data={args.data_dir}",
        f"train.steps={total}",
        f"train.batch_size={args.batch}",
        f"train.seq_len={args.seq}",
        f"train.lr={args.lr}",
        "train.warmup_steps=0",
        f"train.betas=[{args.betas[0]},{args.betas[1]}]",
        f"train.weight_decay={args.weight_decay}",
        f"train.clip_grad={args.clip}",
        f"train.precision={args.precision}",
        "train.grad_accum=1",
        "train.eval_fraction=0",
        f"train.seed={args.seed}",
        f"train.output_dir={args.run_dir}",
        "train.progress=false",
        "train.log_every=0",
    ]
    if args.adapter != "none":
        if args.adapter == "lora":
            overrides.append("quant.dequantize=true")  # dense float32 base: plain LoRA
        overrides += [
            "adapter=lora",
            f"adapter.r={args.lora_r}",
            f"adapter.alpha={args.lora_alpha}",
            "adapter.dropout=0.0",
            f"adapter.target_modules=[{','.join(LORA_TARGETS)}]",
        ]
    t = time.perf_counter()
    trainer = Trainer(plugformer.compose(overrides))
    load_s = time.perf_counter() - t
    init = start_adapter(trainer, args.adapter, Path(args.lora_init)) if args.lora_init else {}
    steps = []
    for k in range(total):
        idx = trainer.data.next_indices(k * args.batch, args.batch)
        ids, _, valid = trainer.data.batch(idx)
        if not bool(valid.all()) or ids.shape != (args.batch, args.seq):
            raise SystemExit(f"batch {k}: expected {args.batch} full windows of {args.seq}")
        steps.append(ids.tolist())
    batches = Path(args.batches)
    if batches.exists():
        if json.loads(batches.read_text())["steps"] != steps:
            raise SystemExit(f"{batches}: this process draws other batches")
    else:
        batches.write_text(json.dumps({"steps": steps}))
    del steps
    after_load, load_peak = rss_mb("VmRSS"), rss_mb("VmHWM")
    reset_peak()
    losses, times = [], []
    for _ in range(total):
        start = time.perf_counter()
        m = trainer.step()
        times.append(time.perf_counter() - start)
        losses.append(m["loss"])
    timed = times[args.warmup :]
    train_peak = rss_mb("VmHWM")
    out = {
        "engine": "plugformer",
        **({"adapter": args.adapter, **init} if args.adapter != "none" else {}),
        "version": plugformer.__version__,
        "torch": torch.__version__,
        "precision": args.precision,
        "threads": args.threads,
        "params": sum(p.numel() for p in trainer.params),
        "load_s": round(load_s, 2),
        "tokens_per_s": round(args.batch * args.seq * len(timed) / sum(timed), 1)
        if timed
        else None,
        "step_s": [round(s, 2) for s in times],
        "losses": [round(v, 5) for v in losses],
        "last_loss": losses[-1],
        "after_load_rss_mb": round(after_load, 1),
        "load_peak_rss_mb": round(load_peak, 1),
        "train_peak_rss_mb": round(train_peak, 1),
        "peak_rss_mb": round(max(load_peak, train_peak), 1),
    }
    print(json.dumps(out))


def start_adapter(trainer, adapter: str, directory: Path) -> dict:
    """The initial adapter shared by the lora-mode runs: ``lora`` writes its own (PEFT's
    directory, before any step); ``qlora`` overwrites its adapter with the saved one, tensor by
    PEFT name. Returns what the JSON line reports of it."""
    import torch
    from safetensors.torch import load_file

    from plugformer.core.adapters import peft as adapter_files
    from plugformer.core.adapters.attach import adapters_of

    if adapter == "lora":
        adapter_files.save(trainer.module, directory)
        return {}
    attached = adapters_of(trainer.module).by_name["default"]
    mine = adapter_files._expected(trainer.module, attached, "default")  # PEFT name -> tensor
    saved = load_file(str(directory / adapter_files.WEIGHTS))
    if set(saved) != set(mine):
        extra, missing = sorted(set(saved) - set(mine)), sorted(set(mine) - set(saved))
        raise SystemExit(
            f"{directory}: other adapter tensors than this model's (not here: {extra[:3]}, "
            f"not saved: {missing[:3]})"
        )
    differ = 0.0
    with torch.no_grad():
        for key, tensor in mine.items():
            if saved[key].shape != tensor.shape:
                raise SystemExit(f"{directory}: {key} has shape {tuple(saved[key].shape)}, "
                                 f"this model's {tuple(tensor.shape)}")  # fmt: skip
            differ = max(differ, float((tensor.float() - saved[key]).abs().max()))
            tensor.copy_(saved[key])
    # 0.0: the same seed drew the same adapter already (the copy is then a no-op)
    return {"init_max_diff_before_copy": differ}


# -- the coordinator ---------------------------------------------------------------------
def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peer_python(args: argparse.Namespace) -> Path:
    if args.peer == "main":
        return Path(sys.executable)
    sys.path.insert(0, str(BENCH))
    from compare import venv_python  # the transformers venv compare.py installs

    return venv_python(args.out, "transformers")


def ensure_peft(py: Path) -> None:
    """peft in the peer's interpreter (installed with its pip on first use, like compare.py
    installs transformers)."""
    if subprocess.run([str(py), "-c", "import peft"], capture_output=True).returncode == 0:
        return
    print(f"installing peft for {py} (first use)", file=sys.stderr)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "peft"], check=True)


def label(r: dict) -> str:
    """The configuration's name: the engine, and in lora mode its adapter (``plugformer qlora``)."""
    return f"{r['engine']} {r['adapter']}" if r.get("adapter") else r["engine"]


def ratios(ours: dict, base: dict, tolerance: float | None) -> list[str]:
    """tokens/s, training-peak and process-peak RSS of ``ours`` over ``base``, the last-step
    loss difference and whether it is within ``tolerance`` (``-``: none is claimed)."""
    diff = abs(ours["last_loss"] - base["last_loss"])
    within = (
        "-" if tolerance is None else f"{'yes' if diff <= tolerance else 'NO'} (<= {tolerance:g})"
    )
    return [
        f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}x",
        f"{ours['train_peak_rss_mb'] / base['train_peak_rss_mb']:.2f}x",
        f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x",
        f"{diff:.2e}",
        within,
    ]


def table(results: list[dict], mode: str = "full") -> str:
    lines = [
        "| precision | engine | tokens/s | train peak RSS MB | process peak RSS MB "
        "| RSS after load MB | load s | last-step loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['precision']} | {label(r)} | error: {r['error']} |||||")
            continue
        version = r["version"] + (f" (peft {r['peft']})" if r.get("peft") else "")
        lines.append(
            f"| {r['precision']} | {label(r)} {version} | {r['tokens_per_s']} "
            f"| {r['train_peak_rss_mb']} | {r['peak_rss_mb']} | {r['after_load_rss_mb']} "
            f"| {r['load_s']} | {r['last_loss']:.5f} |"
        )
    if mode == "full":
        lines += [
            "",
            "| precision | tokens/s plugformer / transformers | train peak RSS ratio "
            "| process peak RSS ratio | last-step loss difference | within tolerance |",
            "|---|---|---|---|---|---|",
        ]
        pairs = [("plugformer", "transformers", True, "")]
    else:
        lines += [
            "",
            "| precision | comparison | tokens/s ratio | train peak RSS ratio "
            "| process peak RSS ratio | last-step loss difference | within tolerance |",
            "|---|---|---|---|---|---|---|",
        ]
        pairs = [
            ("plugformer lora", "transformers+peft lora", True,
             "plugformer lora / transformers+peft"),
            ("plugformer qlora", "plugformer lora", False, "plugformer qlora / plugformer lora"),
        ]  # fmt: skip
    for p in dict.fromkeys(r["precision"] for r in results):
        by = {label(r): r for r in results if r["precision"] == p and "error" not in r}
        for a, b, checked, name in pairs:
            if a not in by or b not in by:
                continue
            cells = ratios(by[a], by[b], TOLERANCE[p] if checked else None)
            lines.append("| " + " | ".join([p, *([name] if name else []), *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["full", "lora"], default="full",
                    help="full fine-tuning, or a LoRA adapter (plugformer lora and qlora "
                         "against transformers+peft)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=6, help="timed steps")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--lr", type=float, default=None, help="default 2e-5 (full), 2e-4 (lora)")
    ap.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.95])
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank (--mode lora)")
    ap.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha (--mode lora)")
    ap.add_argument("--data", type=Path, nargs="+", default=CORPUS, help="text files")
    ap.add_argument("--peer", choices=["venv", "main"], default="venv")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / ".bench")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--batches", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", choices=["none", "lora", "qlora"], default="none",
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--lora-init", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    full = args.mode == "full"
    if args.lr is None:
        args.lr = 2e-5 if full else 2e-4
    args.out.mkdir(exist_ok=True)
    env = {**os.environ, "PLUGFORMER_THREADS": str(args.threads)}
    sys.path.insert(0, str(BENCH))
    from compare import gguf_path

    gguf = gguf_path()
    hf_py = None if args.skip_peer else peer_python(args)
    if hf_py is not None and not full:
        ensure_peft(hf_py)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="plugformer-train-compare-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        for i, f in enumerate(args.data):  # one packed stream, in this order
            shutil.copyfile(f, data_dir / f"{i:02d}-{f.stem}.txt")
        batches = Path(tmp) / "batches.json"
        common = ["--threads", str(args.threads), "--warmup", str(args.warmup),
                  "--steps", str(args.steps), "--lr", str(args.lr),
                  "--weight-decay", str(args.weight_decay), "--clip", str(args.clip),
                  "--betas", *map(str, args.betas)]  # fmt: skip
        lora = ["--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha)]
        for precision in args.precisions:
            init = Path(tmp) / f"adapter-init-{precision}"  # written by plugformer lora
            for adapter in ["none"] if full else ["lora", "qlora"]:
                if adapter == "qlora" and not init.exists():
                    break
                tag = {} if adapter == "none" else {"adapter": adapter}
                print(f"running {label({'engine': 'plugformer', **tag})} {precision}",
                      file=sys.stderr)  # fmt: skip
                extra = [] if full else ["--adapter", adapter, "--lora-init", str(init), *lora]
                r = run_json(
                    [sys.executable, __file__, "--worker", "--precision", precision,
                     "--data-dir", str(data_dir), "--run-dir", str(Path(tmp) / "run"),
                     "--batches", str(batches), "--seq", str(args.seq), "--batch", str(args.batch),
                     "--seed", str(args.seed), *common, *extra],
                    env,
                )  # fmt: skip
                r = {"engine": "plugformer", **tag, "precision": precision, **r}
                print(json.dumps(r), flush=True)
                results.append(r)
            if hf_py is None or not batches.exists() or not (full or init.exists()):
                continue
            engine, tag = (
                ("transformers", {}) if full else ("transformers+peft", {"adapter": "lora"})
            )
            print(f"running {label({'engine': engine, **tag})} {precision} ({hf_py})",
                  file=sys.stderr)  # fmt: skip
            extra = [] if full else [*lora, "--lora-targets", ",".join(LORA_TARGETS),
                                     "--lora-init", str(init)]  # fmt: skip
            r = run_json(
                [str(hf_py), str(BENCH / "peers" / "hf_train.py"), "--gguf", gguf,
                 "--batches", str(batches), "--precision", precision, *common, *extra],
                env,
            )  # fmt: skip
            r = {"engine": engine, **tag, "precision": precision, "peer_python": str(hf_py), **r}
            print(json.dumps(r), flush=True)
            results.append(r)
    setup = {
        "mode": args.mode,
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)" if full else
                 "SmolLM2-135M-Instruct (GGUF Q4_1; plugformer lora and transformers+peft: "
                 "dequantized to float32; plugformer qlora: the Q4_1 blocks packed)",
        "seq": args.seq, "batch": args.batch, "warmup": args.warmup, "steps": args.steps,
        "lr": args.lr, "betas": args.betas, "weight_decay": args.weight_decay,
        "clip": args.clip, "threads": args.threads,
        **({} if full else {"lora": {"r": args.lora_r, "alpha": args.lora_alpha,
                                     "dropout": 0.0, "target_modules": LORA_TARGETS}}),
        "data": [str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f)
                 for f in args.data],
    }  # fmt: skip
    (args.out / "train_compare.json").write_text(
        json.dumps({"setup": setup, "results": results}, indent=2)
    )
    what = (
        "full fine-tuning"
        if full
        else f"LoRA fine-tuning (r {args.lora_r}, alpha {args.lora_alpha:g}, "
        f"{'/'.join(LORA_TARGETS)})"
    )
    print(
        f"SmolLM2-135M {what}, seq {args.seq} x batch {args.batch}, "
        f"{args.warmup} warm-up + {args.steps} timed steps, {args.threads} threads"
    )
    print(table(results, args.mode))


if __name__ == "__main__":
    main()
