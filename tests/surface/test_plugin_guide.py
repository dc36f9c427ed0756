"""The plugin-author guide (docs/plugins.md) and its package (examples/plugformer-guide-plugins).

1. Every fenced block of the guide that follows a ``<!-- file: PATH -->`` line equals that file
   of the package byte for byte, and every module of the package is shown: the guide cannot
   drift from the code it teaches.
2. The package is pip-installed into a temporary directory (never into the shared virtual
   environment) and found through its entry point, as after ``pip install``; for each registry
   kind a real engine is built with the component selected by override, and its values are
   checked against an independent computation: a float64 forward of the decoder written out
   below with torch (attention, positional, MLP, norm), the sampler's formula on logits,
   quantization by hand and a save/reload (quant), the built-in loading path (family,
   checkpoint), the paper's update rule element by element and a real training run with a
   resume (optimizer), and the schedule's formula at chosen steps (schedule).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import plugformer
from plugformer.core import ModelSpec, SamplerConfig, SamplingContext, cli, loader
from plugformer.core.errors import DuplicateKnobError
from plugformer.core.model.save import save_decoder
from plugformer.core.quant.linear import QuantLinear
from plugformer.core.quant.save import save_quantized
from plugformer.core.registry import KINDS, Source
from plugformer.core.sampling import SamplerChain, with_overrides
from plugformer.core.tokenizers import ByteTokenizer

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
PACKAGE = ROOT / "examples" / "plugformer-guide-plugins"
MODULE = "plugformer_guide_plugins"
DIST, VERSION, PLUGIN = "plugformer-guide-plugins", "0.1.0", "guide"
ENV_VARS = (loader.ENV_BLOCK, loader.ENV_DISABLE_AUTOLOAD, "PLUGFORMER_TRACEBACK")
TINY = "model=tiny"  # random Llama-style decoder: hidden 64, 2 layers, 4 heads over 2 KV heads
NOPE = "positional=none"  # the float64 reference below has no rotary code
IDS = torch.randint(0, 258, (2, 11), generator=torch.Generator().manual_seed(5))
STORIES = ROOT / "tests" / "data" / "train" / "stories.txt"
#: a short training run of model=tiny (the trainer's output_dir is added per test)
TRAIN = [TINY, f"train.data={STORIES}", "train.seq_len=32", "train.batch_size=2",
         "train.progress=false"]  # fmt: skip

#: what the package registers: one component per registry kind
COMPONENTS = {
    "attention": "sigmoid",
    "positional": "scaled_sinusoidal",
    "mlp": "relu2",
    "norm": "scalenorm",
    "sampler": "top_a",
    "quant": "int8_rows",
    "family": "tinyllama_guide",
    "checkpoint": "guide_dir",
    "parallel": "threads",
    "optimizer": "lion",
    "schedule": "wsd",
    "adapter": "ia3",
}

# -- 1. the guide shows the package's files exactly ----------------------------------------------

BLOCK = re.compile(r"^<!-- file: (\S+) -->\n```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
LANGUAGES = {".py": "python", ".toml": "toml"}


def test_guide_blocks_equal_the_package_files():
    text = GUIDE.read_text(encoding="utf-8")
    blocks = BLOCK.findall(text)
    assert len(blocks) == text.count("<!-- file: ")  # every marker is followed by its block
    shown = [path for path, _, _ in blocks]
    assert len(shown) == len(set(shown)), "a file is shown twice"
    package_files = {
        p.relative_to(PACKAGE).as_posix()
        for p in (PACKAGE / "src").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert set(shown) == package_files | {"pyproject.toml"}
    for path, language, body in blocks:
        content = (PACKAGE / path).read_bytes().decode("utf-8")
        assert "\n```" not in content  # would end the block early
        assert language == LANGUAGES[Path(path).suffix], path
        assert body == content, f"docs/plugins.md shows another {path} than the package has"


def test_guide_has_one_section_per_kind_and_names_each_component():
    text = GUIDE.read_text(encoding="utf-8")
    for kind, name in COMPONENTS.items():
        assert re.search(rf"^## {kind}: ", text, re.MULTILINE), kind  # its own section
        module = f"src/{MODULE}/{name}.py"
        assert f"<!-- file: {module} -->" in text, module  # one module per registry name
        assert f"`{name}`" in text
    for topic in ("CONTRACT_VERSION", "DeprecationWarning", "CAPABILITIES", "check()"):
        assert topic in text


# -- 2. the installed package ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def guide_site(pip_install_target) -> Path:
    """The guide's package installed with pip into a temporary target directory."""
    return pip_install_target(PACKAGE, f"{MODULE}/relu2.py")


@pytest.fixture(autouse=True)
def installed(guide_site, monkeypatch) -> Path:
    """The installed package on sys.path, a clean plugin environment, fresh plugin managers."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(guide_site))
    importlib.invalidate_caches()
    loader.reset()
    yield guide_site
    loader.reset()
    for name in [m for m in sys.modules if m.split(".")[0] == MODULE]:
        del sys.modules[name]


def component(name: str) -> types.ModuleType:
    return importlib.import_module(f"{MODULE}.{name}")


def engine(*overrides: str) -> plugformer.Engine:
    return plugformer.Engine.from_overrides(list(overrides))


def test_entry_point_registers_one_component_per_kind(capsys):
    registry = loader.get_plugins().registry
    source = Source("distribution", PLUGIN, DIST, VERSION)
    assert set(COMPONENTS) <= set(KINDS)
    for kind, name in COMPONENTS.items():
        assert registry.get(kind, name).source == source, (kind, name)
    assert (PLUGIN, source) in loader.get_plugins().loaded
    assert cli.main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    listed = {(r[0], r[1]): r[2:] for r in rows}
    for kind, name in COMPONENTS.items():
        assert listed[(kind, name)] == [DIST, VERSION, PLUGIN]


def test_blocking_the_plugin_removes_every_component():
    config = plugformer.compose(["plugins.block=[guide]"])
    assert not hasattr(config.sampler, "top_a")  # the knob left with its sampler
    with pytest.raises(plugformer.UnknownNameError, match="unknown attention 'sigmoid'"):
        plugformer.compose(["plugins.block=[guide]", "attention=sigmoid"])


def test_registered_from_python_without_autoload(monkeypatch):
    monkeypatch.setenv(loader.ENV_DISABLE_AUTOLOAD, "1")
    loader.reset()
    with pytest.raises(plugformer.UnknownNameError, match="unknown attention 'sigmoid'"):
        plugformer.compose(["attention=sigmoid"])
    module = component("sigmoid")
    assert plugformer.register(module) == module.__name__
    entry = loader.get_plugins().registry.get("attention", "sigmoid")
    assert entry.source == Source("local", module.__name__)
    assert plugformer.compose(["attention=sigmoid"]).attention.name == "sigmoid"
    with pytest.raises(plugformer.UnknownNameError, match="unknown sampler 'top_a'"):
        plugformer.compose(["sampler=top_a"])  # only the module registered is there


def test_cli_generates_with_every_runtime_component(capsys):
    args = [
        "generate", TINY, "prompt=hi", "max_new_tokens=4", "attention=sigmoid",
        "positional=scaled_sinusoidal", "model.spec.mlp=relu2", "model.spec.activation=relu",
        "model.spec.norm=scalenorm", "sampler=top_a", "sampler.top_a=0.3", "quant=int8_rows",
        "parallel=threads", "seed=3", "--quiet",  # no summary line: stderr stays empty
    ]  # fmt: skip
    threads = torch.get_num_threads()
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert out.err == "" and out.out.strip()
    assert torch.get_num_threads() == threads  # the CLI closed the engine: threads restored


@dataclasses.dataclass
class Saved:
    """``model=tiny`` saved in plugformer's own layout, and its logits of :data:`IDS` through
    the built-in loading path (the ``hf`` format and the ``plugformer`` family)."""

    path: Path  # config.json + model.safetensors
    spec: ModelSpec
    logits: torch.Tensor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Saved:
    path = save_decoder(engine(TINY).model, tmp_path_factory.mktemp("tiny") / "tiny")
    builtin = engine(f"model.path={path}")
    return Saved(path, builtin.spec, builtin.logits(IDS))


# -- the independent reference: the decoder written out in float64 -------------------------------

Attend = Callable[[torch.Tensor], torch.Tensor]  # scores [B, H, S, T] with mask -> weights
Norm = Callable[[torch.Tensor, dict[str, torch.Tensor], str, float], torch.Tensor]
MLP = Callable[[torch.Tensor, dict[str, torch.Tensor], str], torch.Tensor]


def softmax_attend(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores, dim=-1)


def rms_norm(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, eps: float) -> torch.Tensor:
    return sd[f"{name}.weight"] * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def gated_mlp(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    gate, up, down = (sd[f"{name}.{p}.weight"] for p in ("gate", "up", "down"))
    g = x @ gate.T
    return (g * torch.sigmoid(g) * (x @ up.T)) @ down.T


def reference_logits(
    model: torch.nn.Module,
    ids: torch.Tensor,
    attend: Attend = softmax_attend,
    mlp: MLP = gated_mlp,
    norm: Norm = rms_norm,
    positions: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits [B, S, V] in float64 of the Llama-shaped decoder without rotary positions, from
    the model's own tensors, with each part given as a formula."""
    spec = model.spec
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    b, s = ids.shape
    hq, hkv, d, eps = spec.num_heads, spec.kv_heads, spec.dim_per_head, spec.norm_eps
    h = sd["embed.weight"][ids]  # [B, S, hidden]
    if positions is not None:
        h = h + positions(torch.arange(s))
    mask = torch.full((s, s), -math.inf, dtype=torch.float64).triu(1)  # causal
    for i in range(spec.num_layers):
        p = f"layers.{i}"
        x = norm(h, sd, f"{p}.attn_norm", eps)

        def heads(w: str, n: int, x: torch.Tensor = x, p: str = p) -> torch.Tensor:
            t = (x @ sd[f"{p}.attn.{w}.weight"].T).view(b, s, n, d).transpose(1, 2)
            return t.repeat_interleave(hq // n, dim=1)  # [B, Hq, S, D]: head j uses kv j // G

        q, k, v = heads("wq", hq), heads("wk", hkv), heads("wv", hkv)
        weights = attend(q @ k.transpose(-1, -2) / math.sqrt(d) + mask)  # [B, Hq, S, S]
        out = (weights @ v).transpose(1, 2).reshape(b, s, hq * d)
        h = h + out @ sd[f"{p}.attn.wo.weight"].T
        h = h + mlp(norm(h, sd, f"{p}.mlp_norm", eps), sd, f"{p}.mlp")
    return norm(h, sd, "norm", eps) @ sd["head.weight"].T


def assert_matches_reference(logits: torch.Tensor, expected: torch.Tensor) -> None:
    # a float32 engine against a float64 reference over 2 layers: logits up to ~0.7 agreed
    # to <= 2.1e-7 here for every part; 1e-5 leaves room for another CPU's summation order and
    # stays far below what swapping a part changes (assert_differs: > 1e-3)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)


def assert_differs(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a.double() - b.double()).abs().max() > 1e-3  # the part really changes the model


def test_reference_matches_the_builtin_parts():
    """The reference is faithful: with the built-in gqa, gated and rmsnorm it equals the
    engine, so the tests below that swap one formula check only that part."""
    e = engine(TINY, NOPE)
    assert_matches_reference(e.logits(IDS), reference_logits(e.model, IDS))


# -- attention ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [None, -1.5], ids=["paper-bias", "bias-1.5"])
def test_sigmoid_attention_matches_the_formula(bias):
    overrides = [TINY, NOPE, "attention=sigmoid"]
    if bias is not None:
        overrides.append(f"attention.bias={bias}")
    e = engine(*overrides)
    kernel = e.model.layers[0].attn.kernel
    assert type(kernel).__name__ == "Sigmoid" and e.attention_config.bias == bias
    b = -math.log(e.spec.max_seq_len) if bias is None else bias  # the paper's -log(n)
    assert kernel.offset == pytest.approx(b)

    def sigmoid_attend(scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores + b)

    logits = e.logits(IDS)
    assert_matches_reference(logits, reference_logits(e.model, IDS, attend=sigmoid_attend))
    assert_differs(logits, reference_logits(e.model, IDS))  # not softmax attention

    # decoding token by token (the KV cache: one query over T keys) gives the log-probs of
    # the full float64 forward over the same tokens
    prompt = IDS[0, :5].tolist()
    out = e.generate(prompt, max_new_tokens=6, logprobs=0)  # greedy: the default sampler
    ref = reference_logits(e.model, torch.tensor([prompt + out.token_ids]), attend=sigmoid_attend)
    logp = torch.log_softmax(ref[0, len(prompt) - 1 : -1], dim=-1)  # [6, V]
    expected = logp.gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.logprobs, dtype=torch.float64), expected,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert out.token_ids == logp.argmax(-1).tolist()


def test_sigmoid_check_refuses():
    from plugformer.core import AttentionDims

    sigmoid = component("sigmoid")
    with pytest.raises(plugformer.RefusedError, match=r"attention\.bias must be a finite number"):
        engine(TINY, "attention=sigmoid", "attention.bias=inf")
    kernel = sigmoid.Sigmoid(sigmoid.SigmoidConfig(), AttentionDims(4, 3, 8, 0.25))  # no context
    assert kernel.check() == [
        "attention.bias=null means -log(max_seq_len), but the kernel was built without the "
        "model's max_seq_len; set attention.bias",
        "sigmoid needs num_kv_heads to divide num_heads, got num_kv_heads=3 and num_heads=4",
    ]


# -- positional -----------------------------------------------------------------------------------


def scaled_sinusoids(positions: torch.Tensor, d: int, scale: float) -> torch.Tensor:
    """[S, d] float64, element by element: sin(p * 10000^(-2i/d)) then the cosines."""
    table = torch.empty(len(positions), d, dtype=torch.float64)
    for row, p in enumerate(positions.tolist()):
        for i in range(d // 2):
            angle = p * 10000.0 ** (-2 * i / d)
            table[row, i], table[row, d // 2 + i] = math.sin(angle), math.cos(angle)
    return scale * table


@pytest.mark.parametrize("scale", [None, 0.5], ids=["default-scale", "scale-0.5"])
def test_scaled_sinusoidal_adds_its_vectors_to_the_embeddings(scale):
    overrides = [TINY, "positional=scaled_sinusoidal"]
    if scale is not None:
        overrides.append(f"positional.scale={scale}")
    e = engine(*overrides)
    d = e.spec.hidden_size
    expected_scale = 1 / math.sqrt(d) if scale is None else scale
    assert e.model.positional.scale == pytest.approx(expected_scale)

    def positions(p: torch.Tensor) -> torch.Tensor:
        return scaled_sinusoids(p, d, expected_scale)

    logits = e.logits(IDS)
    assert_matches_reference(logits, reference_logits(e.model, IDS, positions=positions))
    assert_differs(logits, reference_logits(e.model, IDS))  # positions matter


def test_scaled_sinusoidal_check_refuses():
    with pytest.raises(plugformer.RefusedError, match=r"positional\.base must be > 1"):
        engine(TINY, "positional=scaled_sinusoidal", "positional.base=1")


# -- mlp ------------------------------------------------------------------------------------------


def relu2_mlp(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    a = (x @ sd[f"{name}.up.weight"].T).clamp(min=0)
    return (a * a) @ sd[f"{name}.down.weight"].T


def test_relu2_mlp_owns_up_and_down_and_matches_the_formula(tmp_path):
    e = engine(TINY, NOPE, "model.spec.mlp=relu2", "model.spec.activation=relu")
    names = set(e.model.state_dict())
    assert {"layers.0.mlp.up.weight", "layers.0.mlp.down.weight"} <= names
    assert not any(".mlp.gate" in n for n in names)
    mlp = e.model.layers[1].mlp
    x = torch.randn(2, 3, e.spec.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = mlp(x)
    sd = {f"mlp.{k}": v.double() for k, v in mlp.state_dict().items()}
    torch.testing.assert_close(got.double(), relu2_mlp(x.double(), sd, "mlp"),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    logits = e.logits(IDS)
    assert_matches_reference(logits, reference_logits(e.model, IDS, mlp=relu2_mlp))
    # it owns its weights: saved and loaded back under its own names
    reloaded = engine(f"model.path={save_decoder(e.model, tmp_path / 'relu2')}", NOPE)
    assert reloaded.spec.mlp == "relu2"
    assert torch.equal(reloaded.logits(IDS), logits)


def test_relu2_refuses_another_activation():
    with pytest.raises(plugformer.RefusedError, match=r"mlp 'relu2' refused: .*got 'silu'"):
        engine(TINY, "model.spec.mlp=relu2")


# -- norm -----------------------------------------------------------------------------------------


def scale_norm(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, eps: float) -> torch.Tensor:
    return sd[f"{name}.weight"] * x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


def test_scalenorm_matches_the_formula():
    e = engine(TINY, NOPE, "model.spec.norm=scalenorm")
    weights = {k: v for k, v in e.model.state_dict().items() if "norm" in k}
    assert len(weights) == 2 * 2 + 1 and all(w.shape == (1,) for w in weights.values())
    logits = e.logits(IDS)
    assert_matches_reference(logits, reference_logits(e.model, IDS, norm=scale_norm))
    assert_differs(logits, reference_logits(e.model, IDS, norm=rms_norm))
    scalenorm = component("scalenorm")
    from plugformer.core import NormDims

    fresh = scalenorm.ScaleNorm(scalenorm.ScaleNormConfig(), NormDims(16, 1e-5))
    assert fresh.weight.item() == pytest.approx(4.0)  # the paper's g = sqrt(dim)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).norm(dim=-1), torch.full((3,), 4.0))
        assert torch.equal(fresh(torch.zeros(2, 16)), torch.zeros(2, 16))  # eps: no NaN


# -- sampler --------------------------------------------------------------------------------------


def top_a_by_hand(logits: torch.Tensor, a: float) -> torch.Tensor:
    p = torch.softmax(logits.double(), dim=-1)
    keep = p >= a * p.max(dim=-1, keepdim=True).values ** 2
    return logits.masked_fill(~keep, float("-inf"))


def test_top_a_knob_is_composed_and_neutral_elsewhere():
    assert plugformer.compose(["sampler=top_a"]).sampler.top_a == 0.2
    params = plugformer.compose(["sampler=top_p"]).sampler
    assert params.top_a == 0.0  # neutral: builds nothing
    registry = loader.get_plugins().registry
    assert SamplerChain(registry, params).sampler_names == ["top_p"]
    assert SamplerChain(registry, with_overrides(params, {"top_a": 0.6})).sampler_names == [
        "top_p", "top_a"
    ]  # fmt: skip


class Params:
    """A sampling-params object with only the ``top_a`` knob (builders read knobs with
    ``plugformer.core.knob``, so the other samplers' knobs need not be there)."""

    def __init__(self, a: float) -> None:
        self.top_a = a


@pytest.mark.parametrize("a", [0.05, 0.3, 1.0])
def test_top_a_on_logits_equals_the_formula(a):
    top_a = component("top_a")
    sampler = top_a.build(Params(a))
    assert isinstance(sampler, top_a.TopA) and sampler.check() == [] and sampler.priority == 55
    assert top_a.build(Params(0.0)) is None
    g = torch.Generator().manual_seed(int(a * 100))
    # rows from flat to peaked, one with tokens already masked by an earlier sampler
    logits = torch.randn(5, 300, generator=g) * torch.tensor([0.1, 1.0, 2.0, 4.0, 3.0])[:, None]
    logits[4, :150] = float("-inf")
    ctx = SamplingContext(torch.zeros(5, 1, dtype=torch.long), torch.ones(5))
    got = sampler(logits.clone(), ctx)
    expected = top_a_by_hand(logits, a)
    assert torch.equal(got, expected)
    kept = torch.isfinite(got).sum(-1)
    assert (kept >= 1).all() and (kept[2:] < (logits[2:] > -math.inf).sum(-1)).all()


def test_top_a_in_generation_keeps_only_allowed_tokens():
    """Every token drawn under temperature 0.1 then top_a 0.5 passes the cut computed from
    the model's own logits; the cut removed tokens at every step."""
    e = engine(TINY, "sampler=top_a", "sampler.top_a=0.5", "sampler.temperature=0.1")
    prompt = IDS[1, :4].tolist()
    out = e.generate(prompt, max_new_tokens=8, seed=11)
    tokens = prompt + out.token_ids
    for step, token in enumerate(out.token_ids):
        logits = e.logits([tokens[: len(prompt) + step]])[0, -1] / 0.1  # temperature first
        p = torch.softmax(logits.double(), dim=-1)
        cut = 0.5 * p.max() ** 2
        assert p[token] >= cut * (1 - 1e-4), step  # cached and full forwards differ ~1e-7
        assert (p < cut).sum() > 100  # top_a really removed most of the 258 tokens
    with pytest.raises(plugformer.ValidationError, match=r"top_a must be in \[0, 1\]"):
        e.generate(prompt, max_new_tokens=2, top_a=1.5)


def test_a_second_sampler_declaring_top_a_differently_is_refused():
    @dataclasses.dataclass
    class OtherConfig(SamplerConfig):
        name: str = "other_a"
        top_a: int = dataclasses.field(default=1, metadata={"off": 0})  # an int, not a float

    plugin = types.ModuleType("other_a")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("sampler", "other_a", lambda params: None, OtherConfig)

    plugin.plugformer_register = plugformer_register
    loader.get_plugins()
    with pytest.raises(plugformer.PluginError, match=r"knob 'top_a'.*'top_a' of guide") as info:
        plugformer.register(plugin)
    assert isinstance(info.value.__cause__, DuplicateKnobError)
    assert "other_a" not in loader.get_plugins().registry.names("sampler")


# -- quant ----------------------------------------------------------------------------------------


def int8_by_hand(w: torch.Tensor, sym: bool) -> torch.Tensor:
    """Round-to-nearest int8 per output row, the scale rounded to float16, dequantized; in
    float32 like the layer (a float64 division may round a scale or a w / s of .5 otherwise)."""
    w = w.detach().float()
    if sym:
        scale, zero = w.abs().amax(1) / 127, torch.full((w.shape[0],), 128.0)
    else:
        lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
        scale = (hi - lo) / 255
    scale = scale.half().float()
    scale[scale == 0] = 1.0  # an all-zero row: any scale gives zeros
    if not sym:
        zero = torch.round(-lo / scale).clamp(0, 255)
    q = (torch.round(w / scale[:, None]) + zero[:, None]).clamp(0, 255)
    return (q - zero[:, None]) * scale[:, None]


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_int8_rows_becomes_the_core_layer_and_saves(tiny, tmp_path, sym):
    quantized = engine(f"model.path={tiny.path}", "quant=int8_rows", f"quant.sym={sym}")
    layers = {n: m for n, m in quantized.model.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 2 * 7 and all(n.startswith("layers.") for n in layers)
    assert not any(type(m).__name__ == "Int8RowLinear" for m in quantized.model.modules())
    assert {(m.bits, m.group_size, m.sym) for m in layers.values()} == {(8, -1, sym)}

    # the same model quantized by hand: every block linear rounded, then dequantized
    by_hand = engine(f"model.path={tiny.path}")
    with torch.no_grad():
        for name, layer in layers.items():
            linear = by_hand.model.get_submodule(name)
            linear.weight.copy_(int8_by_hand(linear.weight, sym))
            assert torch.equal(layer.dequantize(), linear.weight), name
    logits = quantized.logits(IDS)
    torch.testing.assert_close(logits, by_hand.logits(IDS), rtol=1e-6, atol=1e-6)
    assert_differs(logits, tiny.logits)  # it did quantize

    out = save_quantized(quantized, tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["bits"] == 8
    assert torch.equal(engine(f"model.path={out}").logits(IDS), logits)


def test_int8_row_linear_forward_equals_the_adopted_layer():
    int8_rows = component("int8_rows")
    linear = torch.nn.Linear(64, 32, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=torch.Generator().manual_seed(4)))
        linear.weight[3] = 0  # an all-zero row
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(6))
    for sym in (True, False):
        own = int8_rows.Int8RowLinear(linear, sym)
        core = QuantLinear.from_weights(own.quantized_weights())
        with torch.no_grad():
            assert torch.equal(own.dequantize(), core.dequantize())
            torch.testing.assert_close(own(x), core(x), rtol=1e-6, atol=1e-6)
            assert torch.equal(own.dequantize(), int8_by_hand(linear.weight, sym))
        assert own.dequantize()[3].abs().max() == 0


def test_int8_rows_check_refuses_unpackable_sizes():
    with pytest.raises(plugformer.RefusedError, match="intermediate_size to be a multiple of 4"):
        engine(TINY, "quant=int8_rows", "model.spec.intermediate_size=126")


# -- family ---------------------------------------------------------------------------------------

#: our names -> the tinyllama-guide layout's, written here independently of the plugin's table
GUIDE_TOP = {"embed.weight": "tok_embeddings.weight", "norm.weight": "norm.weight",
             "head.weight": "output.weight"}  # fmt: skip
GUIDE_PARTS = {"attn.wq": "attention.wq", "attn.wk": "attention.wk", "attn.wv": "attention.wv",
               "attn.wo": "attention.wo", "mlp.gate": "feed_forward.w1",
               "mlp.up": "feed_forward.w3", "mlp.down": "feed_forward.w2",
               "attn_norm": "attention_norm", "mlp_norm": "ffn_norm"}  # fmt: skip


def guide_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if name in GUIDE_TOP:
            out[GUIDE_TOP[name]] = t
            continue
        _, layer, rest = name.split(".", 2)
        part, leaf = rest.rsplit(".", 1)
        out[f"layers.{layer}.{GUIDE_PARTS[part]}.{leaf}"] = t
    return out


def guide_config(spec) -> dict:
    return {
        "architectures": ["TinyGuideForCausalLM"], "model_type": "tinyllama-guide",
        "vocab_size": spec.vocab_size, "dim": spec.hidden_size, "n_layers": spec.num_layers,
        "n_heads": spec.num_heads, "n_kv_heads": spec.num_kv_heads,
        "ffn_dim": spec.intermediate_size, "max_seq_len": spec.max_seq_len,
        "norm_eps": spec.norm_eps, "rope_theta": 10000.0,
    }  # fmt: skip


def write_guide_family(
    directory: Path, tensors: dict[str, torch.Tensor], config: dict, extra: dict | None = None
) -> Path:
    directory.mkdir(parents=True)
    save_file({**guide_layout(tensors), **(extra or {})}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_tinyllama_guide_family_loads_to_the_builtin_logits(tiny, tmp_path):
    tensors = load_file(str(tiny.path / "model.safetensors"))
    # with a stored rotary table, as Meta-style files carry: skipped (tensor_name -> None)
    path = write_guide_family(tmp_path / "g", tensors, guide_config(tiny.spec),
                              {"rope.freqs": torch.ones(8)})  # fmt: skip
    e = engine(f"model.path={path}")
    assert type(e.family).__name__ == "TinyLlamaGuide"
    assert e.spec == dataclasses.replace(tiny.spec, positional_args={"theta": 10000.0})
    logits = e.logits(IDS)
    assert torch.equal(logits, tiny.logits)  # the same weights through the built-in path
    forced = engine(f"model.path={path}", "family=tinyllama_guide")
    assert torch.equal(forced.logits(IDS), logits)


def test_tinyllama_guide_family_errors_name_its_keys(tiny, tmp_path):
    tensors = load_file(str(tiny.path / "model.safetensors"))
    spec = tiny.spec
    bad = write_guide_family(tmp_path / "bad", tensors, {**guide_config(spec), "dim": "wide"})
    with pytest.raises(plugformer.ConfigError, match=r"config\.json: dim must be int, got 'wide'"):
        engine(f"model.path={bad}")
    extra = write_guide_family(tmp_path / "extra", tensors, guide_config(spec),
                               {"layers.0.attention.wz.weight": torch.ones(2)})  # fmt: skip
    with pytest.raises(plugformer.CheckpointError, match=r"unexpected tensors: .*attention\.wz"):
        engine(f"model.path={extra}")


# -- checkpoint -----------------------------------------------------------------------------------


def write_guide_dir(directory: Path, weights: Path, config: dict, **index) -> Path:
    directory.mkdir(parents=True)
    shutil.copyfile(weights, directory / "model.safetensors")
    body = {"format": "plugformer-guide", "config": config, **index}
    (directory / "guide.json").write_text(json.dumps(body))
    return directory


def test_guide_dir_format_loads_to_the_builtin_logits(tiny, tmp_path):
    config = json.loads((tiny.path / "config.json").read_text())
    path = write_guide_dir(tmp_path / "gd", tiny.path / "model.safetensors", config,
                           generation_config={"eos_token_id": 7})  # fmt: skip
    e = engine(f"model.path={path}")
    assert type(e.checkpoint).__name__ == "GuideCheckpoint"
    assert type(e.family).__name__ == "Plugformer"  # the family reads the config it carries
    assert torch.equal(e.logits(IDS), tiny.logits)  # the hf format on the same file
    assert isinstance(e.tokenizer, ByteTokenizer) and e.generation_config == {"eos_token_id": 7}
    out = e.generate("hi", max_new_tokens=3)
    assert out.prompt_token_ids == ByteTokenizer().encode("hi") and len(out.token_ids) <= 3
    # guide.json beside a config.json: SPECIFIC (1.0) beats the hf format's GENERIC (0.5)
    shutil.copyfile(tiny.path / "config.json", path / "config.json")
    assert type(engine(f"model.path={path}").checkpoint).__name__ == "GuideCheckpoint"
    assert type(engine(f"model.path={path}", "checkpoint=hf").checkpoint).__name__ == (
        "HFCheckpoint"
    )


def test_guide_dir_carries_the_guide_family_and_a_tokenizer_json(tiny, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    g = tmp_path / "both"
    write_guide_family(g, load_file(str(tiny.path / "model.safetensors")), guide_config(tiny.spec))
    (g / "config.json").unlink()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(g / "tok.json"))
    index = {"format": "plugformer-guide", "config": guide_config(tiny.spec),
             "tokenizer": "tok.json", "eos_token": "</s>"}  # fmt: skip
    (g / "guide.json").write_text(json.dumps(index))
    e = engine(f"model.path={g}")
    assert type(e.checkpoint).__name__ == "GuideCheckpoint"
    assert type(e.family).__name__ == "TinyLlamaGuide"
    assert torch.equal(e.logits(IDS), tiny.logits)
    assert e.tokenizer.encode("hello world", add_special_tokens=False) == [3, 4]
    assert 2 in e.tokenizer.eos_token_ids


def test_guide_dir_refuses_a_malformed_index(tiny, tmp_path):
    config = json.loads((tiny.path / "config.json").read_text())
    path = write_guide_dir(tmp_path / "x", tiny.path / "model.safetensors", config)
    (path / "guide.json").write_text(json.dumps({"format": "other", "config": config}))
    with pytest.raises(plugformer.CheckpointError, match=r"guide\.json: 'format' must be"):
        engine(f"model.path={path}")
    index = {"format": "plugformer-guide", "config": config, "tokenizer": "../tok.json"}
    (path / "guide.json").write_text(json.dumps(index))
    with pytest.raises(plugformer.CheckpointError, match="'tokenizer' must be 'bytes' or a file"):
        engine(f"model.path={path}")


# -- parallel -------------------------------------------------------------------------------------


def test_threads_sets_and_restores_the_thread_count(tiny):
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    if target > (os.cpu_count() or 1):
        pytest.skip("one CPU: no other thread count to set")
    e = engine(f"model.path={tiny.path}", "parallel=threads", f"parallel.threads={target}")
    try:
        assert type(e.parallel).__name__ == "Threads" and e.parallel.world_size == 1
        assert torch.get_num_threads() == target
        # the same model on another thread count: only the summation order may differ
        torch.testing.assert_close(e.logits(IDS), tiny.logits, rtol=1e-6, atol=1e-6)
    finally:
        e.close()
    assert torch.get_num_threads() == before
    with pytest.raises(plugformer.RefusedError, match=r"parallel\.threads must be in \[1, "):
        engine(TINY, "parallel=threads", "parallel.threads=0")


# -- optimizer ------------------------------------------------------------------------------------


def lion_by_hand(
    w: list[float], g: list[float], m: list[float], lr: float, wd: float, b1: float, b2: float
) -> tuple[list[float], list[float]]:
    """(w, m) after one Lion step (the paper's Algorithm 2), element by element in Python
    floats: c = b1 m + (1 - b1) g; w -= lr (sign(c) + wd w); m = b2 m + (1 - b2) g."""
    new_w, new_m = [], []
    for wi, gi, mi in zip(w, g, m, strict=True):
        c = b1 * mi + (1 - b1) * gi
        sign = 1.0 if c > 0 else -1.0 if c < 0 else 0.0
        new_w.append(wi - lr * (sign + wd * wi))
        new_m.append(b2 * mi + (1 - b2) * gi)
    return new_w, new_m


def test_lion_steps_equal_the_paper_formula():
    from plugformer.core import OptimizerSettings

    lion = component("lion")
    gen = torch.Generator().manual_seed(8)
    weight = torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=torch.float64))
    bias = torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))
    lr, wd, b1, b2 = 0.01, 0.1, 0.8, 0.95  # the betas are Lion's own knobs, not train.betas
    settings = OptimizerSettings(lr=lr, betas=(0.9, 0.999), weight_decay=wd)
    opt = lion.Lion(lion.LionConfig(beta1=b1, beta2=b2), [("w", weight), ("b", bias)], settings)
    assert opt.check() == []
    assert [g["weight_decay"] for g in opt.param_groups] == [wd, 0.0]  # no decay on 1-D
    g1 = {
        "w": torch.randn(3, 4, generator=gen, dtype=torch.float64),
        "b": torch.randn(4, generator=gen, dtype=torch.float64),
    }
    g1["w"][0, 0] = 0.0  # sign(0) = 0: only the decay moves it
    # step 2 against step 1's gradient, ten times smaller: the momentum wins the sign
    grads = [g1, {k: -0.1 * v for k, v in g1.items()}, {k: v * 2 for k, v in g1.items()}]
    params = {"w": weight, "b": bias}
    hand = {k: (p.detach().flatten().tolist(), [0.0] * p.numel()) for k, p in params.items()}
    for step, grad in enumerate(grads):
        before = {k: p.detach().clone() for k, p in params.items()}
        for k, p in params.items():
            p.grad = grad[k].clone()
            decay = wd if p.ndim >= 2 else 0.0
            w, m = hand[k]
            hand[k] = lion_by_hand(w, grad[k].flatten().tolist(), m, lr, decay, b1, b2)
        opt.step()
        for k, p in params.items():
            expected_w, expected_m = (
                torch.tensor(v, dtype=torch.float64).view_as(p) for v in hand[k]
            )
            torch.testing.assert_close(p.detach(), expected_w, rtol=0, atol=1e-15)
            torch.testing.assert_close(opt.state[p]["exp_avg"], expected_m, rtol=0, atol=1e-15)
        moved = bias.detach() - before["b"]
        assert torch.allclose(moved.abs(), torch.full_like(moved, lr))  # a sign: lr per weight
        if step == 1:  # against its own gradient: the momentum's direction, not g's
            assert (moved * grad["b"] > 0).all()
    assert weight.detach()[0, 0] != 0


def lion_trainer(out: Path, *extra: str) -> plugformer.Trainer:
    run = ["optimizer=lion", "train.steps=3", "train.lr=1e-3", "train.weight_decay=0.1"]
    return plugformer.Trainer(plugformer.compose([*TRAIN, *run, f"train.output_dir={out}", *extra]))


def test_lion_trains_tiny_and_resumes_bit_for_bit(tmp_path):
    run = lion_trainer(tmp_path / "run")
    assert type(run.optimizer).__name__ == "Lion" and run.optimizer.param_groups[0]["lr"] == 1e-3
    named = dict(run.module.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    seen: dict[str, torch.Tensor] = {}  # the gradients the trainer hands the optimizer

    def capture(optimizer, args, kwargs):
        seen.update({n: p.grad.detach().clone() for n, p in named.items()})

    hook = run.optimizer.register_step_pre_hook(capture)
    eval_before = run.evaluate()["eval_loss"]
    first = run.step()
    hook.remove()
    assert first["lr"] == 1e-3  # warm-up 0, cosine at its start: the full rate
    # step 1: m = 0, so c = (1 - beta1) g and every weight moves by lr * (sign(g) + wd * w),
    # clipping or not (a positive factor keeps the sign); wd only on weight matrices
    for name, p in named.items():
        w0, g = before[name].double(), seen[name].double()
        wd = 0.1 if p.ndim >= 2 else 0.0
        expected = w0 - 1e-3 * (torch.sign(g) + wd * w0)
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-9)
        m = run.optimizer.state[p]["exp_avg"]
        torch.testing.assert_close(m.double(), (1 - 0.99) * g, rtol=1e-6, atol=1e-12)
    assert (seen["layers.0.attn.wq.weight"] != 0).all()  # the weights really moved
    losses = [first["loss"], run.step()["loss"], run.step()["loss"]]
    assert run.evaluate()["eval_loss"] < eval_before - 0.1  # it learns
    full = {n: p.detach().clone() for n, p in named.items()}

    # 2 steps, a checkpoint, then train.resume=auto for the third: the same floats
    head = lion_trainer(tmp_path / "split")
    assert [head.step()["loss"], head.step()["loss"]] == losses[:2]
    saved = head.save_checkpoint()
    assert saved is not None
    stored = load_file(str(saved / "optimizer.safetensors"))
    assert "state/layers.0.attn.wq.weight/exp_avg" in stored  # Lion's momentum, by name
    tail = lion_trainer(tmp_path / "split", "train.resume=auto")
    assert tail.step_count == 2 and type(tail.optimizer).__name__ == "Lion"
    resumed = dict(tail.module.named_parameters())
    for name, p in dict(head.module.named_parameters()).items():
        assert torch.equal(
            tail.optimizer.state[resumed[name]]["exp_avg"], head.optimizer.state[p]["exp_avg"]
        ), name
    assert tail.step()["loss"] == losses[2]
    for name, value in full.items():
        assert torch.equal(resumed[name].detach(), value), name


def test_lion_refuses_its_knobs_out_of_range(tmp_path):
    with pytest.raises(
        plugformer.RefusedError,
        match=r"optimizer 'lion' refused: optimizer\.beta2 must be in \[0, 1\), got 1\.0",
    ):
        lion_trainer(tmp_path / "bad", "optimizer.beta2=1.0")


# -- schedule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", ["linear", "sqrt"])
def test_wsd_multipliers_equal_the_formula(decay):
    from plugformer.core import ScheduleDims
    from plugformer.core.interfaces.schedule import lr_multiplier

    wsd = component("wsd")
    dims = ScheduleDims(total_steps=21, warmup_steps=5)
    schedule = wsd.WSD(wsd.WSDConfig(decay_fraction=0.2, min_ratio=0.1, decay=decay), dims)
    assert schedule.check() == []
    shape = math.sqrt if decay == "sqrt" else (lambda x: x)
    # steps 0-4: warm-up (step + 1) / 6; steps 5-20 are progress 0, 1/15, ..., 1; the decay
    # is the last 20% of that, progress 12/15 (step 17) to 1 (step 20)
    expected = {0: 1 / 6, 4: 5 / 6, 5: 1.0, 11: 1.0, 17: 1.0, 18: 1 - 0.9 * shape(1 / 3),
                19: 1 - 0.9 * shape(2 / 3), 20: 0.1}  # fmt: skip
    for step, value in expected.items():
        assert lr_multiplier(schedule, dims, step) == pytest.approx(value, rel=1e-12), step
    stable = wsd.WSD(wsd.WSDConfig(decay_fraction=0.0), dims)  # never decays: constant
    assert [lr_multiplier(stable, dims, s) for s in range(5, 21)] == [1.0] * 16


def test_wsd_drives_the_trainers_learning_rate(tmp_path):
    run = ["train.steps=6", "train.warmup_steps=1", "train.lr=0.01", "schedule=wsd",
           "schedule.decay_fraction=0.5", "schedule.min_ratio=0.2",
           "schedule.decay=sqrt"]  # fmt: skip
    trainer = plugformer.Trainer(plugformer.compose([*TRAIN, *run, f"train.output_dir={tmp_path}"]))
    lrs = [trainer.step()["lr"] for _ in range(6)]
    # warm-up 1/2, then progress 0, 1/4, 2/4 (stable to 1 - 0.5), 3/4, 1 (the decay's end)
    expected = [0.5, 1.0, 1.0, 1.0, 1 - 0.8 * math.sqrt(0.5), 0.2]
    assert lrs == pytest.approx([0.01 * x for x in expected], rel=1e-12)


def test_wsd_refuses_an_unknown_decay(tmp_path):
    from plugformer.core import ScheduleDims

    wsd = component("wsd")
    bad = wsd.WSD(wsd.WSDConfig(decay_fraction=1.5, decay="cosine"), ScheduleDims(10, 0))
    assert bad.check() == [
        "schedule.decay_fraction must be in [0, 1], got 1.5",
        "schedule.decay must be one of linear, sqrt, got 'cosine'",
    ]
    config = plugformer.compose(
        [*TRAIN, "schedule=wsd", "schedule.decay=cosine", f"train.output_dir={tmp_path}"]
    )
    with pytest.raises(plugformer.RefusedError, match=r"schedule 'wsd' refused: schedule\.decay"):
        plugformer.Trainer(config)


def test_cli_trains_with_lion_and_wsd(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        *TRAIN,
        "train.steps=2",
        "optimizer=lion",
        "train.lr=1e-3",
        "schedule=wsd",
        f"train.output_dir={out}",
    ]
    assert cli.main(args) == 0
    assert "trained 2 steps: loss " in capsys.readouterr().out
    assert engine(f"model.path={out / 'final'}").generate("Once", max_new_tokens=2).token_ids


# -- adapter --------------------------------------------------------------------------------------


def test_ia3_scales_outputs_trains_saves_reloads_and_merges(tmp_path, capsys):
    base = engine(TINY)
    adapted = engine(TINY, "adapter=ia3", "adapter.target_modules=[k_proj,v_proj,down_proj]")
    targets = [n for n, m in adapted.model.named_modules() if type(m).__name__ == "IA3Layer"]
    assert len(targets) == 6  # 2 layers x wk, wv, down
    torch.testing.assert_close(adapted.logits(IDS), base.logits(IDS), rtol=0, atol=0)  # l = 1
    g = torch.Generator().manual_seed(1)
    scales = {}
    with torch.no_grad():
        for name in targets:
            layer = adapted.model.get_submodule(name)
            layer.ia3_l.copy_(0.5 + torch.rand(layer.ia3_l.shape, generator=g))
            scales[name.split(".adapters.")[0]] = layer.ia3_l.detach().clone()
        for path, scale in scales.items():  # the same model by hand: W' = diag(l) W
            base.model.get_submodule(path).weight.mul_(scale.view(-1, 1))
    torch.testing.assert_close(adapted.logits(IDS), base.logits(IDS), rtol=1e-5, atol=1e-5)

    run = ["adapter=ia3", "train.steps=3", "train.lr=5e-2", f"train.output_dir={tmp_path / 'run'}"]
    summary = plugformer.train(plugformer.compose([*TRAIN, *run]))
    out = Path(summary["adapter_dir"])
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["plugformer_adapter"] == "ia3" and saved["plugformer_config"] == {"init": 1.0}
    assert all(k.endswith(".ia3_l") for k in load_file(str(out / "adapter_model.safetensors")))
    trained = engine(TINY, f"adapter.path={out}")
    assert (trained.logits(IDS) - engine(TINY).logits(IDS)).abs().max() > 1e-4  # it trained
    assert cli.main(["merge", TINY, f"adapter.path={out}", f"output_dir={tmp_path / 'm'}"]) == 0
    merged = engine(f"model.path={tmp_path / 'm'}")
    torch.testing.assert_close(merged.logits(IDS), trained.logits(IDS), rtol=1e-5, atol=1e-5)
