"""The theory simulator: hierarchical multi-view data, the two-layer patch CNN, coarse vs fine
pretraining, transfer to the coarse task, easy/hard errors and feature alignment.

See ``docs/theory.md`` of the project for the model definition.
"""

from granularity.theory.config import (  # ModelConfig, TransferConfig: the old names of SimModelConfig, SimTransferConfig
    DataConfig,
    ModelConfig,
    SimConfig,
    SimModelConfig,
    SimTransferConfig,
    TrainConfig,
    TransferConfig,
)
from granularity.theory.data import HierarchicalMultiView, Samples
from granularity.theory.presets import PRESETS, get_preset

__all__ = [
    "DataConfig",
    "HierarchicalMultiView",
    "ModelConfig",
    "PRESETS",
    "Samples",
    "SimConfig",
    "SimModelConfig",
    "SimTransferConfig",
    "TrainConfig",
    "TransferConfig",
    "get_preset",
]
