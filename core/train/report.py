"""What a training run leaves for people: ``metrics.jsonl`` (one JSON object per logged step)
and ``loss.png``, the loss curves (train, and eval when measured) drawn with matplotlib."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
PLOT = "loss.png"


class Metrics:
    """Appends metric records to ``output_dir/metrics.jsonl`` (None: keeps them in memory)."""

    def __init__(self, output_dir: Path | None) -> None:
        self.path = output_dir / METRICS if output_dir is not None else None
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")


def read(output_dir: Path) -> list[dict[str, Any]]:
    """The records of ``output_dir/metrics.jsonl`` (a resumed run appends to the same file)."""
    path = output_dir / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot(output_dir: Path) -> Path | None:
    """Draw ``loss.png`` from the metrics; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read(output_dir)
    train = {r["step"]: r["loss"] for r in records if "loss" in r}  # a resumed step: the last
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(list(train), list(train.values()), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(list(evals), list(evals.values()), "o-", label="eval loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title("plugformer train")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = output_dir / PLOT
    fig.savefig(out)
    plt.close(fig)
    return out
