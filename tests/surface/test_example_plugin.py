"""The example third-party plugin package (examples/plugformer-example-plugin), installed for real.

A session fixture pip-installs the package into a temporary directory (never into the shared
virtual environment); the tests of this module put that directory on ``sys.path`` (in process)
and ``PYTHONPATH`` (CLI subprocesses), so plugformer finds the plugin through its entry point
exactly as it would after ``pip install``.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plugformer
from plugformer.core import cli, loader
from plugformer.core.interfaces.attention import AttentionDims
from plugformer.core.interfaces.sampler import SamplingContext
from plugformer.core.registry import Source
from plugformer.core.sampling import SamplerChain, with_overrides

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugformer-example-plugin"
DIST, VERSION, PLUGIN = "plugformer-example-plugin", "0.1.0", "example"
ENV_VARS = (loader.ENV_BLOCK, loader.ENV_DISABLE_AUTOLOAD, "PLUGFORMER_TRACEBACK")
TINY = "model=tiny"  # the debug-size random model: no download, milliseconds per forward


@pytest.fixture(scope="session")
def example_site(pip_install_target) -> Path:
    """The example package installed with pip into a temporary target directory."""
    return pip_install_target(EXAMPLE, "plugformer_example_plugin/softcap.py")


def _forget_example_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "plugformer_example_plugin"]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def installed(example_site, monkeypatch) -> Path:
    """The installed example on sys.path, a clean plugin environment, fresh plugin managers."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(example_site))
    importlib.invalidate_caches()
    loader.reset()
    yield example_site
    loader.reset()
    _forget_example_modules()


def run_cli(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m plugformer ARGS`` in a subprocess that sees the installed example."""
    environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), environ.get("PYTHONPATH")]))
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "plugformer", *args], capture_output=True, text=True, env=environ
    )


def assert_unknown_name(err: str, kind: str, name: str, must_list: set[str]) -> None:
    """``err`` is the CLI's one-line error for an unknown ``name`` of ``kind``, listing the
    valid names (``must_list`` among them, ``name`` not)."""
    assert err.startswith(f"plugformer: error: unknown {kind} {name!r}")
    assert err.endswith("\n") and err.count("\n") == 1
    listed = set(err.split("Valid names: ", 1)[1].strip().split(", "))
    assert must_list <= listed and name not in listed


def plugin_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """``plugformer plugins`` output as {(kind, name): [source, version, plugin]}."""
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["KIND", "NAME", "SOURCE", "VERSION", "PLUGIN"]
    rows = [line.split() for line in lines[1:]]
    return {(r[0], r[1]): r[2:] for r in rows}


# -- the installed package, through the CLI -----------------------------------------------------


def test_plugins_command_lists_the_example_with_its_distribution(installed):
    done = run_cli(installed, "plugins")
    assert done.returncode == 0, done.stderr
    rows = plugin_rows(done.stdout)
    assert rows[("attention", "softcap")] == [DIST, VERSION, PLUGIN]
    assert rows[("sampler", "eta")] == [DIST, VERSION, PLUGIN]
    assert rows[("attention", "gqa")][0] == "builtin"  # built-ins are still there


def test_cli_generates_with_softcap_and_eta(installed):
    done = run_cli(
        installed,
        "generate",
        TINY,
        "prompt=hi",
        "attention=softcap",
        "attention.cap=30",
        "sampler=eta",
        "sampler.eta_cutoff=0.001",
        "max_new_tokens=5",
        "--quiet",  # no summary line: stderr must stay empty (no warning, no traceback)
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_cli_blocked_by_distribution_name_in_the_environment(installed):
    env = {loader.ENV_BLOCK: DIST}
    listed = run_cli(installed, "plugins", **env)
    assert listed.returncode == 0, listed.stderr
    rows = plugin_rows(listed.stdout)
    assert ("attention", "softcap") not in rows and ("sampler", "eta") not in rows
    assert DIST not in listed.stdout
    done = run_cli(installed, "generate", TINY, "prompt=hi", "attention=softcap", **env)
    assert done.returncode == 2
    assert_unknown_name(done.stderr, "attention", "softcap", {"gqa", "mha"})


# -- blocking, in process (the same CLI entry, without the start-up cost) -------------------------

BLOCKS = {
    "override": ({}, ["plugins.block=[example]"]),
    "override-distribution": ({}, [f"plugins.block=[{DIST}]"]),
    "override-autoload-off": ({}, ["plugins.autoload=false"]),
    "env-plugin-name": ({loader.ENV_BLOCK: "example"}, []),
    "env-list": ({loader.ENV_BLOCK: f"someone-else, {PLUGIN}"}, []),
    "env-autoload-off": ({loader.ENV_DISABLE_AUTOLOAD: "1"}, []),
}


@pytest.mark.parametrize("env, overrides", BLOCKS.values(), ids=BLOCKS.keys())
def test_blocking_removes_the_example(env, overrides, monkeypatch, capsys):
    assert cli.main(["plugins"]) == 0  # present before blocking
    assert ("attention", "softcap") in plugin_rows(capsys.readouterr().out)
    for var, value in env.items():
        monkeypatch.setenv(var, value)

    assert cli.main(["plugins", *overrides]) == 0
    out = capsys.readouterr().out
    rows = plugin_rows(out)
    assert ("attention", "softcap") not in rows and ("sampler", "eta") not in rows
    assert ("attention", "gqa") in rows and DIST not in out

    code = cli.main(["generate", TINY, "prompt=hi", "attention=softcap", *overrides])
    assert code == 2
    assert_unknown_name(capsys.readouterr().err, "attention", "softcap", {"gqa", "mha"})
    code = cli.main(["config", "sampler=eta", *overrides])
    assert code == 2
    samplers = {"greedy", "temperature", "top_k", "top_p"}
    assert_unknown_name(capsys.readouterr().err, "sampler", "eta", samplers)


def test_compose_with_block_rejects_the_example():
    assert plugformer.compose(["attention=softcap"]).attention.name == "softcap"
    with pytest.raises(plugformer.UnknownNameError, match="unknown attention 'softcap'") as info:
        plugformer.compose(["plugins.block=[example]", "attention=softcap"])
    assert {"gqa", "mha"} <= set(info.value.valid) and "softcap" not in info.value.valid
    assert str(info.value).endswith(f"Valid names: {', '.join(info.value.valid)}")
    config = plugformer.compose(["plugins.block=[example]"])
    assert config.plugins.block == ["example"]
    assert not hasattr(config.sampler, "eta_cutoff")  # the knob left with its plugin


# -- the Python API -------------------------------------------------------------------------------


def test_registry_entries_record_the_distribution():
    registry = loader.get_plugins().registry
    expected = Source("distribution", PLUGIN, DIST, VERSION)
    assert registry.get("attention", "softcap").source == expected
    assert registry.get("sampler", "eta").source == expected
    assert str(expected) == f"{DIST} {VERSION}"
    module = importlib.import_module("plugformer_example_plugin")
    assert module.__version__ == VERSION
    assert (PLUGIN, expected) in loader.get_plugins().loaded


def test_compose_uses_the_plugin_configs_without_yaml():
    from plugformer_example_plugin.softcap import SoftcapConfig

    config = plugformer.compose(["attention=softcap", "attention.cap=30", "sampler=eta"])
    assert isinstance(config.attention, SoftcapConfig)
    assert config.attention.cap == 30.0
    assert config.sampler.name == "eta"
    assert config.sampler.eta_cutoff == 3e-4  # eta's default when selected
    assert config.sampler.temperature == 1.0 and config.sampler.top_p == 1.0  # others neutral
    assert plugformer.compose(["sampler=top_p"]).sampler.eta_cutoff == 0.0  # eta off elsewhere
    with pytest.raises(plugformer.ConfigError, match=r"attention\.cap"):
        plugformer.compose(["attention=softcap", "attention.cap=wide"])


def test_engine_with_softcap_and_eta():
    engine = plugformer.Engine.from_overrides(
        [TINY, "attention=softcap", "attention.cap=30", "sampler=eta", "sampler.eta_cutoff=0.001"]
    )
    assert engine.config.attention.cap == 30.0
    ids = torch.tensor([[1, 72, 105, 33, 10]])
    logits = engine.logits(ids)
    assert logits.shape == (1, 5, engine.spec.vocab_size)
    assert torch.isfinite(logits).all()

    params = with_overrides(engine.config.sampler, {"eta_cutoff": 0.01})
    assert SamplerChain(engine.plugins.registry, params).names == ["Eta"]
    first = engine.generate("hi", max_new_tokens=5, eta_cutoff=0.01, seed=1)
    again = engine.generate("hi", max_new_tokens=5, eta_cutoff=0.01, seed=1)
    assert len(first.token_ids) == 5
    assert first.token_ids == again.token_ids  # the seed fixes the draw
    assert first.prompt_token_ids == engine.tokenizer.encode("hi")


def test_a_model_config_selects_softcap(tmp_path):
    """A model whose own config names the third-party kernel: with ``attention=auto`` (the
    default) the model's ``spec.attention`` is used, from an override or from a checkpoint."""
    from plugformer.core.model.save import save_decoder

    spec_overrides = [TINY, "model.spec.attention=softcap", "+model.spec.attention_args.cap=30"]
    engine = plugformer.Engine.from_overrides(spec_overrides)
    assert engine.config.attention.name == "auto"
    assert engine.attention_config.name == "softcap" and engine.attention_config.cap == 30.0
    assert type(engine.model.layers[0].attn.kernel).__name__ == "Softcap"
    explicit = plugformer.Engine.from_overrides([TINY, "attention=softcap", "attention.cap=30"])
    ids = torch.tensor([[1, 72, 105, 33, 10, 99, 3]])
    assert torch.equal(engine.logits(ids), explicit.logits(ids))

    # saved in plugformer's layout, the checkpoint's config.json names softcap itself
    path = save_decoder(engine.model, tmp_path / "softcapped")
    reloaded = plugformer.Engine.from_overrides([f"model.path={path}"])
    assert reloaded.attention_config.name == "softcap" and reloaded.attention_config.cap == 30.0
    assert torch.equal(reloaded.logits(ids), engine.logits(ids))


def test_softcap_with_a_huge_cap_equals_gqa():
    overrides = [TINY, "model.seed=3"]
    softcap = plugformer.Engine.from_overrides(
        [*overrides, "attention=softcap", "attention.cap=1e9"]
    )
    gqa = plugformer.Engine.from_overrides([*overrides, "attention=gqa"])
    ids = torch.randint(0, 258, (2, 12), generator=torch.Generator().manual_seed(0))
    # fp32 on CPU: SDPA and the spelled-out product differ by summation order only (~1e-7
    # relative per op); cap * tanh(x / cap) with cap = 1e9 is x to within an ulp.
    torch.testing.assert_close(softcap.logits(ids), gqa.logits(ids), rtol=1e-5, atol=1e-5)
    # a small cap really changes the model (the test above is not vacuous)
    capped = plugformer.Engine.from_overrides(
        [*overrides, "attention=softcap", "attention.cap=0.01"]
    )
    assert not torch.allclose(capped.logits(ids), gqa.logits(ids), rtol=1e-5, atol=1e-5)


def test_refusals_name_the_option():
    with pytest.raises(
        plugformer.RefusedError, match=r"attention\.cap must be a finite number > 0"
    ):
        plugformer.Engine.from_overrides([TINY, "attention=softcap", "attention.cap=0"])
    with pytest.raises(plugformer.ValidationError, match=r"eta_cutoff must be in \[0, 1\)"):
        plugformer.Engine.from_overrides([TINY, "sampler=eta", "sampler.eta_cutoff=1.0"])
    engine = plugformer.Engine.from_overrides([TINY, "sampler=eta"])
    with pytest.raises(plugformer.ValidationError, match="eta_cutoff must be in"):
        engine.generate("hi", max_new_tokens=2, eta_cutoff=-0.1)


# -- numerics: softcap against a naive reference ---------------------------------------------------


def naive_softcap(q, k, v, bias, scale, cap):
    """One query head at a time, in float64: softmax(cap * tanh(q k^T * scale / cap) + bias) v."""
    b, hq, s, d = q.shape
    hkv = k.shape[1]
    out = torch.empty(b, hq, s, d, dtype=torch.float64)
    for batch in range(b):
        for h in range(hq):
            kv = h // (hq // hkv)  # query heads share KV heads in consecutive groups
            scores = (q[batch, h].double() @ k[batch, kv].double().T) * scale  # [S, T]
            scores = cap * torch.tanh(scores / cap)
            scores = scores + bias[min(batch, bias.shape[0] - 1), min(h, bias.shape[1] - 1)]
            out[batch, h] = torch.softmax(scores, dim=-1) @ v[batch, kv].double()
    return out.float()


def causal_bias(s: int, t: int) -> torch.Tensor:
    """[1, 1, S, T] additive mask: query i (the last S of T positions) sees keys <= its own."""
    q_pos = torch.arange(t - s, t).unsqueeze(-1)
    allowed = torch.arange(t).unsqueeze(0) <= q_pos
    return torch.zeros(s, t).masked_fill(~allowed, float("-inf"))[None, None]


@pytest.mark.parametrize(
    "heads, kv_heads, cap, bias_heads",
    [(4, 2, 50.0, 1), (6, 1, 2.0, 6), (3, 3, 0.5, 1), (8, 4, 1.0, 8)],
    ids=["gqa-cap50", "mqa-cap2-alibi", "mha-cap0.5", "gqa-cap1-alibi"],
)
def test_softcap_matches_naive_reference(heads, kv_heads, cap, bias_heads):
    from plugformer_example_plugin.softcap import Softcap, SoftcapConfig

    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    b, s, t, d = 2, 5, 9, 16
    scale = 1 / math.sqrt(d)
    q = torch.randn(b, heads, s, d, generator=g) * 3  # large scores, so the cap bites
    k = torch.randn(b, kv_heads, t, d, generator=g) * 3
    v = torch.randn(b, kv_heads, t, d, generator=g)
    bias = causal_bias(s, t).expand(1, bias_heads, s, t).clone()
    if bias_heads > 1:  # per-head linear terms, as ALiBi adds
        slopes = torch.linspace(0.1, 1.0, bias_heads)[:, None, None]
        bias = bias + slopes * (torch.arange(t) - t + 1).float()
    kernel = Softcap(SoftcapConfig(cap=cap), AttentionDims(heads, kv_heads, d, scale))
    assert kernel.check() == []
    out = kernel(q, k, v, bias)
    assert out.shape == (b, heads, s, d)
    # fp32 kernel against a float64 reference: agreement to fp32 rounding of a few ops
    torch.testing.assert_close(out, naive_softcap(q, k, v, bias, scale, cap), rtol=1e-5, atol=1e-5)
    uncapped = naive_softcap(q, k, v, bias, scale, 1e12)
    assert (out - uncapped).abs().max() > 1e-2  # with these scores the cap changes the output


def test_softcap_check_refuses_bad_caps_and_layouts():
    from plugformer_example_plugin.softcap import Softcap, SoftcapConfig

    dims = AttentionDims(4, 2, 8, 0.25)
    for cap in (0.0, -1.0, math.inf, math.nan):
        reasons = Softcap(SoftcapConfig(cap=cap), dims).check()
        assert reasons == [f"attention.cap must be a finite number > 0, got {cap!r}"]
    reasons = Softcap(SoftcapConfig(), AttentionDims(4, 3, 8, 0.25)).check()
    assert reasons == [
        "softcap needs num_kv_heads to divide num_heads, got num_kv_heads=3 and num_heads=4"
    ]


# -- numerics: eta against transformers -----------------------------------------------------------


@pytest.mark.parametrize("eta_cutoff", [3e-4, 2e-3, 0.02, 0.2, 0.9])
def test_eta_matches_transformers(eta_cutoff):
    transformers = pytest.importorskip("transformers")
    from plugformer_example_plugin.eta import Eta, build

    g = torch.Generator().manual_seed(int(eta_cutoff * 1e4))
    vocab = 300
    # rows from flat to peaked, one with tokens already masked (as top_k leaves them),
    # and a uniform row (every token tied with the best one: all kept)
    logits = (
        torch.randn(6, vocab, generator=g) * torch.tensor([0.3, 1.0, 2.0, 4.0, 8.0, 2.0])[:, None]
    )
    logits[5, torch.randperm(vocab, generator=g)[:200]] = float("-inf")
    logits = torch.cat([logits, torch.zeros(1, vocab)])
    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)

    expected = transformers.EtaLogitsWarper(epsilon=eta_cutoff)(ids, logits.clone())
    sampler = build(type("Params", (), {"eta_cutoff": eta_cutoff})())
    assert isinstance(sampler, Eta) and sampler.check() == [] and sampler.priority == 50
    got = sampler(logits.clone(), SamplingContext(ids, torch.ones(logits.shape[0])))

    assert torch.equal(torch.isinf(got), torch.isinf(expected))  # the same tokens are masked
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    kept = torch.isfinite(got).sum(-1)
    assert (kept >= 1).all() and kept[-1] == vocab  # never empty; uniform row untouched
    assert (kept[2:5] < vocab).all() and kept[5] < 100  # the cutoff really removes tokens


def test_eta_knob_neutral_and_check():
    from plugformer_example_plugin.eta import Eta, build

    params = type("Params", (), {})
    assert build(params()) is None  # no eta_cutoff knob: off
    params.eta_cutoff = 0.0
    assert build(params()) is None  # 0 disables
    for bad in (1.0, 1.5, -0.1, math.nan):
        assert Eta(bad).check() == [f"eta_cutoff must be in [0, 1) (0 disables), got {bad!r}"]
    assert Eta(0.5).check() == []
