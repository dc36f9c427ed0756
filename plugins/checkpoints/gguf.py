"""GGUF checkpoint files, llama.cpp's single-file format (spec: ggml-org/ggml, docs/gguf.md).

Reads GGUF v2 and v3 (little-endian) with its own reader over ``mmap``: metadata of every value
type (nested arrays too), tensor infos and the aligned data section. F32, F16 and BF16 tensors
come memory-mapped in their own dtype; Q8_0, Q4_0 and Q4_1 blocks are dequantized to float32 on
load by vectorised torch code. The checkpoint speaks Hugging Face: ``hf_config`` is built from the
metadata, tensor names are transformers' names, and llama's q/k projections are un-permuted from
the interleaved-rope row order llama.cpp's converter writes.

Every declared count, length and size is checked against the real file size before it is used,
so a malformed file is a :class:`CheckpointError` naming the file and the field, never a crash,
a hang or an allocation sized by the file's claims.
"""

from __future__ import annotations

import itertools
import mmap
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from plugformer.core import hookimpl
from plugformer.core.checkpoint import CheckpointConfig
from plugformer.core.errors import CheckpointError
from plugformer.core.tokenizer import Tokenizer, gguf_tokenizer

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 had uint32 counts, v2 uint64 ones; v3 adds big-endian files
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 8
MAX_KEY_BYTES = 65535
INT64_MAX = 2**63 - 1

# Metadata value type id -> struct code; 7 (bool) is a byte that must be 0 or 1.
_SCALAR_CODES = {
    **{0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B"},
    **{10: "Q", 11: "q", 12: "d"},
}
_BOOL, _FLOAT32, _STRING, _ARRAY = 7, 6, 8, 9
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


@dataclass(frozen=True)
class GGMLType:
    """A tensor encoding this reader loads: ``block`` elements take ``block_bytes`` bytes."""

    name: str
    block: int
    block_bytes: int
    dtype: torch.dtype  # the dtype :meth:`GGUFFile.tensor` returns


GGML_TYPES: dict[int, GGMLType] = {
    0: GGMLType("F32", 1, 4, torch.float32),
    1: GGMLType("F16", 1, 2, torch.float16),
    30: GGMLType("BF16", 1, 2, torch.bfloat16),
    8: GGMLType("Q8_0", 32, 2 + 32, torch.float32),  # fp16 d, 32 x int8 q: d * q
    2: GGMLType("Q4_0", 32, 2 + 16, torch.float32),  # fp16 d, 32 nibbles: d * (q - 8)
    3: GGMLType("Q4_1", 32, 2 + 2 + 16, torch.float32),  # fp16 d, fp16 m, nibbles: d * q + m
}
# Other ggml types, named in the error for a tensor that uses one.
_OTHER_TYPE_NAMES = {
    **{6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K"},
    **{14: "Q6_K", 15: "Q8_K", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64"},
    **{28: "F64", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"},
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lies: ``ne`` fastest-first as in the file, ``offset`` from file start."""

    name: str
    ne: tuple[int, ...]
    type: GGMLType
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))  # torch order: ne[0] (the row length) is last


def _float32_repr(x: float) -> float:
    """The shortest decimal that is the same float32 (1e-05, not 9.999999747378752e-06)."""
    bits = struct.pack("<f", x)
    for digits in range(1, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack("<f", y) == bits:
            return y
    return x


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure names the file."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, msg: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: {msg}")

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def unpack(self, code: str, what: str) -> Any:
        n = struct.calcsize("<" + code)
        if n > self.remaining:
            self.fail(f"truncated: {what} at byte {self.pos} needs {n} bytes, file is {self.size}")
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, limit: int | None = None, ascii_only: bool = False) -> str:
        n = self.unpack("Q", f"{what} (string length)")
        if n > self.remaining:
            self.fail(f"{what}: string length {n} runs past the end ({self.remaining} bytes left)")
        if limit is not None and n > limit:
            self.fail(f"{what}: string length {n} exceeds the limit of {limit} bytes")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("ascii" if ascii_only else "utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what}: string is not valid {'ASCII' if ascii_only else 'UTF-8'}")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR_CODES:
            v = self.unpack(_SCALAR_CODES[vtype], what)
            if vtype == _BOOL:
                return self._bools([v], what)[0]
            return _float32_repr(v) if vtype == _FLOAT32 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what, depth)
        self.fail(f"{what}: unknown metadata value type {vtype}")

    def array(self, what: str, depth: int) -> list[Any]:
        if depth >= MAX_ARRAY_NESTING:
            self.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_NESTING} levels")
        etype = self.unpack("I", f"{what} (array element type)")
        n = self.unpack("Q", f"{what} (array length)")
        code = _SCALAR_CODES.get(etype)
        if code is not None:
            least = struct.calcsize("<" + code)
        elif etype in (_STRING, _ARRAY):
            least = 8 if etype == _STRING else 12  # a length, or an element type and a length
        else:
            self.fail(f"{what}: unknown array element type {etype}")
        if n > self.remaining // least:
            self.fail(
                f"{what}: array length {n} runs past the end of the file ({self.remaining} "
                f"bytes left, each element needs at least {least})"
            )
        if code is None:
            return [self.value(etype, f"{what}[{j}]", depth + 1) for j in range(n)]
        values = list(struct.unpack_from(f"<{n}{code}", self.buf, self.pos))
        self.pos += n * least
        return self._bools(values, what) if etype == _BOOL else values

    def _bools(self, values: list[int], what: str) -> list[Any]:
        if any(v > 1 for v in values):
            self.fail(f"{what}: a bool must be the byte 0 or 1")
        return [bool(v) for v in values]


class GGUFFile:
    """A parsed GGUF file: ``metadata`` and ``tensors`` (infos by GGUF name), data mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        except (OSError, ValueError) as e:  # missing, a directory, unmappable ...
            raise CheckpointError(f"{self.path}: cannot open as a GGUF file: {e}") from e
        if mm is None:
            raise CheckpointError(f"{self.path}: empty file, not GGUF")
        self._mm: mmap.mmap | None = mm
        try:
            self._parse(_Cursor(mm, self.path))
        except BaseException:
            mm.close()  # no tensor has been handed out yet
            self._mm = None
            raise

    def _parse(self, cur: _Cursor) -> None:
        if cur.buf[:4] != MAGIC:
            cur.fail(f"bad magic {bytes(cur.buf[:4])!r}, expected {MAGIC!r}: not a GGUF file")
        cur.pos = 4
        self.version: int = cur.unpack("I", "version")
        if self.version not in VERSIONS:
            if int.from_bytes(self.version.to_bytes(4, "little"), "big") in VERSIONS:
                cur.fail("big-endian GGUF files are not supported")
            cur.fail(f"unsupported GGUF version {self.version} (supported: 2, 3)")
        n_tensors = cur.unpack("Q", "tensor count")
        n_kv = cur.unpack("Q", "metadata key-value count")
        for count, what, least in (
            (n_kv, "metadata key-value count", _MIN_KV_BYTES),
            (n_tensors, "tensor count", _MIN_TENSOR_INFO_BYTES),
        ):
            if count > cur.remaining // least:
                cur.fail(
                    f"absurd {what} {count}: each entry needs at least {least} bytes and only "
                    f"{cur.remaining} bytes remain"
                )
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}  # key -> GGUF value type id
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", MAX_KEY_BYTES, ascii_only=True)
            if key in self.metadata:
                cur.fail(f"duplicate metadata key {key!r}")
            self.value_types[key] = cur.unpack("I", f"value type of metadata key {key!r}")
            self.metadata[key] = cur.value(self.value_types[key], f"metadata key {key!r}")
        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        a = self.alignment
        if type(a) is not int or a <= 0 or a % 8 or a & (a - 1):
            cur.fail(f"general.alignment={a!r} is not a power of two and a multiple of 8")
        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = cur.pos + (-cur.pos % a)  # the data section starts aligned
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, ne, gtype, rel, nbytes in infos:
            if name in self.tensors:
                cur.fail(f"duplicate tensor name {name!r}")
            start = self.data_offset + rel
            if start + nbytes > cur.size:
                cur.fail(
                    f"tensor {name!r}: data [{start}, {start + nbytes}) lies beyond the end of "
                    f"the file ({cur.size} bytes)"
                )
            self.tensors[name] = GGUFTensorInfo(name, ne, gtype, start, nbytes)
        laid = sorted((t for t in self.tensors.values() if t.nbytes), key=lambda t: t.offset)
        for prev, nxt in itertools.pairwise(laid):
            if nxt.offset < prev.offset + prev.nbytes:
                cur.fail(f"tensors {prev.name!r} and {nxt.name!r} overlap in the data section")

    def _tensor_info(self, cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], GGMLType, int, int]:
        name = cur.string(f"name of tensor #{i}")
        if not name:
            cur.fail(f"tensor #{i} has an empty name")
        n_dims = cur.unpack("I", f"tensor {name!r}: n_dims")
        if n_dims > MAX_DIMS:
            cur.fail(f"tensor {name!r}: n_dims={n_dims} exceeds the maximum of {MAX_DIMS}")
        ne = tuple(cur.unpack("Q", f"tensor {name!r}: dimension {d}") for d in range(n_dims))
        type_id = cur.unpack("I", f"tensor {name!r}: type")
        rel = cur.unpack("Q", f"tensor {name!r}: offset")
        numel = 1
        for n in ne:
            numel *= n
        if any(n > INT64_MAX for n in ne) or numel > INT64_MAX:
            cur.fail(f"tensor {name!r}: dimensions {list(ne)} overflow int64")
        gtype = GGML_TYPES.get(type_id)
        if gtype is None:
            label = _OTHER_TYPE_NAMES.get(type_id, "unknown")
            cur.fail(
                f"tensor {name!r} has type {label} (id {type_id}); supported: "
                + ", ".join(f"{t.name} ({k})" for k, t in GGML_TYPES.items())
            )
        if ne and ne[0] % gtype.block:
            cur.fail(
                f"tensor {name!r}: row length {ne[0]} is not a multiple of {gtype.name}'s "
                f"block of {gtype.block}"
            )
        nbytes = numel // gtype.block * gtype.block_bytes
        if nbytes > cur.size:
            cur.fail(
                f"tensor {name!r}: dimensions {list(ne)} need {nbytes} bytes of "
                f"{gtype.name}, more than the whole file ({cur.size} bytes)"
            )
        if rel % self.alignment:
            cur.fail(
                f"tensor {name!r}: data offset {rel} is misaligned (alignment {self.alignment})"
            )
        return name, ne, gtype, rel, nbytes

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor in torch order (``ne`` reversed): mapped for F32/F16/BF16, else float32."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        if self._mm is None:
            raise CheckpointError(f"{self.path}: the checkpoint is closed")
        gtype = info.type
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=gtype.dtype)
        if gtype.block == 1:
            count = info.nbytes // gtype.block_bytes
            flat = torch.frombuffer(self._mm, dtype=gtype.dtype, count=count, offset=info.offset)
            return flat.view(info.shape)
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        return _dequantize(raw.view(-1, gtype.block_bytes), gtype.name).view(info.shape)

    def close(self) -> None:
        """Drop the mapping; tensors already returned keep it alive until they are freed."""
        self._mm = None  # torch.frombuffer holds a reference; closing it would unmap their memory


def _dequantize(blocks: torch.Tensor, kind: str) -> torch.Tensor:
    """Blocks of 32 weights -> float32, with the arithmetic (and rounding) of ggml's reference:
    fp16 scales widened exactly, one float32 multiply, and for Q4_1 a separate add (no FMA)."""
    # blocks: [N, block_bytes] uint8 -> [N, 32] float32
    d = blocks[:, 0:2].view(torch.float16).float()  # [N, 1]
    if kind == "Q8_0":
        return blocks[:, 2:].view(torch.int8).float().mul_(d)
    packed = blocks[:, -16:]  # [N, 16]: low nibbles are weights 0..15, high nibbles 16..31
    q = torch.empty(blocks.shape[0], 32, dtype=torch.float32)  # [N, 32]
    q[:, :16] = packed & 0x0F
    q[:, 16:] = packed >> 4
    if kind == "Q4_0":
        return q.sub_(8.0).mul_(d)
    m = blocks[:, 2:4].view(torch.float16).float()  # [N, 1]
    return q.mul_(d).add_(m)


# general.architecture -> (HF architecture, HF model_type, q/k rows permuted by llama.cpp)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str) -> str:
    """transformers' name of a llama-style GGUF tensor; unknown names are kept as they are."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m and m[2] in _BLOCK_NAMES:
        return f"model.layers.{m[1]}.{_BLOCK_NAMES[m[2]]}.{m[3]}"
    return gguf_name


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (its rope rotates adjacent pairs, HF's half-split).

    The converter maps HF rows viewed as [n_head, 2, head_dim/2] to [n_head, head_dim/2, 2].
    """
    rows = w.shape[0]  # w: [n_head * head_dim, ...]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """A GGUF file seen as a Hugging Face checkpoint (see :class:`Checkpoint`)."""

    def __init__(self, path: str | Path) -> None:
        self.file = GGUFFile(path)
        self.path = self.file.path
        self.metadata: dict[str, Any] = self.file.metadata
        self._permuted = False  # q/k rows in llama.cpp's order (set from the architecture)
        try:
            self.hf_config: dict[str, Any] = self._hf_config()
            self._names: dict[str, str] = {}  # HF name -> GGUF name
            for gguf_name in self.file.tensors:
                hf_name = hf_tensor_name(gguf_name)
                if hf_name in self._names:
                    self._fail(
                        f"tensors {self._names[hf_name]!r} and {gguf_name!r} both map to "
                        f"{hf_name!r}"
                    )
                self._names[hf_name] = gguf_name
                self._check_permutable(hf_name)
        except BaseException:
            self.file.close()
            raise
        self.generation_config: dict[str, Any] = {
            k: v for k, v in self.hf_config.items() if k.endswith("_token_id")
        }

    def _fail(self, msg: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: {msg}")

    def _meta(self, key: str, kind: type, default: Any = None) -> Any:
        value = self.metadata.get(key, default)
        if value is None and default is None:
            self._fail(f"metadata key {key!r} is missing")
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if not ok or isinstance(value, bool):
            self._fail(f"metadata key {key!r} should be {kind.__name__}, got {value!r}")
        return value

    def _hf_config(self) -> dict[str, Any]:
        arch = self.metadata.get("general.architecture")
        if arch not in ARCHITECTURES:
            self._fail(
                f"general.architecture={arch!r} is not supported "
                f"(supported: {', '.join(ARCHITECTURES)})"
            )
        hf_arch, model_type, self._permuted = ARCHITECTURES[arch]
        heads = self._meta(f"{arch}.attention.head_count", int)
        cfg: dict[str, Any] = {
            "architectures": [hf_arch],
            "model_type": model_type,
            "hidden_size": self._meta(f"{arch}.embedding_length", int),
            "intermediate_size": self._meta(f"{arch}.feed_forward_length", int),
            "num_hidden_layers": self._meta(f"{arch}.block_count", int),
            "num_attention_heads": heads,
            "num_key_value_heads": self._meta(f"{arch}.attention.head_count_kv", int, heads),
            "rms_norm_eps": self._meta(f"{arch}.attention.layer_norm_rms_epsilon", float),
            "rope_theta": float(self._meta(f"{arch}.rope.freq_base", float, 10000.0)),
            "max_position_embeddings": self._meta(f"{arch}.context_length", int),
            "hidden_act": "silu",
            "tie_word_embeddings": "output.weight" not in self.file.tensors,
        }
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        embd = self.file.tensors.get("token_embd.weight")
        if f"{arch}.vocab_size" in self.metadata:
            cfg["vocab_size"] = self._meta(f"{arch}.vocab_size", int)
        elif isinstance(tokens, list):
            cfg["vocab_size"] = len(tokens)
        elif embd is not None and len(embd.ne) == 2:
            cfg["vocab_size"] = embd.ne[1]
        else:
            self._fail(f"no {arch}.vocab_size, tokenizer.ggml.tokens or token_embd.weight")
        for key in (f"{arch}.attention.key_length", f"{arch}.rope.dimension_count"):
            if key in self.metadata:
                cfg["head_dim"] = self._meta(key, int)
                break
        for which in ("bos", "eos", "padding"):
            if f"tokenizer.ggml.{which}_token_id" in self.metadata:
                token_id = self._meta(f"tokenizer.ggml.{which}_token_id", int)
                if token_id not in (-1, 0xFFFFFFFF):  # llama.cpp's "no such token"
                    cfg[f"{which[:3]}_token_id"] = token_id  # bos_, eos_, pad_token_id
        scaling = self._rope_scaling(arch)
        if scaling:
            cfg["rope_scaling"] = scaling
        if model_type == "qwen2":
            cfg["use_sliding_window"] = False
        return cfg

    def _rope_scaling(self, arch: str) -> dict[str, Any] | None:
        """HF ``rope_scaling`` from ``rope.scaling.*`` (or the older ``rope.scale_linear``)."""
        kind = self._meta(f"{arch}.rope.scaling.type", str, "none")
        if kind == "none" and f"{arch}.rope.scale_linear" in self.metadata:
            return {"rope_type": "linear", "factor": self._meta(f"{arch}.rope.scale_linear", float)}
        if kind == "none":
            return None
        if kind not in ("linear", "yarn"):
            self._fail(f"{arch}.rope.scaling.type={kind!r} is not supported (linear, yarn)")
        scaling = {"rope_type": kind, "factor": self._meta(f"{arch}.rope.scaling.factor", float)}
        if kind == "yarn":
            key = f"{arch}.rope.scaling.original_context_length"
            scaling["original_max_position_embeddings"] = self._meta(key, int)
        return scaling

    def _check_permutable(self, hf_name: str) -> None:
        heads = self._heads(hf_name)
        rows = self.tensor_info(hf_name)[0][0] if heads else 0
        if rows % (2 * heads or 1):
            self._fail(
                f"tensor {self._names[hf_name]!r}: {rows} rows do not split into {heads} heads "
                "of rotary pairs"
            )

    def _heads(self, hf_name: str) -> int:
        """Heads to un-permute ``hf_name`` by (0: stored in HF order)."""
        if not self._permuted:
            return 0
        if ".self_attn.q_proj." in hf_name:
            return int(self.hf_config["num_attention_heads"])
        if ".self_attn.k_proj." in hf_name:
            return int(self.hf_config["num_key_value_heads"])
        return 0

    def tensor_names(self) -> Iterator[str]:
        return iter(self._names)

    def tensor_info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        info = self.file.tensors.get(self._names.get(name, ""))
        if info is None:
            self._fail(f"no tensor named {name!r}")
        return info.shape, info.type.dtype

    def tensor(self, name: str) -> torch.Tensor:
        """F32/F16/BF16 tensors are views of the (copy-on-write) file map; others are copies."""
        self.tensor_info(name)  # a clear error for an unknown name
        t = self.file.tensor(self._names[name])
        heads = self._heads(name)
        return unpermute_rows(t, heads) if heads else t

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer and chat template in the metadata (None when the file has none)."""
        if "tokenizer.ggml.model" not in self.metadata:
            return None
        try:
            return gguf_tokenizer(self.metadata)
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: {e}") from None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> GGUFCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class GGUFConfig(CheckpointConfig):
    name: str = "gguf"


class GGUFFormat:
    """GGUF files (v2, v3): F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, llama and qwen2 metadata."""

    def __init__(self, config: GGUFConfig) -> None:
        self.config = config

    def check(self) -> list[str]:
        return []

    def detect(self, path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return f.read(4) == MAGIC
        except OSError:  # a directory, a missing or unreadable file
            return False

    def open(self, path: Path) -> GGUFCheckpoint:
        return GGUFCheckpoint(path)


@hookimpl
def plugformer_register(registry):
    registry.register("checkpoint", "gguf", GGUFFormat, GGUFConfig)
