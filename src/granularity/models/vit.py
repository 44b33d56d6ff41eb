"""A small Vision Transformer (pre-norm blocks, class token, learned positions)."""

from __future__ import annotations

import torch
from torch import nn

from granularity.errors import GranularityError, param_error
from granularity.models.base import Backbone
from granularity.models.cnn import _image_shape
from granularity.models.registry import register_model


class Block(nn.Module):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(Backbone):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, in_channels: int, size: tuple[int, int], num_classes: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__(dim, num_classes)
        self.patch = nn.Conv2d(in_channels, dim, patch, patch)  # patch embedding
        n_tokens = (size[0] // patch) * (size[1] // patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, T, D)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos  # (B, T+1, D)
        return self.norm(self.blocks(t))[:, 0]  # class token (B, D)


@register_model("vit")
def vit(input_shape: tuple[int, ...], num_classes: int, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4) -> ViT:
    """Small ViT; ``patch`` must divide the image size (4 for 28x28 and 32x32)."""
    c, h, w = _image_shape(input_shape, "vit")
    if patch < 1 or h % patch or w % patch:
        raise param_error("patch", f"a positive divisor of the image size {h}x{w}", patch)
    if dim < 1 or heads < 1 or dim % heads:
        raise GranularityError(f"The 'dim' parameter of model 'vit' must be a multiple of heads={heads}. Got {dim} instead.")
    if depth < 1:
        raise param_error("depth", "an int in the range [1, inf)", depth)
    return ViT(c, (h, w), num_classes, patch, dim, depth, heads)
