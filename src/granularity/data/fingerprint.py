"""Data fingerprints: what a run trained and tested on, so a run folder is never reused for other data.

:func:`data_fingerprint` records the data set's name and version, the loader options, the split
sizes, a hash of the labels, of the leaf names and of the hierarchy, and a content hash:

* in-memory splits: sha256 of the train and test tensors' bytes (dtype and shape included);
* streamed splits: sha256 of each image file's path, size and modification time (decoding
  every image would cost as much as an epoch).

``fingerprint`` (one sha256 over all of these) is what runs compare; ``files`` is the cheap stamp
of the data files under ``data_root`` (names, sizes, mtimes), which a sweep can compute before
running a cell to see that a finished run's files have changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _tensor_hash(h: Any, t: torch.Tensor) -> None:
    a = np.ascontiguousarray(t.detach().cpu().numpy())
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))


def _split_hash(h: Any, split: Any) -> str:
    if getattr(split, "in_memory", True):
        _tensor_hash(h, split.x)
        for name, v in sorted(getattr(split, "variants", {}).items()):  # e.g. a planted cue's easy/hard images
            h.update(f"variant {name}".encode())
            _tensor_hash(h, v)
        return "sha256 of the input tensors"
    # image files, or (a split of tar shards: paths are "shard:member") the shard files once each
    files = getattr(split, "shards", None) or split.paths
    for path in files:
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if files is not split.paths:  # which members, in which order, at which offsets
        h.update("\n".join(split.paths).encode())
        for attr in ("offset", "nbytes"):
            if hasattr(split, attr):
                h.update(np.ascontiguousarray(getattr(split, attr), dtype=np.int64).tobytes())
    h.update(f"{split.channels}x{split.size}".encode())
    return "sha256 of the image files' paths, sizes and mtimes"


def files_stamp(root: str | os.PathLike | None) -> str | None:
    """sha256 of the relative names, sizes and mtimes of the file ``root`` or the files under it
    (``None`` when there is no such path: a data set found in its default place)."""
    if root is None:
        return None
    root = Path(root).expanduser()
    if not root.exists():
        return None
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root) if p != root else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def data_fingerprint(ds: Any, options: dict[str, Any] | None = None, root: Any = None) -> dict[str, Any]:
    """The fingerprint of data set ``ds`` (a :class:`~granularity.data.base.RealDataset`) loaded
    with ``options`` from ``root``; see the module docstring. JSON-ready."""
    labels = hashlib.sha256()
    for split in (ds.train, ds.test):
        _tensor_hash(labels, split.y)
    content = hashlib.sha256()
    kind = {_split_hash(content, ds.train), _split_hash(content, ds.test)}
    rec: dict[str, Any] = {
        "name": ds.name,
        "version": getattr(ds, "version", None),
        "options": dict(options or {}),
        "n_train": len(ds.train),
        "n_test": len(ds.test),
        "input_shape": [int(s) for s in ds.input_shape],
        "leaf_names_sha256": hashlib.sha256("\n".join(map(str, ds.leaf_names)).encode()).hexdigest(),
        "labels_sha256": labels.hexdigest(),
        "hierarchy_hash": getattr(ds.hierarchy, "content_hash", None),
        "content_sha256": content.hexdigest(),
        "content": " + ".join(sorted(kind)),
    }
    rec["fingerprint"] = hashlib.sha256(json.dumps(rec, sort_keys=True, default=str).encode()).hexdigest()
    rec["root"] = None if root is None else str(root)
    rec["files"] = files_stamp(root)
    return rec


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the recorded parts in which two fingerprints differ."""
    keys = [k for k in new if k not in ("fingerprint", "root", "files", "content")]
    return [k for k in keys if old.get(k) != new.get(k)] or ["fingerprint"]
