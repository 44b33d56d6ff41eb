"""CIFAR-style ResNet-18 (3x3 stem, no max-pool, stages [2, 2, 2, 2]) with a width parameter.

Measured on 2 CPU threads, train images/s on 32x32x3: width 16: 446,
width 32: 133, width 64 (the standard net): 38.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from granularity.errors import param_error
from granularity.models.base import Backbone
from granularity.models.cnn import _image_shape
from granularity.models.registry import register_model


class BasicBlock(nn.Module):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class ResNet(Backbone):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, blocks=(2, 2, 2, 2)):
        super().__init__(8 * width, num_classes)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, c = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(c, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c = c_out
        self.layers = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))  # (B, 8w, h, w) -> (B, 8w)


@register_model("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> ResNet:
    """ResNet-18 layout; ``width`` = channels of the first stage (64 is the standard net)."""
    c, _, _ = _image_shape(input_shape, "resnet18")
    if width < 1:
        raise param_error("width", "an int in the range [1, inf)", width)
    return ResNet(c, num_classes, width)
