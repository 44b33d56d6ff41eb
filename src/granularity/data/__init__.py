"""Real data sets: loaders, in-memory/streamed splits, stratified subsets and rare classes.

>>> from granularity.data import load_dataset, DATASETS
>>> ds = load_dataset("fashion-mnist", subset=2000, seed=0)   # doctest: +SKIP
>>> ds.train.x.shape, ds.train.y.dtype, ds.hierarchy          # doctest: +SKIP
"""

from granularity.data.base import (
    LazyImageDataset,
    RealDataset,
    Split,
    StreamSplit,
    channel_stats,
    decode_image,
    make_rare,
    stratified_indices,
)
from granularity.data.registry import DATASETS, DatasetSpec, get_spec, load_dataset

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "LazyImageDataset",
    "RealDataset",
    "Split",
    "StreamSplit",
    "channel_stats",
    "decode_image",
    "get_spec",
    "load_dataset",
    "make_rare",
    "stratified_indices",
]
