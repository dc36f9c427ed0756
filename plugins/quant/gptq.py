"""GPTQ: accurate post-training quantization for generative pre-trained transformers
(Frantar, Ashkboos, Hoefler and Alistarh, 2022, arXiv:2210.17323).

Each linear layer ``W`` [out, in] is quantized one input column at a time; the rounding error of
a column is spread over the columns not yet quantized, weighted by the inverse Hessian of the
layer's reconstruction error ``H = 2 X X^T`` (``X``: the layer's calibration inputs). As in the
reference implementation:

* ``H`` is dampened by ``damp_percent`` of its mean diagonal, inverted through its Cholesky
  factor, and the upper Cholesky factor of ``H^-1`` drives the updates (retried with 10x the
  dampening when it is not positive definite);
* columns go in blocks of ``block_size`` (lazy batch updates: the rest of ``W`` is updated once
  per block);
* group-wise grids (``group_size``) are fitted when the quantization reaches a group's first
  column, on the error-corrected weights; ``-1`` fits one grid per output channel up front;
* ``desc_act`` (act-order) quantizes columns by decreasing Hessian diagonal; groups follow that
  order, and ``g_idx`` maps each input feature to its group;
* layers are quantized block by block, each on the inputs it gets from the already quantized
  layers before it, q/k/v and gate/up together (``true_sequential``;
  :func:`plugformer.core.quant.calibrate.quantize_sequentially`).

Two refinements, on by default because they lower SmolLM2's perplexity (see
``benchmarks/quant_quality.py``): ``mse`` clips each group's grid by the search of the
reference's ``--mse`` option, and ``gptaq_alpha`` fits each layer to the float model's output
(on the float model's inputs) rather than to its own float weights on the quantized model's
inputs -- GPTAQ's asymmetric objective (Li et al., 2025, arXiv:2504.02692), solved here by
moving the target weight to its least-squares optimum before the GPTQ pass
(:func:`float_target`), which costs a second, float, calibration stream.

Calibration: ``nsamples`` windows of ``seqlen`` tokens from a text file (``calibration``) or the
built-in English text. Output: the GPTQ checkpoint layout (``plugformer quantize`` saves it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from plugformer.core import hookimpl
from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.quant import QuantConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.memory import release_free_memory
from plugformer.core.quant.calibrate import (
    CalibrationRequest,
    calibration_problems,
    check_model,
    quantize_sequentially,
    settings_problems,
    spec_in_features,
)
from plugformer.core.quant.grid import grid, quantize_ints
from plugformer.core.quant.linear import QuantLinear


@dataclass
class GPTQConfig(QuantConfig):
    name: str = "gptq"
    bits: int = 4  # 2, 3, 4 or 8
    group_size: int = 128  # -1: one grid per output channel
    sym: bool = False  # asymmetric grids (zero points) fit SmolLM2 better; true: zero 2^(b-1)
    desc_act: bool = True  # act-order: columns by decreasing Hessian diagonal, with g_idx
    damp_percent: float = 0.1  # of the mean Hessian diagonal (transformers' default)
    mse: bool = True  # clip each group's range by grid search (GPTQ's --mse)
    gptaq_alpha: float = 0.5  # weight of GPTAQ's float-output target (0: plain GPTQ)
    block_size: int = 128  # columns per lazy batch update
    calibration: str | None = None  # a UTF-8 text file; None: the built-in English text
    nsamples: int = 32
    seqlen: int = 512
    seed: int = 0


class Hessian:
    """Running ``H = 2/n * sum(x x^T)`` over the calibration inputs ``x`` of one layer and,
    given the float model's inputs ``x_fp`` too, ``C = 2/n * sum((x_fp - x) x^T)``."""

    def __init__(self, columns: int, device: torch.device, float_inputs: bool = False) -> None:
        self.H = torch.zeros(columns, columns, device=device)
        self.C = torch.zeros(columns, columns, device=device) if float_inputs else None
        self.count = 0

    def add(self, x: torch.Tensor, x_fp: torch.Tensor | None = None) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # [tokens, in]
        n = x.shape[0]
        keep = self.count / (self.count + n)
        self.count += n
        a = math.sqrt(2 / self.count)
        self.H *= keep
        self.H += (a * x).t() @ (a * x)
        if self.C is not None and x_fp is not None:
            self.C *= keep
            self.C += (a * (x_fp.reshape(-1, x.shape[-1]).float() - x)).t() @ (a * x)


def float_target(
    W: torch.Tensor, stats: Hessian, damp_percent: float, alpha: float = 1.0
) -> torch.Tensor:
    """The weight whose output on the quantized model's inputs best matches the float layer's
    output on the float model's inputs: ``W + alpha * W C H^-1`` (least squares, ``H``
    dampened). With ``alpha=1`` GPTQ on it minimises ``|W X_fp - Q X|^2``, the asymmetric
    calibration objective of GPTAQ (Li et al., 2025, arXiv:2504.02692), instead of
    ``|(W - Q) X|^2``; a smaller ``alpha`` shrinks the correction, which few calibration tokens
    estimate noisily (0.5 gave SmolLM2 the lowest perplexity)."""
    assert stats.C is not None
    H = stats.H.double()
    damp = damp_percent * float(torch.diag(H).mean())
    if damp == 0:
        return W
    L, info = torch.linalg.cholesky_ex(
        H + damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    )
    if int(info):
        return W
    WC = W.double() @ stats.C.double()  # [out, in]
    return (W.double() + alpha * torch.cholesky_solve(WC.t(), L).t()).float()


def inverse_cholesky(H: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1`` (float64 inside)."""
    H64 = H.double()
    damp = damp_percent * float(torch.diag(H64).mean())
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(
            H64 + damp * torch.eye(H.shape[0], dtype=H64.dtype, device=H.device)
        )
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U.float()
        damp *= 10
    raise ConfigError("quant.damp_percent: the Hessian stays singular even dampened 10^8 times")


def gptq(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    desc_act: bool,
    damp_percent: float,
    block_size: int,
    mse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``W`` [out, in] against Hessian ``H`` [in, in]: integers [out, in], scales and
    zero points [groups, out], ``g_idx`` [in]."""
    W = W.detach().float().clone()
    H = H.clone()
    n = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = None
    if desc_act:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = inverse_cholesky(H, damp_percent)
    gs = n if group_size == -1 else group_size
    block = max(block_size // gs, 1) * gs if gs < n else block_size  # groups never straddle
    Q = torch.zeros_like(W)
    scales = torch.zeros(n // gs, W.shape[0], device=W.device)
    zeros = torch.zeros_like(scales)
    s, z = grid(W, bits, sym, mse) if group_size == -1 else (scales[0], zeros[0])
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size != -1 and col % gs == 0:
                s, z = grid(W1[:, i : i + gs], bits, sym, mse)
                scales[col // gs], zeros[col // gs] = s, z
            w = W1[:, i]
            q = quantize_ints(w, s, z, bits)
            Q[:, col] = q
            err = (w - s * (q - z)) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if group_size == -1:
        scales[0], zeros[0] = s, z
    g_idx = torch.arange(n, device=W.device) // gs
    if perm is not None:
        invperm = torch.argsort(perm)
        Q, g_idx = Q[:, invperm], g_idx[invperm]
    return Q.to(torch.int32), scales, zeros, g_idx.to(torch.int32)


class GPTQ:
    """GPTQ (2, 3, 4, 8 bits; group-wise or per channel; act-order), calibrated layer by layer."""

    def __init__(self, config: GPTQConfig, spec: ModelSpec) -> None:
        self.config = config
        self.spec = spec
        self.calibration = CalibrationRequest(
            config.calibration, config.nsamples, config.seqlen, config.seed
        )

    def check(self) -> list[str]:
        c = self.config
        problems = settings_problems(c.bits, c.group_size, spec_in_features(self.spec))
        if not 0 < c.damp_percent < 1:
            problems.append(f"quant.damp_percent={c.damp_percent} must be in (0, 1)")
        if not 0 <= c.gptaq_alpha <= 1:
            problems.append(f"quant.gptaq_alpha={c.gptaq_alpha} must be in [0, 1]")
        if c.block_size <= 0:
            problems.append(f"quant.block_size={c.block_size} must be positive")
        return problems + calibration_problems(self.calibration)

    def _solve(self, path: str, linear: nn.Linear, stats: Hessian) -> QuantLinear:
        c = self.config
        weight = linear.weight.detach().float()
        if stats.C is not None:
            weight = float_target(weight, stats, c.damp_percent, c.gptaq_alpha)
        q, scales, zeros, g_idx = gptq(
            weight, stats.H, c.bits, c.group_size, c.sym, c.desc_act,
            c.damp_percent, c.block_size, c.mse,
        )  # fmt: skip
        return QuantLinear.from_ints(
            q, scales, zeros, g_idx, c.bits, c.group_size, linear.bias,
            sym=c.sym, desc_act=c.desc_act,
        )  # fmt: skip

    def quantize(
        self, model: torch.nn.Module, calibration: list[torch.Tensor] | None = None
    ) -> torch.nn.Module:
        c = self.config
        if not calibration:
            raise ConfigError(
                "quant=gptq: quantize(model, calibration) needs calibration token ids "
                "(a list of [1, seq] tensors); the engine passes them from quant.calibration"
            )
        check_model(model, c.bits, c.group_size)
        gs = "per-channel" if c.group_size == -1 else f"g{c.group_size}"
        start = time.perf_counter()
        quantize_sequentially(
            model,
            calibration,
            lambda linear: Hessian(linear.in_features, linear.weight.device, c.gptaq_alpha > 0),
            self._solve,
            label=f"gptq {c.bits}-bit {gs}{' act-order' if c.desc_act else ''}",
            float_inputs=c.gptaq_alpha > 0,
        )
        self.seconds = time.perf_counter() - start  # read by `plugformer quantize`
        release_free_memory()  # the float weights and the rounding's temporaries
        return model


@hookimpl
def plugformer_register(registry):
    registry.register("quant", "gptq", GPTQ, GPTQConfig)
