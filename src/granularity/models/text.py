"""Text models on token ids (``int64 (B, L)``, padded with 0; see :mod:`granularity.data.text`).

``text-ngrams`` is fastText's classifier: the mean of the embeddings of a text's hashed word
n-grams (``nn.EmbeddingBag``, padding ignored), optionally followed by one ReLU layer; fast on
a CPU. ``text-transformer`` is a small pre-norm transformer encoder over the same ids with
learned positions, mean-pooled over the non-padding tokens. Both share the image models'
interface (``forward_features`` / ``forward_head`` / ``reset_head`` / ``num_features``).
"""

from __future__ import annotations

import torch
from torch import nn

from granularity.errors import GranularityError, param_error
from granularity.models.base import Backbone
from granularity.models.registry import register_model
from granularity.models.vit import Block


def _token_length(input_shape: tuple[int, ...], name: str) -> int:
    if len(input_shape) != 1:
        raise GranularityError(
            f"Model {name!r} reads token ids of shape (L,) (a text data set such as wordnet-glosses). "
            f"Got input shape {tuple(input_shape)} instead."
        )
    return int(input_shape[0])


def _check_ids(x: torch.Tensor, buckets: int, name: str) -> None:
    if x.dtype not in (torch.int64, torch.int32):
        raise GranularityError(f"Model {name!r} reads integer token ids. Got a {x.dtype} tensor instead.")
    if x.numel() and (int(x.max()) >= buckets or int(x.min()) < 0):
        raise GranularityError(
            f"Token ids must lie in [0, {buckets - 1}] for model {name!r} (its 'buckets' option); got ids up to "
            f"{int(x.max())}. Set model.options.buckets to the tokenizer's buckets."
        )


def _trim(x: torch.Tensor) -> torch.Tensor:
    """Drop the all-padding columns at the right end of a left-aligned batch (speed only)."""
    used = int((x != 0).sum(1).max()) if x.numel() else 0
    return x[:, : max(1, used)]


class BagOfNgrams(Backbone):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, buckets: int, dim: int, hidden: int, num_classes: int, dropout: float, sparse: bool) -> None:
        super().__init__(hidden or dim, num_classes)
        self.buckets = int(buckets)
        self.embed = nn.EmbeddingBag(self.buckets, dim, mode="mean", padding_idx=0, sparse=sparse)
        nn.init.uniform_(self.embed.weight, -1.0 / dim**0.5, 1.0 / dim**0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) ids -> (B, F)
        _check_ids(x, self.buckets, "text-ngrams")
        return self.mlp(self.embed(_trim(x)))  # mean over the non-padding ids: (B, dim)


@register_model("text-ngrams")
def bag_of_ngrams(input_shape: tuple[int, ...], num_classes: int, buckets: int = 2**17, dim: int = 64,
                  hidden: int = 0, dropout: float = 0.0, sparse: bool = False) -> BagOfNgrams:
    """fastText-style: mean of ``dim``-d n-gram embeddings (``buckets`` rows, as the
    tokenizer's), then ``hidden`` ReLU units when ``hidden > 0`` (0: linear features).

    ``sparse=True`` gives the embedding table sparse gradients: a step then touches only the
    rows of the batch's n-grams (5x faster on a CPU with 2^17 buckets), but only plain SGD
    (``momentum=0``, ``weight_decay=0``) can use them: AdamW and weight decay refuse sparse
    gradients, and momentum makes every step dense again."""
    _token_length(input_shape, "text-ngrams")
    if buckets < 2:
        raise param_error("buckets", "an int in the range [2, inf)", buckets)
    if dim < 1:
        raise param_error("dim", "an int in the range [1, inf)", dim)
    if hidden < 0:
        raise param_error("hidden", "an int in the range [0, inf)", hidden)
    if not 0 <= dropout < 1:
        raise param_error("dropout", "a float in the range [0, 1)", dropout)
    return BagOfNgrams(buckets, dim, hidden, num_classes, dropout, bool(sparse))


class TextTransformer(Backbone):
    forward_draws_random = False  # its own forward code draws nothing (engine.train.draws_random)

    def __init__(self, buckets: int, length: int, dim: int, depth: int, heads: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        self.buckets = int(buckets)
        self.embed = nn.Embedding(self.buckets, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) ids -> (B, dim)
        _check_ids(x, self.buckets, "text-transformer")
        x = _trim(x)
        pad = x == 0  # (B, T)
        t = self.embed(x) + self.pos[:, : x.shape[1]]  # (B, T, D)
        for blk in self.blocks:
            h = blk.norm1(t)
            # an all-padding row would make attention NaN: let it attend to its first slot
            mask = pad.clone()
            mask[:, 0] = False
            t = t + blk.attn(h, h, h, key_padding_mask=mask, need_weights=False)[0]
            t = t + blk.mlp(blk.norm2(t))
        keep = (~pad).unsqueeze(-1).to(t.dtype)  # (B, T, 1)
        return self.norm((t * keep).sum(1) / keep.sum(1).clamp_min(1.0))


@register_model("text-transformer")
def text_transformer(input_shape: tuple[int, ...], num_classes: int, buckets: int = 2**17, dim: int = 64,
                     depth: int = 2, heads: int = 4) -> TextTransformer:
    """Small transformer encoder over the token ids (learned positions, mean pooling)."""
    length = _token_length(input_shape, "text-transformer")
    if buckets < 2:
        raise param_error("buckets", "an int in the range [2, inf)", buckets)
    if dim < 1 or heads < 1 or dim % heads:
        raise GranularityError(f"The 'dim' parameter of model 'text-transformer' must be a multiple of heads={heads}. Got {dim} instead.")
    if depth < 1:
        raise param_error("depth", "an int in the range [1, inf)", depth)
    return TextTransformer(buckets, max(1, length), dim, depth, heads, num_classes)
