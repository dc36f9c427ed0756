"""Megatron-style tensor parallelism (Shoeybi et al., 2019, arXiv:1909.08053) over a built
decoder, driven by a plan of module-path globs (see :mod:`plugformer.core.interfaces.parallel`).

* ``colwise``: a linear layer's output features are split; rank r keeps rows
  ``[r * out / n, (r + 1) * out / n)`` of its weight (and bias). No communication.
  The key and value projections of attention are split by KV head instead; when there are fewer
  KV heads than ranks, each KV head is replicated on the ranks whose query heads use it.
* ``rowwise``: the input features are split; each rank's partial output is summed with one
  all-reduce, then the bias is added once.
* ``vocab``: an embedding keeps its rank's rows of the vocabulary (tokens outside them embed to
  zero, then one all-reduce); a head computes its rank's logits, gathered over ranks.
* ``replicate``: kept whole (e.g. a mixture-of-experts router).

Quantized layers (:class:`~plugformer.core.quant.linear.QuantLinear`) are cut through their integer
weights, scales and zero points, so a shard dequantizes to the same values as the slice of the
whole layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from plugformer.core.errors import ConfigError
from plugformer.core.interfaces.parallel import STYLES
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.model.decoder import SelfAttention
from plugformer.core.parallel.distributed import all_gather_last, all_reduce
from plugformer.core.quant.linear import QuantLinear, swap_module

Range = tuple[int, int]


# -- refusals from the spec, before any weights exist ---------------------------------------
def spec_problems(spec: ModelSpec, n: int) -> list[str]:
    """Why ``spec`` cannot be split over ``n`` tensor-parallel ranks."""
    problems = []
    hq, hkv = spec.num_heads, spec.kv_heads
    if hq % n:
        problems.append(f"the model's {hq} attention heads are not divisible by parallel.size={n}")
    elif hkv % n and n % hkv:
        problems.append(
            f"the model's {hkv} KV heads can be neither split over nor replicated on "
            f"parallel.size={n} ranks (one of the two counts must divide the other)"
        )
    if spec.vocab_size % n:
        problems.append(
            f"the vocabulary of {spec.vocab_size} is not divisible by parallel.size={n}"
        )
    if spec.intermediate_size % n:
        problems.append(
            f"the MLP's {spec.intermediate_size} intermediate features are not divisible by "
            f"parallel.size={n}"
        )
    return problems


def local_heads(spec: ModelSpec, n: int) -> tuple[int, int]:
    """(query heads, KV heads) on each of ``n`` ranks."""
    return spec.num_heads // n, max(spec.kv_heads // n, 1)


# -- the plan ---------------------------------------------------------------------------------
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("\\.".join("[^.]+" if p == "*" else re.escape(p) for p in pattern.split(".")))


def match_plan(model: nn.Module, plan: dict[str, str]) -> dict[str, str]:
    """Module path -> style for every module of ``model`` a plan entry matches."""
    bad = {k: v for k, v in plan.items() if v not in STYLES}
    if bad:
        k, v = next(iter(bad.items()))
        raise ConfigError(f"tensor-parallel plan: {k!r} has style {v!r}, not one of {STYLES}")
    compiled = [(_glob(k), v) for k, v in plan.items()]
    out: dict[str, str] = {}
    for path, _ in model.named_modules():
        for pattern, style in compiled:
            if pattern.fullmatch(path):
                out[path] = style
                break
    return out


def _linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for path, m in model.named_modules():
        if isinstance(m, (nn.Linear, QuantLinear)):
            yield path, m


# -- cutting one layer ------------------------------------------------------------------------
def cut_linear(m: nn.Module, out: Range | None, inp: Range | None, bias: bool = True) -> nn.Module:
    """A new layer holding output features ``out`` and input features ``inp`` of ``m`` (an
    ``nn.Linear`` or ``QuantLinear``; None: all), with its bias cut too, or dropped."""
    if isinstance(m, nn.Linear):
        w = m.weight.detach()  # [out, in]
        w = w if out is None else w[out[0] : out[1]]
        w = w if inp is None else w[:, inp[0] : inp[1]]
        b = m.bias.detach() if (bias and m.bias is not None) else None
        if b is not None and out is not None:
            b = b[out[0] : out[1]]
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        new.weight = nn.Parameter(w.clone(), requires_grad=False)
        if b is not None:
            new.bias = nn.Parameter(b.clone(), requires_grad=False)
        return new
    if isinstance(m, QuantLinear):
        return _cut_quant(m, out, inp, bias)
    raise ConfigError(f"tensor parallel cannot cut a {type(m).__name__}")


def _cut_quant(m: QuantLinear, out: Range | None, inp: Range | None, bias: bool) -> QuantLinear:
    q = m.int_weight().t()  # [out, in]
    zeros = m.offsets if m.zero_format == "float" else m.zero_points()  # [groups, out]
    scales, g_idx = m.scales, m.g_idx.long()  # [groups, out], [in]
    b = m.bias if bias else None
    if out is not None:
        q, scales, zeros = q[out[0] : out[1]], scales[:, out[0] : out[1]], zeros[:, out[0] : out[1]]
        b = b[out[0] : out[1]] if b is not None else None
    if inp is not None:
        i0, i1 = inp
        q, g_idx = q[:, i0:i1], g_idx[i0:i1]
        gs = m.group_size
        sequential = gs != -1 and bool(
            torch.equal(m.g_idx.long(), torch.arange(m.in_features, device=g_idx.device) // gs)
        )
        if sequential and i0 % gs == 0 and i1 % gs == 0:  # the shard's own groups only
            scales, zeros = scales[i0 // gs : i1 // gs], zeros[i0 // gs : i1 // gs]
            g_idx = g_idx - i0 // gs
        # otherwise (act-order, per channel): every group's scales stay, g_idx indexes them
    try:
        return QuantLinear.from_ints(
            q.contiguous(), scales, zeros, g_idx, m.bits, m.group_size, b,
            sym=m.sym, desc_act=m.desc_act, zero_format=m.zero_format,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(
            f"tensor parallel: a {m.bits}-bit layer of {m.in_features} -> {m.out_features} "
            f"features cannot be cut into {q.shape[1]} -> {q.shape[0]} ({exc})"
        ) from None


def even(size: int, rank: int, n: int, what: str) -> Range:
    if size % n:
        raise ConfigError(f"tensor parallel: {what} has {size} features, not divisible by {n}")
    step = size // n
    return rank * step, (rank + 1) * step


# -- sharded modules --------------------------------------------------------------------------
class RowParallel(nn.Module):
    """A layer over this rank's input features; partial outputs summed over ranks, then the
    bias added once."""

    def __init__(self, inner: nn.Module, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.inner = inner
        self.bias = (
            nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = all_reduce(self.inner(x))  # x: [..., in / n] -> [..., out]
        return y + self.bias if self.bias is not None else y


class VocabEmbedding(nn.Module):
    """This rank's rows ``[start, stop)`` of an embedding table; other ids embed to zero before
    the all-reduce that sums the ranks' lookups."""

    def __init__(self, weight: torch.Tensor, start: int, stop: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach()[start:stop].clone(), requires_grad=False)
        self.start, self.stop = start, stop

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        inside = (ids >= self.start) & (ids < self.stop)  # [B, S]
        local = (ids - self.start).masked_fill(~inside, 0)
        h = F.embedding(local, self.weight) * inside.unsqueeze(-1).to(self.weight.dtype)
        return all_reduce(h)  # [B, S, hidden]


class VocabHead(nn.Module):
    """This rank's logits (a layer over its slice of the vocabulary), gathered over ranks."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.inner.weight  # type: ignore[assignment]
        return weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return all_gather_last(self.inner(h))  # [B, S, vocab / n] -> [B, S, vocab]


# -- the whole model -------------------------------------------------------------------------
def shard_model(
    model: nn.Module, plan: dict[str, str], spec: ModelSpec, rank: int, n: int
) -> nn.Module:
    """Cut ``model`` (a built Decoder with weights) to rank ``rank`` of ``n`` following
    ``plan``; every linear layer must be covered by the plan."""
    styles = match_plan(model, plan)
    uncovered = [p for p, _ in _linears(model) if p not in styles]
    if uncovered:
        raise ConfigError(
            f"tensor parallel: the model's tensor-parallel plan does not cover "
            f"{', '.join(uncovered[:4])}{' ...' if len(uncovered) > 4 else ''}"
        )
    kv_paths = _attention_heads(model, spec, rank, n)
    head, embed = getattr(model, "head", None), getattr(model, "embed", None)
    tied = head is not None and embed is not None and head.weight is embed.weight
    for path, style in styles.items():
        m = model.get_submodule(path)
        if style == "replicate":
            continue
        if style == "vocab":
            _shard_vocab(model, path, m, rank, n)
        elif style == "colwise":
            out = kv_paths.get(path) or even(_out_features(m), rank, n, path)
            swap_module(model, path, cut_linear(m, out, None))
        else:  # rowwise
            inp = even(_in_features(m), rank, n, path)
            b = getattr(m, "bias", None)
            swap_module(model, path, RowParallel(cut_linear(m, None, inp, bias=False), b))
    if tied:  # one shard, shared as before
        head_inner = model.get_submodule("head.inner")
        head_inner.weight = model.get_submodule("embed").weight
    return model


def _out_features(m: nn.Module) -> int:
    return int(m.out_features)  # type: ignore[arg-type]


def _in_features(m: nn.Module) -> int:
    return int(m.in_features)  # type: ignore[arg-type]


def _shard_vocab(model: nn.Module, path: str, m: nn.Module, rank: int, n: int) -> None:
    if isinstance(m, nn.Embedding):
        start, stop = even(m.num_embeddings, rank, n, path)
        swap_module(model, path, VocabEmbedding(m.weight, start, stop))
    elif isinstance(m, (nn.Linear, QuantLinear)):
        out = even(_out_features(m), rank, n, path)
        swap_module(model, path, VocabHead(cut_linear(m, out, None)))
    else:
        raise ConfigError(f"tensor parallel: {path} ({type(m).__name__}) cannot be split by vocab")


def _attention_heads(model: nn.Module, spec: ModelSpec, rank: int, n: int) -> dict[str, Range]:
    """Swap each attention module for one computing ``rank``'s query heads; returns the
    output-feature ranges of its key and value projections (KV heads split or replicated)."""
    hq, hkv, d = spec.num_heads, spec.kv_heads, spec.dim_per_head
    q_local = hq // n
    if hkv >= n:
        k0, k1 = rank * (hkv // n), (rank + 1) * (hkv // n)
    else:  # replicated: the KV head of this rank's query heads
        k0 = rank // (n // hkv)
        k1 = k0 + 1
    ranges: dict[str, Range] = {}
    for path, m in list(model.named_modules()):
        if isinstance(m, SelfAttention):
            swap_module(model, path, m.for_heads((rank * q_local, (rank + 1) * q_local), k1 - k0))
            prefix = f"{path}." if path else ""
            ranges[prefix + "wk"] = ranges[prefix + "wv"] = (k0 * d, k1 * d)
    return ranges
