"""The one model interface every registered model shares (timm style).

``forward(x) = forward_head(forward_features(x))``; ``forward_features`` returns pooled
features ``(B, num_features)``; ``reset_head(n)`` replaces the classifier by a fresh ``n``-way
linear layer, which is all that changes between pretraining and transfer to another label level.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class: subclasses set ``self.num_features`` and implement ``forward_features``."""

    num_features: int

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.head = nn.Linear(self.num_features, int(num_classes))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, F)
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, K)
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_classes: int) -> "Backbone":
        """Replace the classifier by a freshly initialised ``num_classes``-way linear layer.

        The new layer is created on the device and dtype of the old one; its initialisation uses
        torch's global generator, so callers wanting reproducibility wrap this in
        ``torch.random.fork_rng`` with a seed (the engine does).
        """
        old = self.head
        self.head = nn.Linear(self.num_features, int(num_classes)).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        return self

    def backbone_parameters(self):
        """Every parameter except the head's (frozen by a linear probe)."""
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
