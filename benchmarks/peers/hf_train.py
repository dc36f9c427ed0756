"""Peer benchmark: full fine-tuning with Hugging Face transformers, or LoRA fine-tuning with
transformers + PEFT, a plain training loop.

Run by benchmarks/train_compare.py in a fresh process (inside the transformers virtual
environment, or the main one); prints one JSON line.

``AutoModelForCausalLM`` from the same GGUF (transformers dequantizes its blocks to float32
through gguf-py: the same values plugformer loads), ``torch.optim.AdamW`` over plugformer's
parameter groups (weight matrices decayed; norm weights and other 1-D parameters not), a
constant learning rate, the gradient norm clipped like plugformer's trainer, and the batches
train_compare.py wrote (plugformer's own packing and seeded order), each scored in full
(``labels=input_ids``: HF's mean over the shifted tokens is plugformer's loss).

LoRA (``--lora-init DIR``, or ``--lora-r``/``--lora-alpha``/``--lora-targets`` alone): the
model wrapped by PEFT, the base frozen. ``--lora-init`` loads the PEFT adapter directory
plugformer wrote before its first step (``peft.PeftModel.from_pretrained(model, DIR,
is_trainable=True)``: the same initial A and B), checked against the other three options when
they are given; without it, a new adapter from ``peft.get_peft_model`` (A from torch's global
RNG, no dropout). AdamW then covers the adapter's parameters alone, grouped as above.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from contextlib import nullcontext, suppress
from pathlib import Path

import torch
import transformers


def rss_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Restart the RSS high-water mark (``VmHWM``) from the current RSS (Linux >= 4.0)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def with_lora(model, args: argparse.Namespace):
    """``model`` wrapped by PEFT with the LoRA adapter the options name (trainable)."""
    import peft

    targets = args.lora_targets.split(",") if args.lora_targets else None
    if args.lora_init:
        model = peft.PeftModel.from_pretrained(model, args.lora_init, is_trainable=True)
        cfg = model.peft_config["default"]
        got = {"r": cfg.r, "lora_alpha": float(cfg.lora_alpha), "lora_dropout": cfg.lora_dropout,
               "target_modules": set(cfg.target_modules)}  # fmt: skip
        want = {"r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_dropout": 0.0,
                "target_modules": set(targets) if targets else None}  # fmt: skip
        differ = [f"{k}: {got[k]} (asked {v})" for k, v in want.items()
                  if v is not None and got[k] != v]  # fmt: skip
        if differ:
            raise SystemExit(f"--lora-init {args.lora_init}: another adapter: {'; '.join(differ)}")
        return model
    if args.lora_r is None or args.lora_alpha is None or not targets:
        raise SystemExit("a new LoRA adapter needs --lora-r, --lora-alpha and --lora-targets")
    config = peft.LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                             target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip
    return peft.get_peft_model(model, config)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--batches", required=True, help="JSON: {'steps': [[[ids]]]}")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--betas", type=float, nargs=2, required=True)
    ap.add_argument("--weight-decay", type=float, required=True)
    ap.add_argument("--clip", type=float, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora-r", type=int, help="LoRA rank")
    ap.add_argument("--lora-alpha", type=float, help="LoRA alpha")
    ap.add_argument("--lora-targets", help="comma list of module names, e.g. q_proj,v_proj")
    ap.add_argument("--lora-init", help="PEFT adapter directory to start from (trainable)")
    args = ap.parse_args()
    lora = bool(args.lora_init or args.lora_r or args.lora_alpha or args.lora_targets)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = json.loads(Path(args.batches).read_text())["steps"]
    path = Path(args.gguf)
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    if lora:
        model = with_lora(model, args)
    model.train()
    load_s = time.perf_counter() - t
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=tuple(args.betas), eps=1e-8)
    params = [p for _, p in named]
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    )
    after_load, load_peak = rss_mb("VmRSS"), rss_mb("VmHWM")
    reset_peak()  # from here VmHWM is the training's own peak
    losses, times = [], []
    for k in range(args.warmup + args.steps):
        start = time.perf_counter()
        ids = torch.tensor(batches[k], dtype=torch.long)
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        float(norm)
        times.append(time.perf_counter() - start)
    timed = times[args.warmup :]
    tokens = sum(len(b) * len(b[0]) for b in batches[args.warmup : args.warmup + args.steps])
    out = {
        "engine": "transformers+peft" if lora else "transformers",
        **({"adapter": "lora"} if lora else {}),
        "version": transformers.__version__,
        **({"peft": importlib.metadata.version("peft")} if lora else {}),
        "torch": torch.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "precision": args.precision,
        "threads": args.threads,
        "params": sum(p.numel() for p in params),
        "load_s": round(load_s, 2),
        "tokens_per_s": round(tokens / sum(timed), 1) if timed else None,
        "step_s": [round(s, 2) for s in times],
        "losses": [round(v, 5) for v in losses],
        "last_loss": losses[-1],
        "after_load_rss_mb": round(after_load, 1),
        "load_peak_rss_mb": round(load_peak, 1),
        "train_peak_rss_mb": round(rss_mb("VmHWM"), 1),
        "peak_rss_mb": round(max(load_peak, rss_mb("VmHWM")), 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
