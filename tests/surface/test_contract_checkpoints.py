"""Contract 2.0 for family and checkpoint plugins: their options by override, detection by
confidence, and the tokenizer constructors a third-party format calls."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import plugformer
from plugformer.core import CheckpointConfig, loader
from plugformer.core.errors import CheckpointError, ConfigError, UnknownNameError
from plugformer.core.interfaces.checkpoint import GENERIC, SPECIFIC
from plugformer.core.model.save import save_decoder
from plugformer.core.tokenizers import ByteTokenizer, from_hf_dir, from_hf_json

TINY = "model=tiny"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The random tiny model saved in plugformer's own HF-style layout."""
    engine = plugformer.Engine.from_overrides([TINY])
    return save_decoder(engine.model, tmp_path_factory.mktemp("tiny"))


def _ids() -> torch.Tensor:
    return torch.tensor([[256, 72, 105, 33]])


# -- family= and checkpoint= are groups with their own fields ------------------------------------
def test_family_and_checkpoint_options_are_set_by_override(saved):
    cfg = plugformer.compose(
        [f"model.path={saved}", "checkpoint=hf", "checkpoint.allow_pickle=true"]
    )
    assert type(cfg.checkpoint).__name__ == "HFConfig" and cfg.checkpoint.allow_pickle is True
    assert plugformer.compose([]).family.name == "auto"  # detected by default
    cfg = plugformer.compose([f"model.path={saved}", "family=plugformer", "checkpoint=hf"])
    engine = plugformer.Engine(cfg)
    want = plugformer.Engine.from_overrides([f"model.path={saved}"])  # detected: the same
    torch.testing.assert_close(engine.logits(_ids()), want.logits(_ids()), rtol=0, atol=0)
    assert type(engine.family).__name__ == type(want.family).__name__


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["checkpoint=hf", "checkpoint.allow_pikle=true"],
            r"checkpoint\.allow_pikle: unknown key; did you mean 'checkpoint\.allow_pickle'",
        ),
        (["family=llama", "family.rope=1"], r"family\.rope: unknown key"),
        (["family.anything=1"], r"family\.anything: unknown key"),  # auto has no fields
    ],
)  # fmt: skip
def test_unknown_fields_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        plugformer.compose(overrides)


def test_an_unknown_family_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"llamma.*did you mean 'llama'"):
        plugformer.compose(["family=llamma"])


def test_family_group_and_model_family_must_agree(saved):
    with pytest.raises(ConfigError, match=r"family=llama and model\.family=plugformer"):
        plugformer.Engine.from_overrides(
            [f"model.path={saved}", "family=llama", "model.family=plugformer"]
        )


# -- detection by confidence --------------------------------------------------------------------
def _format_plugin(
    name: str, confidence: float, opened: list[str], config_class
) -> types.ModuleType:
    """A checkpoint format claiming any directory with config.json at ``confidence``; it opens
    it with the built-in hf format (what a format for a HF-like layout of its own would do)."""

    Config = config_class(CheckpointConfig, name)

    class Format:
        def __init__(self, config, *context):
            self.config = config

        def check(self):
            return []

        def detect(self, path):
            return confidence if (Path(path) / "config.json").is_file() else 0.0

        def open(self, path):
            opened.append(name)
            registry = loader.get_plugins().registry
            return registry.build("checkpoint", registry.get("checkpoint", "hf").config()).open(
                path
            )

    module = types.ModuleType(f"format_{name}")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("checkpoint", name, Format, Config)

    module.plugformer_register = plugformer_register
    return module


@pytest.fixture
def fresh_plugins():
    loader.reset()
    yield
    loader.reset()


def test_a_specific_format_wins_over_the_generic_hf_directory(saved, fresh_plugins, config_class):
    opened: list[str] = []
    plugformer.register(_format_plugin("mine", SPECIFIC, opened, config_class))
    engine = plugformer.Engine.from_overrides([f"model.path={saved}"])
    assert opened == ["mine"]
    assert engine.logits(_ids()).shape == (1, 4, 258)


def test_a_generic_claim_loses_to_nothing_but_ties_are_refused(saved, fresh_plugins, config_class):
    opened: list[str] = []
    plugformer.register(_format_plugin("twin", GENERIC, opened, config_class))  # ties with hf
    with pytest.raises(
        CheckpointError,
        match=r"claimed equally by the checkpoint formats 'hf' and 'twin'; choose one with "
        r"checkpoint=<name>",
    ):
        plugformer.Engine.from_overrides([f"model.path={saved}"])
    engine = plugformer.Engine.from_overrides([f"model.path={saved}", "checkpoint=twin"])
    assert opened == ["twin"] and engine.logits(_ids()).shape == (1, 4, 258)  # fmt: skip


# -- tokenizer constructors ---------------------------------------------------------------------
def test_from_hf_json_equals_the_tokenizers_library(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    backend.save(str(path))
    for source in (str(path), path.read_text()):
        tok = from_hf_json(source, bos_token="<s>", eos_token="</s>", add_bos_token=True)
        assert tok.encode("hello world") == [1, *backend.encode("hello world").ids]
        assert tok.encode("hello world", add_special_tokens=False) == [3, 4]
        assert tok.eos_token_ids == [2] and tok.bos_token_id == 1
        assert tok.decode([3, 4]) == backend.decode([3, 4])
    with pytest.raises(CheckpointError, match="not a valid tokenizer"):
        from_hf_json("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: missing"):
        from_hf_dir(tmp_path / "nowhere")
    assert ByteTokenizer().encode("hi") == [256, 104, 105]


# -- tensor names: (hf_name, spec, hf_config), and the 1.x one-argument form ---------------------
def test_a_family_receives_the_spec_and_config_and_a_1x_family_still_loads(saved, fresh_plugins):
    from plugformer.core import FamilyConfig
    from plugformer.core.model.save import MODEL_TYPE

    seen: list[tuple] = []

    @dataclass
    class NewConfig(FamilyConfig):
        name: str = "new_style"

    @dataclass
    class OldConfig(FamilyConfig):
        name: str = "old_style"

    class Base:
        architectures: tuple[str, ...] = ()
        model_types = (MODEL_TYPE,)

        def __init__(self, config):
            registry = loader.get_plugins().registry
            self.inner = registry.build("family", registry.get("family", "plugformer").config())

        def check(self):
            return []

        def spec_from_hf(self, hf_config):
            return self.inner.spec_from_hf(hf_config)

        def tp_plan(self):
            return self.inner.tp_plan()

    class New(Base):
        def tensor_name(self, hf_name, spec, hf_config):
            seen.append((hf_name, spec.hidden_size, hf_config["model_type"]))
            return hf_name

    class Old(Base):
        def tensor_name(self, hf_name):
            return hf_name

    module = types.ModuleType("families")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("family", "new_style", New, NewConfig)
        registry.register("family", "old_style", Old, OldConfig)

    module.plugformer_register = plugformer_register
    plugformer.register(module)
    want = plugformer.Engine.from_overrides([f"model.path={saved}"]).logits(_ids())
    new = plugformer.Engine.from_overrides([f"model.path={saved}", "family=new_style"])
    assert ("embed.weight", 64, MODEL_TYPE) in seen
    with pytest.warns(DeprecationWarning, match=r"tensor_name\(hf_name\) is the contract 1.x"):
        old = plugformer.Engine.from_overrides([f"model.path={saved}", "family=old_style"])
    torch.testing.assert_close(new.logits(_ids()), want, rtol=0, atol=0)
    torch.testing.assert_close(old.logits(_ids()), want, rtol=0, atol=0)


def test_an_unknown_tensor_fails_the_load_naming_it(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "extra"
    out.mkdir()
    (out / "config.json").write_text((saved / "config.json").read_text())
    tensors = load_file(str(saved / "model.safetensors"))
    tensors["layers.0.mystery.weight"] = torch.zeros(2)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: layers\.0\.mystery\.weight"):
        plugformer.Engine.from_overrides([f"model.path={out}"])


def test_a_format_that_refuses_here_takes_no_part_in_detection(saved, fresh_plugins, config_class):
    Config = config_class(CheckpointConfig, "needs_pkg")

    class NeedsPackage:
        def __init__(self, config):
            pass

        def check(self):
            return ["needs the package 'nowhere'"]

        def detect(self, path):
            raise AssertionError("a refusing format is never asked")

    module = types.ModuleType("needs_pkg")

    @plugformer.hookimpl
    def plugformer_register(registry):
        registry.register("checkpoint", "needs_pkg", NeedsPackage, Config)

    module.plugformer_register = plugformer_register
    plugformer.register(module)
    engine = plugformer.Engine.from_overrides([f"model.path={saved}"])  # hf still loads it
    assert engine.logits(_ids()).shape == (1, 4, 258)
    with pytest.raises(plugformer.RefusedError, match="needs the package 'nowhere'"):
        plugformer.Engine.from_overrides([f"model.path={saved}", "checkpoint=needs_pkg"])
    with pytest.raises(CheckpointError, match=r"refused here: needs_pkg \(needs the package"):
        plugformer.Engine.from_overrides([f"model.path={Path(__file__)}"])
