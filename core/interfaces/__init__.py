"""The plugin contract's interfaces: one module per registry kind, plus ``ModelSpec``.

Each module holds a kind's config base dataclass (with a ``name`` field), its runtime
``typing.Protocol`` (built by the registered builder; ``check()`` lists reasons it cannot run)
and the optional capabilities the core reads, declared with their defaults. Everything here is
re-exported from :mod:`plugformer.core`, the one place plugin authors import from.
"""

from plugformer.core.interfaces.adapter import (
    Adapter,
    AdapterConfig,
    AdapterDims,
    AdapterLayer,
    base_weight,
)
from plugformer.core.interfaces.attention import Attention, AttentionConfig, AttentionDims
from plugformer.core.interfaces.capability import Capability, capability
from plugformer.core.interfaces.checkpoint import Checkpoint, CheckpointConfig, CheckpointFormat
from plugformer.core.interfaces.family import (
    FamilyBase,
    FamilyConfig,
    ModelFamily,
    TensorPart,
    expect_shape,
)
from plugformer.core.interfaces.mlp import ACTIVATIONS, MLP, MLPConfig, MLPDims, activation
from plugformer.core.interfaces.norm import Norm, NormConfig, NormDims
from plugformer.core.interfaces.optimizer import (
    Optimizer,
    OptimizerConfig,
    OptimizerSettings,
    decay_groups,
)
from plugformer.core.interfaces.parallel import STYLES, ParallelConfig, ParallelStrategy
from plugformer.core.interfaces.positional import (
    PositionalBase,
    PositionalConfig,
    PositionalDims,
    PositionalEncoding,
)
from plugformer.core.interfaces.quant import QuantConfig, QuantizedWeights, Quantizer
from plugformer.core.interfaces.sampler import (
    Sampler,
    SamplerConfig,
    SamplingContext,
    generated_slots,
    knob,
    signed_penalty_problems,
)
from plugformer.core.interfaces.schedule import Schedule, ScheduleConfig, ScheduleDims
from plugformer.core.interfaces.spec import ModelSpec
from plugformer.core.interfaces.tokenizer import Tokenizer

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "STYLES",
    "Adapter",
    "AdapterConfig",
    "AdapterDims",
    "AdapterLayer",
    "Attention",
    "AttentionConfig",
    "AttentionDims",
    "Capability",
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointFormat",
    "FamilyBase",
    "FamilyConfig",
    "MLPConfig",
    "MLPDims",
    "ModelFamily",
    "ModelSpec",
    "Norm",
    "NormConfig",
    "NormDims",
    "Optimizer",
    "OptimizerConfig",
    "OptimizerSettings",
    "ParallelConfig",
    "ParallelStrategy",
    "PositionalBase",
    "PositionalConfig",
    "PositionalDims",
    "PositionalEncoding",
    "QuantConfig",
    "QuantizedWeights",
    "Quantizer",
    "Sampler",
    "SamplerConfig",
    "SamplingContext",
    "Schedule",
    "ScheduleConfig",
    "ScheduleDims",
    "TensorPart",
    "Tokenizer",
    "activation",
    "base_weight",
    "capability",
    "decay_groups",
    "expect_shape",
    "generated_slots",
    "knob",
    "signed_penalty_problems",
]
