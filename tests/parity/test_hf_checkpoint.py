"""The ``hf`` checkpoint format: transformers' own directories (single and sharded) read back
exactly, and every unsafe or inconsistent directory refused with a CheckpointError."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugformer.core.errors import CheckpointError
from plugformer.core.interfaces.checkpoint import Checkpoint, CheckpointFormat
from plugformer.core.registry import Registry
from plugformer.plugins.checkpoints import hf
from plugformer.plugins.checkpoints.hf import HFConfig, HFFormat

transformers = pytest.importorskip("transformers")


#: transformers' LlamaConfig defaults where the shared tiny Llama (conftest.py) sets its own
TINY = {"vocab_size": 128, "max_position_embeddings": 2048, "rope_theta": 10000.0}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_hf_llama) -> dict[str, Any]:
    """Tiny random Llamas saved by transformers: untied single-file, untied sharded, tied."""
    root = tmp_path_factory.mktemp("hf")
    untied = tiny_hf_llama(**TINY, tie_word_embeddings=False)
    tied = tiny_hf_llama(**TINY, tie_word_embeddings=True)
    untied.save_pretrained(root / "single", safe_serialization=True)
    untied.save_pretrained(root / "sharded", safe_serialization=True, max_shard_size="20KB")
    tied.save_pretrained(root / "tied", safe_serialization=True)
    return {"root": root, "untied": untied, "tied": tied}


def _open(path: Path, **config: Any) -> Checkpoint:
    return HFFormat(HFConfig(**config)).open(path)


def _copy(saved: dict[str, Any], which: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved["root"] / which, tmp_path / which))


def _refused(path: Path, *fragments: str, **config: Any) -> str:
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        _open(path, **config)
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


def _assert_same_as(ckpt: Checkpoint, model: Any, tied: bool) -> None:
    state = model.state_dict()
    # tied embeddings: transformers saves the shared matrix once, as the embedding
    expected = {n for n in state if not (tied and n == "lm_head.weight")}
    assert set(ckpt.tensor_names()) == expected
    for name in expected:
        assert ckpt.tensor_info(name) == (tuple(state[name].shape), state[name].dtype), name
        assert torch.equal(ckpt.tensor(name), state[name]), name
    if tied:
        assert torch.equal(ckpt.tensor("model.embed_tokens.weight"), state["lm_head.weight"])


def test_registered_as_hf():
    registry = Registry()
    hf.plugformer_register(registry)
    entry = registry.get("checkpoint", "hf")
    assert entry.config is HFConfig and HFConfig().name == "hf" and not HFConfig().allow_pickle
    fmt = registry.build("checkpoint", HFConfig())
    assert isinstance(fmt, CheckpointFormat)


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_reads_transformers_directory_exactly(saved, which):
    d = saved["root"] / which
    if which == "sharded":
        assert (d / "model.safetensors.index.json").is_file()
        assert len(list(d.glob("model-*-of-*.safetensors"))) > 1
    ckpt = _open(d)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.hf_config == json.loads((d / "config.json").read_text())
    assert ckpt.generation_config == json.loads((d / "generation_config.json").read_text())
    _assert_same_as(ckpt, saved["untied"], tied=False)
    assert ckpt.tokenizer() is None  # no tokenizer.json saved
    ckpt.close()


def test_tied_embeddings(saved):
    ckpt = _open(saved["root"] / "tied")
    assert ckpt.hf_config["tie_word_embeddings"] is True
    _assert_same_as(ckpt, saved["tied"], tied=True)


def test_detect_and_open_by_file(saved, tmp_path):
    fmt = HFFormat(HFConfig())
    single, sharded = saved["root"] / "single", saved["root"] / "sharded"
    assert fmt.detect(single) and fmt.detect(single / "config.json")
    assert fmt.detect(single / "model.safetensors")
    lone = tmp_path / "lone.safetensors"
    shutil.copy(single / "model.safetensors", lone)
    assert not fmt.detect(lone) and not fmt.detect(tmp_path) and not fmt.detect(tmp_path / "x")
    _assert_same_as(fmt.open(single / "config.json"), saved["untied"], tied=False)
    _assert_same_as(fmt.open(single / "model.safetensors"), saved["untied"], tied=False)
    # a shard named in the index opens the whole sharded model
    shard = sorted(sharded.glob("model-*.safetensors"))[0]
    _assert_same_as(fmt.open(shard), saved["untied"], tied=False)


def test_tokenizer_from_tokenizer_json(saved, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from plugformer.core.tokenizers.hf import HFTokenizer

    d = _copy(saved, "single", tmp_path)
    vocab = {"<unk>": 0, "hello": 1, "world": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    got = _open(d).tokenizer()
    assert isinstance(got, HFTokenizer)
    assert got.encode("hello world", add_special_tokens=False) == [1, 2]


def test_tensors_outlive_close(saved):
    ckpt = _open(saved["root"] / "sharded")
    w = ckpt.tensor("model.norm.weight")
    ckpt.close()
    assert torch.equal(w, saved["untied"].state_dict()["model.norm.weight"])
    with pytest.raises(CheckpointError, match="closed"):
        ckpt.tensor("model.norm.weight")


def test_unknown_tensor_name(saved):
    with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
        _open(saved["root"] / "single").tensor_info("nope")


# -- the sharded index ---------------------------------------------------------------------
def _edit_index(d: Path, edit) -> dict[str, Any]:
    path = d / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))
    return index


def test_index_entry_with_dotdot_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    shutil.copy(d / "model-00001-of-00014.safetensors", tmp_path / "x.safetensors")
    _edit_index(d, lambda wm: wm.__setitem__("model.embed_tokens.weight", "../x.safetensors"))
    _refused(d, "model.embed_tokens.weight", "../x.safetensors", "outside the model directory")


def test_index_entry_with_absolute_path_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    outside = tmp_path / "x.safetensors"
    shutil.copy(d / "model-00001-of-00014.safetensors", outside)
    _edit_index(d, lambda wm: wm.__setitem__("model.embed_tokens.weight", str(outside)))
    _refused(d, "model.embed_tokens.weight", str(outside), "absolute path")


def test_shard_symlink_escaping_the_directory_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    shard = d / "model-00001-of-00014.safetensors"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    _refused(d, "model-00001-of-00014.safetensors", "symlink", "outside the model directory")


def test_hub_cache_layout_with_blob_symlinks_is_accepted(saved, tmp_path):
    # huggingface_hub keeps snapshots/<rev>/<file> as symlinks to ../../blobs/<hash>
    repo = tmp_path / "models--tiny--llama"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted((saved["root"] / "sharded").iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    _assert_same_as(_open(snap), saved["untied"], tied=False)


def test_missing_shard_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    (d / "model-00014-of-00014.safetensors").unlink()
    _refused(d, "model-00014-of-00014.safetensors", "missing")


def test_tensor_absent_from_its_shard_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    _edit_index(d, lambda wm: wm.__setitem__("model.ghost.weight", wm["model.norm.weight"]))
    _refused(d, "model.ghost.weight", "absent")


def test_tensor_in_two_shards_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.norm.weight"]
    other = next(s for s in set(index["weight_map"].values()) if s != shard)
    extra = {k: v.clone() for k, v in load_file(d / other).items()}
    extra["model.norm.weight"] = torch.ones(64)
    save_file(extra, d / other)  # now both shards hold model.norm.weight
    msg = _refused(d, "two shards")
    assert shard in msg and other in msg


def test_tensor_missing_from_the_index_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    _edit_index(d, lambda wm: wm.pop("model.norm.weight"))
    _refused(d, "model.norm.weight", "not listed in the index")


def test_index_without_weight_map_is_refused(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    (d / "model.safetensors.index.json").write_text('{"metadata": {}}')
    _refused(d, "weight_map")


def test_malformed_shard_is_refused_naming_it(saved, tmp_path):
    d = _copy(saved, "sharded", tmp_path)
    (d / "model-00003-of-00014.safetensors").write_bytes(b"\x10\x00")
    _refused(d, "model-00003-of-00014.safetensors", "too short")


# -- config.json ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["auto_map", "trust_remote_code"])
def test_remote_code_is_refused(saved, tmp_path, key):
    d = _copy(saved, "single", tmp_path)
    config = json.loads((d / "config.json").read_text())
    config[key] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"} if key == "auto_map" else True
    (d / "config.json").write_text(json.dumps(config))
    _refused(d, key, "never runs remote code")


@pytest.mark.parametrize(
    ("text", "fragment"), [("[1, 2]", "JSON object"), ("{oops", "JSON"), ("\xff", "JSON")]
)
def test_bad_config_json_is_refused(saved, tmp_path, text, fragment):
    d = _copy(saved, "single", tmp_path)
    (d / "config.json").write_bytes(text.encode("latin-1"))
    _refused(d, "config.json", fragment)


def test_bad_generation_config_is_refused(saved, tmp_path):
    d = _copy(saved, "single", tmp_path)
    (d / "generation_config.json").write_text('"eos"')
    _refused(d, "generation_config.json", "JSON object")


def test_missing_generation_config_is_empty(saved, tmp_path):
    d = _copy(saved, "single", tmp_path)
    (d / "generation_config.json").unlink()
    assert _open(d).generation_config == {}


def test_no_weights_is_refused(saved, tmp_path):
    d = _copy(saved, "single", tmp_path)
    (d / "model.safetensors").unlink()
    _refused(d, "no weights found")


# -- pickle ---------------------------------------------------------------------------------
def _pickle_dir(saved, tmp_path: Path) -> Path:
    d = _copy(saved, "single", tmp_path)
    (d / "model.safetensors").unlink()
    torch.save(saved["untied"].state_dict(), d / "pytorch_model.bin")
    return d


def test_pickle_is_refused_by_default(saved, tmp_path):
    d = _pickle_dir(saved, tmp_path)
    _refused(d, "pytorch_model.bin", "pickle", "allow_pickle=true", "weights_only=True")


def test_pickle_allowed_loads_with_weights_only(saved, tmp_path):
    d = _pickle_dir(saved, tmp_path)
    _assert_same_as(_open(d, allow_pickle=True), saved["untied"], tied=False)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_allowed_still_never_runs_code(saved, tmp_path):
    d = _copy(saved, "single", tmp_path)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"w": _Evil(marker)}, d / "model.pt")
    _refused(d, "model.pt", "weights_only=True", allow_pickle=True)
    assert not marker.exists()


def test_safetensors_wins_over_pickle(saved, tmp_path):
    d = _copy(saved, "single", tmp_path)
    torch.save({"junk": torch.zeros(1)}, d / "pytorch_model.bin")
    ckpt = _open(d)  # no refusal: the pickle file is never looked at
    assert [p.name for p in ckpt.files] == ["model.safetensors"]  # type: ignore[attr-defined]
    _assert_same_as(ckpt, saved["untied"], tied=False)
