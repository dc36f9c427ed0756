"""Resident memory of this process: reading it, and giving freed memory back to the system.

Loading a model makes and frees many temporaries (dequantized blocks, casts, packed kernel
copies). glibc's allocator keeps freed heap memory for reuse, so without help the process's
resident set stays at its loading high-water mark; :func:`release_free_memory` hands it back
(``malloc_trim``). Mapped checkpoint pages that were copied from are dropped from the resident
set with :func:`drop_mapped_pages` (they stay in the page cache, not in this process).

``marks`` records named resident sizes (MB) at points of loading, for ``plugformer bench``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import resource
import sys
from collections.abc import Iterable
from functools import cache

import torch

from plugformer.core.interfaces.capability import capability
from plugformer.core.interfaces.quant import LAYER_CAPABILITIES

#: named resident sizes in MB recorded during loading (``baseline_rss_mb``: right before the
#: first weight is read); a process-wide record, like the resident set itself
marks: dict[str, float] = {}
_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float:
    """The current resident set size in MB (Linux; the peak elsewhere)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """The resident high-water mark in MB since start or the last :func:`reset_peak`."""
    kib, now = _status_kib("VmHWM"), _status_kib("VmRSS")
    if kib is not None:  # the kernel updates the mark lazily: it can lag the current size
        return max(kib, now or 0) / 1024
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024  # KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak() -> bool:
    """Restart the high-water mark from the current resident size (Linux
    ``/proc/self/clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def mark(name: str) -> None:
    """Record the current resident size under ``name`` in :data:`marks`."""
    marks[name] = round(rss_mb(), 1)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view counts its whole storage,
    shared storages count once): what keeping these tensors alive costs."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if t.device.type != "meta" and key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of all weights as loaded, the part kept by quantized kernels): the distinct
    storages of parameters, buffers and the copies kernels keep (modules with
    ``kernel_tensors()``, e.g. :class:`~plugformer.core.quant.linear.QuantLinear`)."""
    state = [*model.parameters(), *model.buffers()]
    kernels: list[torch.Tensor] = []
    for m in model.modules():
        held = capability(m, LAYER_CAPABILITIES, "kernel_tensors")
        if callable(held):
            kernels += held()
    total = tensor_bytes([*state, *kernels])
    return total, total - tensor_bytes(state)


def report(
    model: torch.nn.Module, baseline_mb: float, load_peak_mb: float, one_seq_peak_mb: float
) -> dict[str, float]:
    """The memory fields of ``plugformer bench`` (see :mod:`plugformer.core.commands.bench`); the
    ratios are taken in bytes (resident sizes are in MiB, weights in MB). ``one_seq_peak_mb``
    is the high-water mark before the batched run (load, prefill, one sequence's decode)."""
    total, kernels = weight_bytes(model)
    peak = peak_rss_mb()
    weights = total / 2**20 or 1.0  # MiB, like the resident sizes
    return {
        "weights_mb": round(total / 1e6, 1),
        "kernel_copies_mb": round(kernels / 1e6, 1),
        "baseline_rss_mb": round(baseline_mb, 1),
        "load_peak_rss_mb": round(load_peak_mb, 1),
        "one_seq_peak_rss_mb": round(one_seq_peak_mb, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_over_weights": round(peak / weights, 2),
        "one_seq_peak_above_baseline_over_weights": round(
            (one_seq_peak_mb - baseline_mb) / weights, 2
        ),
        "peak_above_baseline_over_weights": round((peak - baseline_mb) / weights, 2),
    }


@cache
def _malloc_trim() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_free_memory() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)  # type: ignore[operator]


def drop_mapped_pages(mm: mmap.mmap | None) -> None:
    """Drop the resident pages of a private file map (``ACCESS_COPY``) from this process.

    Only while no one has written to the map (during loading): an unwritten private page is
    the file's page, and tensors still viewing the map read the same bytes again from the file
    on their next access; a written one would lose its changes. A no-op where ``madvise`` is
    missing."""
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed map, or a kernel that refuses: nothing dropped
        return
