"""One engine: pretrain on any label function, transfer to the target, evaluate at every level.

>>> from granularity.engine import run_transfer
>>> result = run_transfer({"source": "leaf", "target": 2}, "runs/leaf")  # doctest: +SKIP
"""

from granularity.engine.config import ModelConfig, RareConfig, StageConfig, TransferConfig, TransferStageConfig
from granularity.engine.labels import SourceLabels, SourceSpec, build_source_labels, parse_source
from granularity.engine.run import run_transfer

__all__ = [
    "ModelConfig",
    "RareConfig",
    "SourceLabels",
    "SourceSpec",
    "StageConfig",
    "TransferConfig",
    "TransferStageConfig",
    "build_source_labels",
    "parse_source",
    "run_transfer",
]
