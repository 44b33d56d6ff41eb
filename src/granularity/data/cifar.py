"""CIFAR-100 from its python pickles (``cifar-100-python/{meta,train,test}``).

The 20 superclasses come from the files themselves (``meta``'s ``coarse_label_names`` and each
record's ``coarse_labels``), not from a typed map. Pickles can run code when loaded: load only
files from a source you trust (the official tarball).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granularity.data.base import RealDataset, Split
from granularity.errors import DataError
from granularity.hierarchy.builders import int_labels

NAME = "cifar100"
VERSION = "python-pickle-1"
FOLDER = "cifar-100-python"


def _str(v: Any) -> Any:
    return v.decode("latin1") if isinstance(v, bytes) else v


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with ``str`` keys (files pickled by Python 2 or 3)."""
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"CIFAR-100 file {path} not found.") from None
    except IsADirectoryError:
        raise DataError(f"CIFAR-100 file {path} is a folder, not a pickle file.") from None
    except OSError as exc:
        raise DataError(f"Cannot read CIFAR-100 file {path}: {exc.strerror or exc}.") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises almost anything (MemoryError too)
        reason = " ".join(str(exc).split())[:200] or "no detail"
        raise DataError(
            f"CIFAR-100 file {path} is truncated or not a CIFAR pickle ({type(exc).__name__}: {reason}); "
            "extract cifar-100-python.tar.gz again."
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-100 file {path} must hold a dict; got {type(obj).__name__}.")
    return {_str(k): v for k, v in obj.items()}


def find_folder(root: str | Path | None) -> Path:
    if root is None:
        raise DataError(
            "The 'root' parameter is required for cifar100: a folder holding cifar-100-python/ "
            "(from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted)."
        )
    root = Path(root).expanduser()
    for folder in (root, root / FOLDER):
        if all((folder / f).is_file() for f in ("meta", "train", "test")):
            return folder
    raise DataError(
        f"CIFAR-100 files meta, train, test not found in {root} or {root / FOLDER}; extract "
        "cifar-100-python.tar.gz there."
    )


def _names(meta: dict[str, Any], path: Path, key: str) -> list[str]:
    """The class names stored under ``key`` of the meta file: a non-empty list of distinct strings."""
    if key not in meta:
        raise DataError(f"CIFAR-100 file {path} has no {key!r} entry.")
    values = meta[key]
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, (str, bytes)) for v in values):
        raise DataError(f"CIFAR-100 file {path}: {key!r} must be a non-empty list of class names.")
    names = [_str(n) for n in values]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"CIFAR-100 file {path}: {key!r} lists {dup[0]!r} more than once.")
    return names


def _split(folder: Path, part: str, n_fine: int, n_coarse: int) -> tuple[Split, np.ndarray, np.ndarray]:
    path = folder / part
    d = read_pickle(path)
    for key in ("data", "fine_labels", "coarse_labels"):
        if key not in d:
            raise DataError(f"CIFAR-100 file {path} has no {key!r} entry (keys: {', '.join(sorted(d))}).")
    data = np.asarray(d["data"])
    fine = int_labels(d["fine_labels"], "fine_labels", path)
    coarse = int_labels(d["coarse_labels"], "coarse_labels", path)
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
    meta = read_pickle(folder / "meta")
    fine_names = _names(meta, folder / "meta", "fine_label_names")
    coarse_names = _names(meta, folder / "meta", "coarse_label_names")
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
