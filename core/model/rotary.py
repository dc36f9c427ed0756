"""What every rotary positional plugin shares (RoFormer, Su et al., 2021, arXiv:2104.09864).

A rotary plugin only chooses its inverse frequencies (and, for YaRN, a factor on cos and sin);
the rotation of q and k is here, so the RoPE variants (``rope``, ``rope_linear``,
``rope_dynamic``, ``rope_yarn``, ``rope_llama3``) differ in one method and rotate alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core.interfaces.positional import PositionalConfig, PositionalDims


@dataclass
class RotaryConfig(PositionalConfig):
    """Fields of every rotary plugin's config."""

    theta: float = 10000.0  # the base of the frequencies (HF ``rope_theta``)
    rotary_dim: int | None = None  # rotate only the first features of each head; None: all
    interleaved: bool = False  # pair (2i, 2i+1) (GPT-J) instead of (i, i + d/2) (Llama, NeoX)


def default_inv_freq(theta: float | torch.Tensor, dim: int) -> torch.Tensor:
    """``1 / theta^(2i/dim)`` for i < dim/2, float32, computed as transformers does."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (theta**exponents)


class Rotary(nn.Module):
    """Rotary position embedding with inverse frequencies from :meth:`frequencies`.

    Subclasses override :meth:`frequencies` (fixed frequencies) or :meth:`inv_freq_for`
    (frequencies that depend on the positions of a forward pass), and may set
    ``attention_factor`` (multiplies cos and sin).
    """

    attention_factor: float = 1.0

    def __init__(self, config: RotaryConfig, dims: PositionalDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.rotary_dim = config.rotary_dim if config.rotary_dim is not None else dims.head_dim
        self.inv_freq: torch.Tensor
        inv_freq = torch.ones(1) if self.check() else self.frequencies()  # refused: see check
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    # -- what a variant chooses ------------------------------------------------------------
    def frequencies(self) -> torch.Tensor:
        """The inverse frequencies [rotary_dim / 2], float32."""
        return default_inv_freq(float(self.config.theta), self.rotary_dim)

    def inv_freq_for(self, positions: torch.Tensor) -> torch.Tensor:
        """The inverse frequencies for one forward pass over ``positions`` [B, S]."""
        return self.inv_freq

    def extra_reasons(self) -> list[str]:
        """A variant's own reasons it cannot run (its scaling fields)."""
        return []

    # -- the shared part -------------------------------------------------------------------
    def check_rotary(self) -> list[str]:
        reasons = []
        rd = self.rotary_dim
        if not isinstance(rd, int) or rd <= 0 or rd % 2 or rd > self.dims.head_dim:
            reasons.append(
                f"positional.rotary_dim={rd} must be even, positive and at most "
                f"head_dim={self.dims.head_dim}"
            )
        if not self.config.theta > 0:
            reasons.append(f"positional.theta={self.config.theta} must be positive")
        return reasons

    def check(self) -> list[str]:
        return self.check_rotary() or self.extra_reasons()

    def prepare(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [B, S] -> cos, sin: [B, 1, S, rd/2] in float32 (interleaved); for halves
        # [B, 1, S, rd]: (cos, cos) and (-sin, sin), so that one roll of the features does the
        # rotation (x1 * cos + x2 * -sin is exactly x1 * cos - x2 * sin)
        inv_freq = self.inv_freq_for(positions).to(positions.device)
        angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [B, S, rd/2]
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        if not self.config.interleaved:
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def _rotate_one(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [B, H, S, D]
        rd = self.rotary_dim
        rot = x if rd == x.shape[-1] else x[..., :rd]
        if rot.dtype != torch.float32:
            rot = rot.float()
        if self.config.interleaved:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]  # [B, H, S, rd/2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:  # (x1, x2) -> (x1 * cos - x2 * sin, x2 * cos + x1 * sin)
            out = rot * cos + rot.roll(rd // 2, dims=-1) * sin
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return torch.cat((out, x[..., rd:]), dim=-1) if rd < x.shape[-1] else out

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = state
        return self._rotate_one(q, cos, sin), self._rotate_one(k, cos, sin)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None
