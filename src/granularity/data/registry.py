"""Registry of data sets by name and :func:`load_dataset`.

Loaders are imported lazily (``"module:function"``) so importing :mod:`granularity.data` stays
cheap. Each loader returns a :class:`~granularity.data.base.RealDataset`; its keyword options
are checked here so a misspelt option gives a one-line error with a suggestion.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from granularity.data.base import RealDataset
from granularity.errors import GranularityError, param_error, suggest, unknown_name


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: its loader (``"module:function"``) and a one-line description."""

    name: str
    loader: str
    description: str

    def load_function(self) -> Callable[..., RealDataset]:
        module, attr = self.loader.split(":")
        return getattr(importlib.import_module(module), attr)

    def options(self) -> list[str]:
        """Keyword options the loader accepts (besides ``root``)."""
        params = inspect.signature(self.load_function()).parameters
        return [p for p in params if p != "root"]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "fashion-mnist",
            "granularity.data.fashion_mnist:load_fashion_mnist",
            "Fashion-MNIST, 70k 28x28 greyscale product images, 10 classes (IDX files).",
        ),
        DatasetSpec(
            "cifar100",
            "granularity.data.cifar:load_cifar100",
            "CIFAR-100 python pickles (cifar-100-python/{meta,train,test}); 20 superclasses.",
        ),
        DatasetSpec(
            "image-folder",
            "granularity.data.image_folder:load_image_folder",
            "Image-folder tree root/train/<class>/*, root/val/<class>/* (ImageNet-1k/21k layout).",
        ),
        DatasetSpec(
            "inat2021",
            "granularity.data.inat:load_inat2021",
            "iNaturalist 2021: train.json/val.json (COCO style) plus image folders; taxonomy ranks.",
        ),
        DatasetSpec(
            "table",
            "granularity.data.arrays:load_table",
            "CSV/Parquet table: feature columns plus one label column per level (coarse -> fine).",
        ),
        DatasetSpec(
            "wordnet-glosses",
            "granularity.data.wordnet_glosses:load_wordnet_glosses",
            "WordNet 3.0 noun glosses (offline, Debian wordnet-base): text in, hypernym path as labels, every depth a level.",
        ),
        DatasetSpec(
            "npz",
            "granularity.data.arrays:load_npz",
            ".npz of features with one label array per level (coarse -> fine).",
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise unknown_name("data set", name, DATASETS)
    return DATASETS[name]


def load_dataset(
    name: str,
    root: Any = None,
    subset: int | None = None,
    seed: int = 0,
    *,
    test_subset: int | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> RealDataset:
    """Load a registered data set.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS` (``fashion-mnist``, ``cifar100``, ``image-folder``,
        ``inat2021``, ``table``, ``wordnet-glosses``, ``npz``).
    root : path, optional
        Folder (or file, for ``table``/``npz``) to load from; ``fashion-mnist`` also searches
        standard places when it is ``None``.
    subset : int, optional
        Number of training samples to keep (stratified by leaf label, drawn with ``seed``).
    seed : int
        Seed of the subset draw (and of random train/test splits of tables).
    test_subset : int, optional
        Number of test samples to keep (stratified, seeded).
    device : str or torch.device, optional
        Move in-memory tensors there.
    **options
        Loader-specific options (see each loader's docstring); unknown ones are an error.
    """
    spec = get_spec(name)
    fn = spec.load_function()
    params = inspect.signature(fn).parameters
    valid = [p for p in params if p != "root"]
    for key in options:
        if key not in params or key == "root":
            raise GranularityError(
                f"Unknown option {key!r} for data set {name!r}{suggest(key, valid)}; "
                f"valid options are: {', '.join(valid) or '(none)'}."
            )
    if "seed" in params:
        options["seed"] = seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise param_error("seed", "an integer", seed)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise param_error("root", "a path (str or pathlib.Path) or None", root)
    ds = fn(root=root, **options)
    if subset is not None or test_subset is not None:
        ds = ds.subset(train=subset, test=test_subset, seed=seed)
    if device is not None:
        ds = ds.to(device)
    return ds
