"""GPTQ and round-to-nearest: GPTQ has the lower output error on the same calibration data, on
a single layer and on a whole (tiny) model; settings that cannot work are refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import plugformer
from plugformer.core.errors import ConfigError, RefusedError
from plugformer.core.quant.calibrate import CalibrationRequest, calibration_samples
from plugformer.core.quant.grid import grid, rtn
from plugformer.core.quant.linear import QuantLinear
from plugformer.core.tokenizers.byte import ByteTokenizer
from plugformer.plugins.quant.gptq import Hessian, float_target, gptq

HELDOUT = Path(__file__).parents[1] / "data" / "heldout_en.txt"


def _layer_and_inputs(k=128, n=64, tokens=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(k, n, bias=False)
    torch.nn.init.normal_(linear.weight, std=0.05, generator=g)
    # correlated features of uneven scale, as real activations are
    mix = torch.randn(k, k, generator=g) / k**0.5 + 0.3 * torch.eye(k)
    x = torch.randn(tokens, k, generator=g) @ mix * torch.linspace(0.1, 3.0, k)
    return linear, x[: tokens // 2], x[tokens // 2 :]  # calibration, held out


@pytest.mark.parametrize(
    "bits,group_size,sym,desc_act",
    [(4, 32, True, False), (4, 32, False, True), (4, -1, True, False), (3, 64, False, True),
     (2, 32, True, False), (8, -1, True, True)],
)  # fmt: skip
def test_gptq_has_lower_output_error_than_rtn_on_a_layer(bits, group_size, sym, desc_act):
    linear, calib, held = _layer_and_inputs()
    H = Hessian(128, torch.device("cpu"))
    for chunk in calib.split(256):
        H.add(chunk)
    q, scales, zeros, g_idx = gptq(linear.weight, H.H, bits, group_size, sym, desc_act, 0.01, 32)
    gq = QuantLinear.from_ints(
        q, scales, zeros, g_idx, bits, group_size, sym=sym, desc_act=desc_act
    )
    rq = rtn(linear, bits, group_size, sym)
    with torch.no_grad():
        for x in (calib, held):
            ref = linear(x)
            err_gptq = (gq(x) - ref).pow(2).mean()
            err_rtn = (rq(x) - ref).pow(2).mean()
            assert err_gptq < 0.9 * err_rtn, (float(err_gptq), float(err_rtn))
    if desc_act and group_size != -1:  # act-order: g_idx is a permutation of the groups
        assert not torch.equal(g_idx, torch.arange(128, dtype=torch.int32) // group_size)
        assert torch.equal(g_idx.sort().values, torch.arange(128, dtype=torch.int32) // group_size)


def test_float_targets_fit_the_float_models_output():
    linear, calib, _ = _layer_and_inputs()
    g = torch.Generator().manual_seed(5)
    drift = lambda x: x + 0.3 * torch.randn(x.shape, generator=g) * x.std(0)  # noqa: E731
    stats = Hessian(128, torch.device("cpu"), float_inputs=True)
    calib_q = drift(calib)  # what the layer sees in the quantized model
    for xq, xf in zip(calib_q.split(256), calib.split(256), strict=True):
        stats.add(xq, xf)
    target = float_target(linear.weight.detach(), stats, 0.01)

    def error(w, x_fp, x_q):  # |W x_fp - Q x_q|^2 with Q from GPTQ on w
        q, s, z, g_idx = gptq(w, stats.H, 4, 32, False, False, 0.01, 128)
        layer = QuantLinear.from_ints(q, s, z, g_idx, 4, 32, sym=False)
        with torch.no_grad():
            return (linear(x_fp) - layer(x_q)).pow(2).mean()

    assert error(target, calib, calib_q) < 0.7 * error(linear.weight.detach(), calib, calib_q)


def test_hessian_is_the_running_mean_of_2xxT():
    x = torch.randn(3, 10, 16)
    H = Hessian(16, torch.device("cpu"))
    H.add(x[:1])
    H.add(x[1:])
    flat = x.reshape(-1, 16)
    torch.testing.assert_close(H.H, 2 * flat.t() @ flat / flat.shape[0])


def test_grid_zero_points_fit_gptq_v1():
    w = torch.tensor([[0.0, 0.1, 0.2, 0.3], [-1.0, -0.5, 0.0, 0.5]])
    scale, zero = grid(w, 4, sym=False)
    assert zero.min() >= 1  # v1 stores zero - 1: a zero point of 0 would wrap
    assert torch.equal(scale, scale.half().float())  # exactly what the checkpoint stores
    scale, zero = grid(w, 4, sym=True)
    assert zero.tolist() == [8.0, 8.0]


def _logit_error(engine, reference):
    ids = torch.tensor([list(HELDOUT.read_bytes()[:200])])
    with torch.no_grad():
        return (engine.logits(ids) - reference).pow(2).mean().item()


def test_gptq_beats_rtn_on_a_tiny_model():
    common = ["model=tiny", "quant.bits=4", "quant.group_size=32", "quant.sym=false"]
    fp = plugformer.Engine.from_overrides(["model=tiny"])
    ids = torch.tensor([list(HELDOUT.read_bytes()[:200])])
    reference = fp.logits(ids)
    rtn_engine = plugformer.Engine.from_overrides([*common, "quant=rtn"])
    gptq_engine = plugformer.Engine.from_overrides(
        [*common, "quant=gptq", "quant.nsamples=16", "quant.seqlen=128", "quant.desc_act=true"]
    )
    layers = [m for m in gptq_engine.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 2 * 7 and all(m.desc_act and not m.sym for m in layers)
    assert _logit_error(gptq_engine, reference) < 0.8 * _logit_error(rtn_engine, reference)


def test_calibration_windows_are_seeded_and_sized():
    tok = ByteTokenizer()
    a = calibration_samples(tok, CalibrationRequest(None, 5, 64, seed=1), 256)
    b = calibration_samples(tok, CalibrationRequest(None, 5, 64, seed=1), 256)
    assert len(a) == 5 and all(t.shape == (1, 64) for t in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    short = calibration_samples(tok, CalibrationRequest(str(HELDOUT), 2, 10_000), 256)
    assert all(t.shape == (1, 256) for t in short)  # capped by the model's context


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["quant=gptq", "quant.bits=5"], "quant.bits=5 is not supported (supported: 2, 3, 4, 8)"),
        (["quant=rtn", "quant.group_size=48"],
         "layer layers.*.attn.wq/wk/wv (in_features=64): group_size=48 does not divide "
         "in_features=64"),
        (["quant=gptq", "quant.damp_percent=1.5"], "quant.damp_percent=1.5 must be in (0, 1)"),
        (["quant=gptq", "quant.nsamples=0"], "quant.nsamples=0 must be positive"),
        (["quant=gptq", "quant.calibration=/nonexistent.txt"], "is not a file"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_before_any_weights(overrides, message):
    with pytest.raises(RefusedError) as info:
        plugformer.Engine.from_overrides(["model=tiny", *overrides])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_group_size_refusal_names_what_would_work():
    with pytest.raises(RefusedError, match=r"values that divide every layer: 16, 32, 64, -1"):
        plugformer.Engine.from_overrides(["model=tiny", "quant=rtn", "quant.group_size=128"])


def test_gptq_needs_calibration_from_the_python_api():
    engine = plugformer.Engine.from_overrides(["model=tiny"])
    from plugformer.plugins.quant.gptq import GPTQ, GPTQConfig

    with pytest.raises(ConfigError, match="needs calibration token ids"):
        GPTQ(GPTQConfig(group_size=32), engine.spec).quantize(engine.model, None)
