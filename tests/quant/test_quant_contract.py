"""A third-party quantizer in contract 2.0: its layers, of its own class, declare
``quantized_weights()`` and become the core's QuantLinear (saved by ``plugformer quantize``, cut
by tensor parallelism, run by the core's kernels); without it, saving is refused naming the
class instead of claiming that nothing was quantized."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import plugformer
from plugformer.core import QuantConfig, loader
from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.quant import QuantizedWeights
from plugformer.core.model.save import save_decoder
from plugformer.core.parallel.tensor import cut_linear
from plugformer.core.quant.linear import QuantLinear
from plugformer.core.quant.save import save_quantized

IDS = torch.randint(0, 258, (2, 10), generator=torch.Generator().manual_seed(3))


class Int4Linear(nn.Module):
    """A plain asymmetric int4 layer, groups of 32, written as an author would."""

    def __init__(self, linear: nn.Linear, export: bool) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        out_f, in_f = w.shape
        g = w.view(out_f, in_f // 32, 32)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-8).half().float()  # [out, groups]
        zero = torch.round(-lo / scale).clamp(0, 15)
        q = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], 0, 15)
        self.in_features, self.out_features = in_f, out_f
        self.register_buffer("q", q.view(out_f, in_f).to(torch.uint8))
        self.register_buffer("scale", scale.t().contiguous())  # [groups, out]
        self.register_buffer("zero", zero.t().contiguous())  # [groups, out]
        self.bias = linear.bias
        if export:
            self.quantized_weights = self._export

    def _weight(self) -> torch.Tensor:
        groups = torch.arange(self.in_features) // 32
        return (self.q.float() - self.zero[groups].t()) * self.scale[groups].t()  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self._weight().to(x.dtype), self.bias)

    def _export(self) -> QuantizedWeights:
        return QuantizedWeights(
            self.q.long(), self.scale, self.zero.long(), bits=4, group_size=32, bias=self.bias,
            sym=False,
        )  # fmt: skip


def _plugin(export: bool, config_class) -> types.ModuleType:
    name = "int4_export" if export else "int4_plain"
    Config = config_class(QuantConfig, name)

    class Int4:
        def __init__(self, config, spec):
            self.config = config

        def check(self):
            return []

        def quantize(self, model, calibration=None):
            for path, m in list(model.named_modules()):
                if isinstance(m, nn.Linear) and path.startswith("layers."):
                    parent, _, leaf = path.rpartition(".")
                    setattr(model.get_submodule(parent), leaf, Int4Linear(m, export))
            return model

    module = types.ModuleType(name)

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("quant", name, Int4, Config)

    module.plugformer_register = plugformer_register
    return module


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    engine = plugformer.Engine.from_overrides(["model=tiny"])
    return save_decoder(engine.model, tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def plugins(config_class):
    loader.reset()
    plugformer.register(_plugin(True, config_class))
    plugformer.register(_plugin(False, config_class))
    yield
    loader.reset()


def test_declared_layers_become_the_core_layer_with_the_same_output(tiny_dir, plugins):
    own = plugformer.Engine.from_overrides([f"model.path={tiny_dir}", "quant=int4_plain"])
    adopted = plugformer.Engine.from_overrides([f"model.path={tiny_dir}", "quant=int4_export"])
    assert any(isinstance(m, Int4Linear) for m in own.model.modules())
    layers = [m for m in adopted.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 2 * 7 and not any(
        isinstance(m, Int4Linear) for m in adopted.model.modules()
    )
    # the same weights, W = s * (q - z) in float32, multiplied by torch in another order
    torch.testing.assert_close(adopted.logits(IDS), own.logits(IDS), rtol=1e-5, atol=1e-5)
    half = cut_linear(layers[0], (0, layers[0].out_features // 2), None)  # tensor parallel's cut
    torch.testing.assert_close(
        half.dequantize(), layers[0].dequantize()[: layers[0].out_features // 2], rtol=0, atol=0
    )  # fmt: skip


def test_declared_layers_save_and_load_back(tiny_dir, plugins, tmp_path):
    engine = plugformer.Engine.from_overrides([f"model.path={tiny_dir}", "quant=int4_export"])
    out = save_quantized(engine, tmp_path / "q")
    loaded = plugformer.Engine.from_overrides([f"model.path={out}"])
    torch.testing.assert_close(loaded.logits(IDS), engine.logits(IDS), rtol=0, atol=0)


def test_undeclared_layers_are_refused_by_name_when_saving(tiny_dir, plugins, tmp_path):
    engine = plugformer.Engine.from_overrides([f"model.path={tiny_dir}", "quant=int4_plain"])
    with pytest.raises(
        ConfigError,
        match=r"cannot save 14 quantized layer\(s\) .*Int4Linear.*declare quantized_weights",
    ):
        save_quantized(engine, tmp_path / "q")
