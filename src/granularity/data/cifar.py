"""CIFAR-100 from its python pickles (``cifar-100-python/{meta,train,test}``).

The 20 superclasses come from the files themselves (``meta``'s ``coarse_label_names`` and each
record's ``coarse_labels``), not from a typed map. Pickles can run code when loaded: load only
files from a source you trust (the official tarball).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from granularity.data.base import RealDataset, Split
from granularity.errors import DataError
from granularity.hierarchy.builders import (
    cifar_class_names,
    cifar_entry,
    find_cifar100_dir,
    int_labels,
    read_cifar_pickle,
)

NAME = "cifar100"
VERSION = "python-pickle-1"


def find_folder(root: str | Path | None) -> Path:
    if root is None:
        raise DataError(
            "The 'root' parameter is required for cifar100: a folder holding cifar-100-python/ "
            "(from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted)."
        )
    return find_cifar100_dir(root, ("meta", "train", "test"))


def _split(folder: Path, part: str, n_fine: int, n_coarse: int) -> tuple[Split, np.ndarray, np.ndarray]:
    path = folder / part
    d = read_cifar_pickle(path)
    data, fine, coarse = (cifar_entry(d, key, path) for key in ("data", "fine_labels", "coarse_labels"))
    data = np.asarray(data)
    fine = int_labels(fine, "fine_labels", path)
    coarse = int_labels(coarse, "coarse_labels", path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR-100 file {path}: 'data' must be uint8 (N, 3072); got {data.dtype} {data.shape}.")
    if not len(fine) == len(coarse) == len(data):
        raise DataError(
            f"CIFAR-100 file {path}: {len(data)} images but {len(fine)} fine and {len(coarse)} coarse labels."
        )
    for arr, n, key in ((fine, n_fine, "fine_labels"), (coarse, n_coarse, "coarse_labels")):
        if len(arr) and (arr.min() < 0 or arr.max() >= n):
            raise DataError(f"CIFAR-100 file {path}: {key} outside 0..{n - 1}.")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (N, 3072) -> (N, C, H, W)
    return Split(x, torch.from_numpy(fine)), fine, coarse


def load_cifar100(root: str | Path | None = None) -> RealDataset:
    """Load CIFAR-100 as uint8 ``(N, 3, 32, 32)`` tensors, 100 fine classes under 20 coarse.

    Parameters
    ----------
    root : folder
        Holds ``cifar-100-python/`` or the files ``meta``, ``train``, ``test`` themselves.
    """
    folder = find_folder(root)
    meta = read_cifar_pickle(folder / "meta")
    fine_names = cifar_class_names(meta, folder / "meta", "fine_label_names")
    coarse_names = cifar_class_names(meta, folder / "meta", "coarse_label_names")
    train, ftr, ctr = _split(folder, "train", len(fine_names), len(coarse_names))
    test, fte, cte = _split(folder, "test", len(fine_names), len(coarse_names))
    fine_all, coarse_all = np.concatenate([ftr, fte]), np.concatenate([ctr, cte])
    pairs = np.unique(np.stack([fine_all, coarse_all], 1), axis=0)
    dup = np.flatnonzero(np.bincount(pairs[:, 0], minlength=len(fine_names)) > 1)
    if len(dup):
        parents = sorted({coarse_names[c] for f, c in pairs if f == dup[0]})
        raise DataError(
            f"CIFAR-100 in {folder}: fine class {fine_names[dup[0]]!r} appears under several "
            f"coarse classes ({', '.join(parents)}); the files are inconsistent."
        )
    parent_of = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))

    def factory():
        from granularity.hierarchy import cifar100_hierarchy

        return cifar100_hierarchy(folder)

    return RealDataset(
        name=NAME,
        version=VERSION,
        train=train,
        test=test,
        leaf_names=fine_names,
        hierarchy_factory=factory,
        info={"root": str(folder), "coarse_names": coarse_names, "coarse_of_fine": parent_of},
    )
