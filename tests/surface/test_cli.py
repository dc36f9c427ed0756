"""The command line: plugins table, composed config, generate on the tiny model."""

from __future__ import annotations

import subprocess
import sys

import plugformer
from plugformer.core.cli import main


def test_plugins_table_lists_builtins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["KIND", "NAME", "SOURCE", "VERSION", "PLUGIN"]
    rows = {tuple(line.split()[:3]) for line in out[1:]}
    for kind, name in [
        ("attention", "gqa"),
        ("attention", "mha"),
        ("positional", "rope"),
        ("positional", "alibi"),
        ("positional", "none"),
        ("sampler", "greedy"),
        ("sampler", "temperature"),
        ("sampler", "top_k"),
        ("sampler", "top_p"),
        ("parallel", "single"),
        ("quant", "none"),
    ]:
        assert (kind, name, "builtin") in rows
    # the names typed the same way that are not registries: the zoo and the kernels
    from plugformer.core.config import model_names
    from plugformer.core.quant.linear import BACKENDS

    assert {n for k, n, _ in rows if k == "model"} == set(model_names())
    assert {"tiny", "smollm2-135m-instruct"} <= set(model_names())
    assert {n for k, n, _ in rows if k == "linear_kernel"} == set(BACKENDS)


def test_a_blocked_plugin_reads_as_blocked_not_unknown(capsys):
    block = "plugins.block=[plugformer.plugins.attention.mha]"
    assert main(["config", "attention=mha", block]) == 2
    err = capsys.readouterr().err
    blocked = "(blocked by plugins.block: plugformer.plugins.attention.mha)"
    assert f"unknown attention 'mha' {blocked}" in err
    assert main(["config", "attention=mhq", block]) == 2
    assert "a blocked plugin may provide it" in capsys.readouterr().err
    assert main(["config", "attention=mhq"]) == 2  # nothing blocked: the plain message
    assert "unknown attention 'mhq'; did you mean 'mha'?" in capsys.readouterr().err


def test_config_prints_the_composition(capsys):
    assert main(["config", "attention=mha", "positional=alibi", "seed=5"]) == 0
    out = capsys.readouterr().out
    assert "attention:\n  name: mha\n" in out
    assert "positional:\n  name: alibi\n  max_bias: 8.0\n" in out
    assert "\nseed: 5\n" in out


def test_generate_is_deterministic_and_matches_the_api(capsys):
    import plugformer

    assert main(["generate", "model=tiny", "prompt=hello", "max_new_tokens=6"]) == 0
    printed = capsys.readouterr().out
    engine = plugformer.Engine.from_overrides(["model=tiny", "max_new_tokens=6"])
    result = engine.generate("hello")
    assert printed == result.text + "\n"
    assert len(result.token_ids) == 6 or result.finish_reason == "stop"


def test_refusal_is_one_line_exit_1_and_traceback_on_request():
    cmd = [
        sys.executable,
        "-m",
        "plugformer",
        "generate",
        "model=tiny",
        "prompt=hi",
        "attention=mha",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "plugformer: error: attention 'mha' refused: mha needs as many KV heads as heads, got "
        "num_kv_heads=2 and num_heads=4; use attention=gqa"
    ]
    proc = subprocess.run([*cmd, "--traceback"], capture_output=True, text=True, timeout=120)
    assert "Traceback (most recent call last)" in proc.stderr


def test_unknown_command_and_help():
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2


def test_help_after_a_command_prints_its_own_help(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: plugformer bench [key=value ...]\n")
    assert "Measure load time, prefill, decode" in out


def test_bench_measures_a_model_and_its_memory():
    from plugformer.core.commands import bench

    config = plugformer.compose(["model=tiny", "quant=rtn", "quant.bits=4", "quant.group_size=32"])
    result = bench.run(config, prefill_tokens=32, new_tokens=8, batch=2)
    for key in ("load_s", "prefill_tok_s", "decode_tok_s", "decode_b2_tok_s", "sampler_greedy_ms"):
        assert result[key] > 0, key
    assert result["weights_mb"] > 0 and result["kernel_copies_mb"] >= 0
    assert result["baseline_rss_mb"] <= result["load_peak_rss_mb"] <= result["peak_rss_mb"]
    assert result["one_seq_peak_rss_mb"] <= result["peak_rss_mb"]
    one, whole = (
        result["one_seq_peak_above_baseline_over_weights"],
        result["peak_above_baseline_over_weights"],
    )
    assert 0 <= one <= whole <= result["peak_over_weights"]
