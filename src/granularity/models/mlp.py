"""MLP for tabular data (images are flattened, so it runs on any input)."""

from __future__ import annotations

import math

import torch
from torch import nn

from granularity.errors import param_error
from granularity.models.base import Backbone
from granularity.models.registry import register_model


class MLP(Backbone):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256, depth: int = 2, dropout: float = 0.0):
        super().__init__(hidden, num_classes)
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = hidden
        self.features = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.flatten(1))  # (B, ...) -> (B, D) -> (B, hidden)


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 256, depth: int = 2, dropout: float = 0.0) -> MLP:
    """``depth`` hidden layers of ``hidden`` units (Linear-BatchNorm-ReLU)."""
    if hidden < 1:
        raise param_error("hidden", "an int in the range [1, inf)", hidden)
    if depth < 1:
        raise param_error("depth", "an int in the range [1, inf)", depth)
    if not 0 <= dropout < 1:
        raise param_error("dropout", "a float in the range [0, 1)", dropout)
    return MLP(int(math.prod(input_shape)), num_classes, hidden, depth, dropout)
