"""A whole training run as a user has it: ``plugformer train``, its files (metrics, loss curve,
checkpoints, the final model that ``model.path=`` loads), resume that continues bit for bit,
checkpoints that survive a crash, SIGINT, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import plugformer
from plugformer.core import cli, loader
from plugformer.core.errors import ConfigError
from plugformer.core.train import checkpoint
from plugformer.core.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[1] / "data" / "train"
STORIES = DATA / "stories.txt"
TINY = ["model=tiny", f"train.data={STORIES}", "train.seq_len=32", "train.batch_size=4",
        "train.lr=3e-3", "train.progress=false", "train.eval_fraction=0.1"]  # fmt: skip


def _config(out: Path, *extra: str):
    return plugformer.compose([*TINY, f"train.output_dir={out}", *extra])


@pytest.fixture(autouse=True)
def _plugins():
    loader.reset()
    yield
    loader.reset()


def test_plugformer_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, f"train.output_dir={out}", "train.steps=6", "train.save_every=2",
            "train.eval_every=3", "positional=alibi"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "trained 6 steps: loss " in printed and "perplexity" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in records if "loss" in r)
    assert (out / "loss.png").stat().st_size > 1000  # the plot, drawn
    assert [p.name for p in checkpoint.complete(out)] == ["checkpoint-000004", "checkpoint-000006"]
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["positional"] == "alibi"  # the composition that was trained, not tiny's rope
    loaded = plugformer.Engine.from_overrides([f"model.path={final}"])
    assert type(loaded.tokenizer).__name__ == "ByteTokenizer"
    assert cli.main(["generate", f"model.path={final}", "prompt=Once", "max_new_tokens=4"]) == 0


def _losses_and_weights(trainer: Trainer, steps: int):
    losses = [trainer.step()["loss"] for _ in range(steps)]
    return losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_resume_continues_bit_for_bit(tmp_path):
    extra = ("train.steps=6", "train.neftune_alpha=5", "train.warmup_steps=2")  # RNG + schedule
    full_losses, full = _losses_and_weights(Trainer(_config(tmp_path / "a", *extra)), 6)
    first = Trainer(_config(tmp_path / "b", *extra))
    head, _ = _losses_and_weights(first, 3)
    saved = first.save_checkpoint()
    assert saved is not None and saved.name == "checkpoint-000003"
    resumed = Trainer(_config(tmp_path / "b", *extra, "train.resume=auto"))
    assert resumed.step_count == 3 and resumed.examples_seen == 12
    tail, weights = _losses_and_weights(resumed, 3)
    assert head + tail == full_losses  # bit-identical floats
    for name, value in full.items():
        assert torch.equal(weights[name], value), name


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path):
    trainer = Trainer(_config(tmp_path, "train.steps=4"))
    trainer.step()
    trainer.save_checkpoint()
    with pytest.raises(ConfigError, match=r"differing keys: .*train\.lr \(0\.003 -> 0\.001\)"):
        Trainer(_config(tmp_path, "train.steps=4", "train.lr=1e-3", "train.resume=auto"))
    # keys that do not change what is computed may differ
    Trainer(_config(tmp_path, "train.steps=4", "train.save_every=1", "train.resume=auto"))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(_config(tmp_path, "train.steps=4"))
    trainer.step()
    good = trainer.save_checkpoint()
    trainer.step()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert checkpoint.complete(tmp_path) == [good]  # the half-written one is not a checkpoint
    monkeypatch.undo()
    resumed = Trainer(_config(tmp_path, "train.steps=4", "train.resume=auto"))
    assert resumed.step_count == 1


def _spawn(out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "plugformer", "train", *TINY, f"train.output_dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # a shell's background job starts with SIGINT ignored; a terminal's Ctrl-C does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"never happened (rc {proc.returncode}): {err.decode()[-800:]}")
        time.sleep(0.05)


def test_killed_mid_run_resumes_from_the_newest_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _spawn(out, "train.steps=400", "train.save_every=1", "train.keep_last=2")
    _wait_for(lambda: len(checkpoint.complete(out)) >= 2, proc)
    time.sleep(0.3)  # most likely inside a later save
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    found = checkpoint.complete(out)
    assert found, "no complete checkpoint survived"
    newest = int(found[-1].name.split("-")[1])
    resumed = Trainer(_config(out, "train.steps=400", "train.save_every=1", "train.keep_last=2",
                              "train.resume=auto"))  # fmt: skip
    assert resumed.step_count == newest
    assert resumed.step()["loss"] > 0


def test_sigint_saves_and_exits_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _spawn(out, "train.steps=400")
    _wait_for(lambda: (out / "metrics.jsonl").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    lines = stderr.decode().strip().splitlines()
    assert proc.returncode == 130
    assert lines[-1].startswith("plugformer: error: interrupted at step ")
    assert "Traceback" not in stderr.decode()
    assert checkpoint.complete(out)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.seq_len=1000"], r"train\.seq_len: 1000 is beyond the model's context of 256"),
        (
            ["train.batch_size=6", "train.grad_accum=4"],
            r"train\.batch_size: 6 sequences do not split",
        ),
        (["train.precision=fp8"], r"train\.precision: 'fp8' is not one of fp32, bf16, fp16"),
        (["train.precision=fp16"], r"fp16 needs a CUDA device"),
        (["quant=rtn"], r"quant=rtn: full training updates float weights"),
    ],
)
def test_bad_settings_are_one_line_config_errors(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(_config(tmp_path, *extra))


def test_an_unwritable_output_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"train\.output_dir: cannot write to .*file/run"):
        Trainer(_config(blocker / "run"))


@pytest.mark.parametrize("name", ["chat.jsonl", "alpaca.json"])
def test_chat_and_instruction_data_train_on_their_answers_only(tmp_path, name):
    config = plugformer.compose(
        [  # bytes as tokens: the classic Alpaca prompt alone is ~300 tokens
            "model=tiny",
            "model.spec.max_seq_len=640",
            f"train.data={DATA / name}",
            "train.seq_len=640",
            "train.batch_size=2",
            "train.steps=2",
            "train.progress=false",
            f"train.output_dir={tmp_path}",
        ]
    )
    trainer = Trainer(config)
    example = trainer.data.train[0]
    scored = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label >= 0]
    assert 0 < len(scored) < len(example.input_ids)  # the prompt is not scored
    losses = [trainer.step()["loss"] for _ in range(2)]
    assert all(0 < x < 10 for x in losses)
