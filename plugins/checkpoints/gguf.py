"""GGUF checkpoints as Hugging Face checkpoints: the ``gguf`` checkpoint-format plugin.

The file itself is read by :mod:`plugformer.core.checkpoints.gguf` (spec: ggml-org/ggml,
docs/gguf.md).
This plugin speaks Hugging Face: ``hf_config`` is built from the metadata (llama and qwen2), tensor
names are transformers' names, and llama's q/k projections are un-permuted from the
interleaved-rope row order llama.cpp's converter writes. Q8_0/Q4_0/Q4_1 matrices are also
offered undequantized (``quantized_type``/``quantized_blocks``), so ``quant=none`` runs them
quantized (:mod:`plugformer.core.quant.load`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from plugformer.core import hookimpl
from plugformer.core.checkpoints.gguf import MAGIC, GGUFFile
from plugformer.core.errors import CheckpointError
from plugformer.core.interfaces.checkpoint import CheckpointConfig
from plugformer.core.interfaces.tokenizer import Tokenizer
from plugformer.core.tokenizers.hf import gguf_tokenizer

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
        return self.tensor_as(name, None)

    def tensor_as(self, name: str, dtype: torch.dtype | None) -> torch.Tensor:
        """:meth:`tensor`, with quantized blocks dequantized straight into ``dtype`` (the same
        values as ``tensor(name).to(dtype)``, without a float32 copy of the whole tensor)."""
        self.tensor_info(name)  # a clear error for an unknown name
        t = self.file.tensor(self._names[name], dtype)
        heads = self._heads(name)
        return unpermute_rows(t, heads) if heads else t

    def quantized_type(self, name: str) -> str | None:
        """``Q8_0``, ``Q4_0`` or ``Q4_1`` for a matrix stored in those blocks, else None (reads
        no data). With :meth:`quantized_blocks`, lets the engine run such weights quantized
        (:mod:`plugformer.core.quant.load`) instead of dequantizing them on load."""
        info = self.file.tensors.get(self._names.get(name, ""))
        if info is None or info.type.block == 1 or len(info.ne) != 2:
            return None
        return info.type.name

    def quantized_blocks(self, name: str) -> torch.Tensor:
        """The undequantized blocks of a :meth:`quantized_type` matrix: uint8
        [rows, columns / 32, block_bytes], rows in Hugging Face order (q/k un-permuted)."""
        self.tensor_info(name)  # a clear error for an unknown name
        blocks = self.file.blocks(self._names[name])
        heads = self._heads(name)
        return unpermute_rows(blocks, heads) if heads else blocks

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer and chat template in the metadata (None when the file has none)."""
        if "tokenizer.ggml.model" not in self.metadata:
            return None
        try:
            return gguf_tokenizer(self.metadata)
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: {e}") from None

    def drop_pages(self) -> None:
        """Drop the file's mapped pages from resident memory (called by the loader)."""
        self.file.drop_pages()

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
