"""A frozen linear layer with adapters: ``AdaptedLinear(base)`` runs ``base`` and then the
adapter layers the model's :class:`Routing` selects.

Routing is shared by every adapted layer of a model: ``routing.active`` names the adapters
applied to every row (training, or ``generate(adapter="name")``), or ``routing.rows`` gives one
adapter name (or None: the base alone) per batch row, so a batch mixes adapters and each row
computes exactly what it would alone.

With gradients on, a quantized base runs through :func:`plugformer.core.quant.grad.quant_linear`
(no dense weight); without, through its own kernel, unless ``routing.sliced`` is set (the
trainer sets it: evaluating a QLoRA run must not build float32 kernels, which would hold a
dense copy of every layer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from plugformer.core.quant.grad import quant_linear
from plugformer.core.quant.linear import QuantLinear


@dataclass
class Routing:
    """Which adapters run: ``active`` on every row, or one name per row in ``rows``."""

    active: list[str] = field(default_factory=list)
    rows: list[str | None] | None = None
    sliced: bool = False  # quantized bases always through the sliced matmul (training)

    @contextlib.contextmanager
    def use(self, active: list[str], rows: list[str | None] | None = None) -> Iterator[None]:
        """Route as given inside the block, then as before."""
        saved = (self.active, self.rows)
        self.active, self.rows = list(active), rows
        try:
            yield
        finally:
            self.active, self.rows = saved


class AdaptedLinear(nn.Module):
    """``base`` (frozen) followed by its adapter layers, by adapter name."""

    def __init__(self, base: nn.Module, routing: Routing) -> None:
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.routing = routing
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return int(self.base.in_features)  # type: ignore[arg-type]

    @property
    def out_features(self) -> int:
        return int(self.base.out_features)  # type: ignore[arg-type]

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, QuantLinear) and (torch.is_grad_enabled() or self.routing.sliced):
            return quant_linear(self.base, x)
        out: torch.Tensor = self.base(x)
        return out

    def _run_adapter(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        adapter = self.adapters[name]
        dtype = next(adapter.parameters()).dtype
        y: torch.Tensor = adapter(x.to(dtype), out.to(dtype), self.base)
        return y.to(out.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        out = self.base_forward(x)
        rows = self.routing.rows
        if rows is None:
            for name in self.routing.active:
                if name in self.adapters:
                    out = self._run_adapter(name, x, out)
            return out
        if len(rows) != x.shape[0]:
            raise ValueError(f"adapter routing names {len(rows)} rows, the batch has {x.shape[0]}")
        mixed = out.clone()
        for name in dict.fromkeys(r for r in rows if r is not None and r in self.adapters):
            index = torch.tensor([i for i, r in enumerate(rows) if r == name], device=x.device)
            mixed[index] = self._run_adapter(name, x[index], out[index])
        return mixed
