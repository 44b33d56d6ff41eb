"""Small CNN (the default): three 3x3 conv blocks of 32/64/128 channels, 94k parameters with a
10-way head on 28x28x1 inputs. Its training throughput on the project's machines is measured by
``granularity bench`` (``benchmarks/README.md``, from the committed JSON in ``benchmarks/results/``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from granularity.errors import param_error
from granularity.models.base import Backbone
from granularity.models.registry import register_model


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """conv -> BatchNorm -> ReLU, then 2x2 max pooling where ``pool``; the pooling runs before
    the ReLU (max and ReLU commute exactly, values and gradients alike), so the ReLU and its
    backward touch a quarter of the activations (``tests/models/test_models.py`` checks the two
    orders bit for bit). Parameter names are those of conv/BN/ReLU/pool order."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
    layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True)] if pool else [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SmallCNN(Backbone):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128)):
        super().__init__(widths[-1], num_classes)
        chans = [in_channels, *widths]
        # pool after all but the last block: 28 -> 14 -> 7, then global average pooling
        self.features = nn.Sequential(
            *[_block(chans[i], chans[i + 1], pool=i < len(widths) - 1) for i in range(len(widths))]
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)


def _image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise param_error(f"input_shape of model {model!r}", "(C, H, W) for image data", input_shape)
    return input_shape  # type: ignore[return-value]


@register_model("cnn")
def cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> SmallCNN:
    """3-conv CNN; ``width`` is the first block's channels (doubled per block: 32/64/128)."""
    c, _, _ = _image_shape(input_shape, "cnn")
    if width < 1:
        raise param_error("width", "an int in the range [1, inf)", width)
    return SmallCNN(c, num_classes, (width, 2 * width, 4 * width))
