"""plugformer's native CPU library: compiled on first use, cached.

``core/native/qmatmul.c`` is the quantized matmul (:mod:`plugformer.core.quant.kernels`),
``core/native/attention.c`` the fused decode step of rotary attention
(:mod:`plugformer.core.model.decode_step`). The C sources ship in the package. The first
process that needs them compiles them with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) for this machine's CPU (``-O3 -march=native -fopenmp``, about a second)
into ``$PLUGFORMER_CACHE/kernels/<hash>/`` (the hash covers the sources, the compiler's
version and the CPU's flags), written to a temporary name and renamed, so concurrent
processes (torchrun ranks) never load a partial file. Later processes load the cached library.

The library uses OpenMP from ``libgomp.so.1``: on Linux torch has already loaded its own
``libgomp.so.1``, which the dynamic linker reuses, so the kernel shares torch's thread pool
instead of starting a second one. Each call passes ``torch.get_num_threads()``.

``PLUGFORMER_NATIVE=0`` switches it off (``available()`` then says why). Without a compiler,
or on a CPU without AVX-512 VNNI, :func:`available` gives the reason, the quantized layers keep
torch's kernels (``core/quant/kernels.py``) and attention its ordinary path; :func:`load` with
``portable=True`` builds the same matmul arithmetic as plain C (any CPU: the tests compare
both builds).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

from plugformer.core.errors import PlugformerError
from plugformer.core.fetch import cache_dir

SOURCES = ("qmatmul.c", "attention.c")
ENV_SWITCH = "PLUGFORMER_NATIVE"
ABI = 2  # pf_abi() of the source this module drives


class NativeKernelError(PlugformerError, RuntimeError):
    """The native kernel could not be compiled or loaded (the message says why)."""


class Layer(ctypes.Structure):
    """``pf_layer`` of the C source: one quantized linear layer's packed arrays."""

    _fields_ = (
        ("w", ctypes.c_void_p),
        ("s", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("perm", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("group", ctypes.c_int64),
        ("bits", ctypes.c_int32),
        ("o_f32", ctypes.c_int32),
    )


class Decode(ctypes.Structure):
    """``pf_decode`` of ``core/native/attention.c``: one fused attention decode step."""

    _fields_ = (
        *((name, ctypes.c_void_p) for name in ("q", "k", "v")),
        *((name, ctypes.c_int64) for name in ("q_sb", "k_sb", "v_sb")),
        *((name, ctypes.c_void_p) for name in ("cos", "sin", "kc", "vc", "bias")),
        ("bias_sb", ctypes.c_int64),
        ("out", ctypes.c_void_p),
        *((n, ctypes.c_int64) for n in ("b", "hq", "hkv", "d", "rd", "cap", "slot", "filled")),
        ("scale", ctypes.c_float),
    )


def _compiler() -> str | None:
    env = os.environ.get("CC")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    return next((p for c in ("cc", "gcc", "clang") if (p := shutil.which(c))), None)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _version(cc: str) -> str:
    try:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeKernelError(f"the C compiler {cc} does not run: {exc}") from None
    return run.stdout


def _build(portable: bool) -> Path:
    """The compiled library's path (compiled now if not cached)."""
    package = resources.files("plugformer.core.native")
    sources = {name: (package / name).read_bytes() for name in SOURCES}
    cc = _compiler()
    if cc is None:
        raise NativeKernelError("no C compiler found (set CC, or install gcc)")
    # -ffp-contract=off: a * b + c rounds twice, as torch's elementwise ops (the rotary
    # embedding is bit-equal to torch's); the matmul's explicit FMA intrinsics are unaffected
    flags = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
    flags.append("-std=c11")
    if portable:
        flags.append("-DPF_PORTABLE")
    key = hashlib.sha256(
        b"\0".join(
            [
                *sources.values(),
                _version(cc).encode(),
                _cpu_flags().encode(),
                " ".join(flags).encode(),
            ]
        )
    ).hexdigest()[:16]
    folder = cache_dir() / "kernels" / key
    target = folder / ("qmatmul_portable.so" if portable else "qmatmul.so")
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(dir=folder)
    except OSError as exc:
        raise NativeKernelError(f"cannot write the kernel cache {folder}: {exc}") from None
    with work as tmp:
        paths = []
        for name, text in sources.items():
            paths.append(str(Path(tmp) / name))
            Path(paths[-1]).write_bytes(text)
        out = Path(tmp) / target.name
        try:
            run = subprocess.run(
                [cc, *flags, *paths, "-o", str(out), "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeKernelError(f"compiling the native kernels with {cc}: {exc}") from None
        if run.returncode != 0:
            first = (run.stderr.strip().splitlines() or ["(no message)"])[0]
            raise NativeKernelError(f"compiling the native kernels with {cc}: {first}")
        os.replace(out, target)
    return target


@cache
def load(portable: bool = False) -> ctypes.CDLL:
    """The kernel library (compiled on first use; ``portable``: without SIMD)."""
    import torch  # noqa: F401  (its libgomp is loaded first, so the kernel shares it)

    path = _build(portable)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeKernelError(f"loading the native kernel {path} failed: {exc}") from None
    if lib.pf_abi() != ABI:
        raise NativeKernelError(f"{path} is built from another version of {SOURCES[0]}")
    lib.pf_qlinear.argtypes = [
        ctypes.POINTER(Layer),
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.pf_qlinear.restype = ctypes.c_int
    lib.pf_decode_attention.argtypes = [ctypes.POINTER(Decode), ctypes.c_int]
    lib.pf_decode_attention.restype = ctypes.c_int
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.pf_rmsnorm.argtypes = [ptr, ptr, ptr, i64, i64, ctypes.c_float]
    lib.pf_rmsnorm.restype = None
    return lib


@cache
def unavailable_reason() -> str | None:
    """Why the fast native kernel cannot run here (None when it can); the first call
    compiles it."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"switched off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    if platform.system() != "Linux":
        return f"only built on Linux (this is {platform.system()})"
    try:
        lib = load()
    except NativeKernelError as exc:
        return str(exc)
    if not lib.pf_simd():
        return "this CPU or compiler has no AVX-512 VNNI (the portable build is slower than torch)"
    return None


def available() -> bool:
    """Whether quantized layers can use the native kernel on this machine."""
    return unavailable_reason() is None
