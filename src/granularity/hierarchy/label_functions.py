"""Label functions that are not a given hierarchy (the paper's controls).

* :func:`kmeans_within`: k-means on embeddings inside each coarse (target) class, so the
  cluster labels nest in the target: an *aligned* finer label function.
* :func:`kmeans_global`: k-means over the whole data set, ignoring the target: *not aligned*.
* :func:`random_labels`: uniformly random labels with a given number of classes.
* :func:`per_sample_labels`: one label per sample (the extreme of fine granularity).

Each returns a :class:`LabelFunction` with the labels, the hierarchy they imply and a record of
how they were made (``meta``: kind, parameters, seed) to store with every result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from granularity.errors import GranularityError, param_error
from granularity.hierarchy.structure import LabelHierarchy


class LabelFunction:
    """Labels for a data set plus how they were made.

    Attributes
    ----------
    labels : np.ndarray
        ``(n,)`` int64 labels in ``0..num_classes-1``.
    num_classes : int
    hierarchy : LabelHierarchy or None
        The tree the labels imply (its leaves are the ``num_classes`` labels). For
        :func:`kmeans_within` it nests in the coarse target (levels root - coarse - clusters);
        for the others it is flat (root -> classes): they do not nest in the target. Built
        when first read when given as a function: a caller that only needs the labels (the
        engine) never builds the flat tree of one class per sample.
    meta : dict
        ``kind``, ``parameters``, ``seed`` and build facts (e.g. clusters per class).
    """

    def __init__(self, labels: np.ndarray, num_classes: int,
                 hierarchy: LabelHierarchy | Callable[[], LabelHierarchy] | None,
                 meta: dict[str, Any] | None = None):
        self.labels = labels
        self.num_classes = num_classes
        self._hierarchy = hierarchy
        self.meta = meta if meta is not None else {}

    @property
    def hierarchy(self) -> LabelHierarchy | None:
        if callable(self._hierarchy):
            self._hierarchy = self._hierarchy()
        return self._hierarchy

    def record(self) -> dict[str, Any]:
        """What a result file should store about this label function."""
        return {
            **self.meta,
            "num_classes": self.num_classes,
            "hierarchy_hash": self.hierarchy.content_hash if self.hierarchy is not None else None,
        }


def _embeddings(x: Any) -> np.ndarray:
    e = np.asarray(x, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise param_error("embeddings", "a non-empty 2-D array (n samples, D features)", f"shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise param_error("embeddings", "finite values", "NaN or inf entries")
    return e


def _int_labels(x: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(x).ravel()
    if y.shape[0] != n:
        raise param_error(what, f"an array of length {n} (one per sample)", f"length {y.shape[0]}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise param_error(what, "non-negative integer labels", f"dtype {y.dtype}")
    return y.astype(np.int64)


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise param_error(name, "an int >= 1", v)
    return int(v)


def _flat(n_classes: int, prefix: str, name: str, meta: dict[str, Any]) -> LabelHierarchy:
    leaves = [f"{prefix}{i}" for i in range(n_classes)]
    return LabelHierarchy(
        {leaf: "root" for leaf in leaves}, "root", leaves, name=name,
        level_names=["root", prefix.rstrip("_")], meta=meta,
    )


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int) -> tuple[np.ndarray, float]:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    labels = km.fit_predict(x)
    # relabel clusters by first occurrence so the labelling does not depend on sklearn's order
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(k, dtype=np.int64)
    remap[np.unique(labels)[order]] = np.arange(len(order))
    return remap[labels], float(km.inertia_)


def allocate_clusters(total: int, sizes: Sequence[int], capacity: Sequence[int]) -> list[int]:
    """``total`` clusters spread over classes: ``total // g`` each, the remainder one more to
    the largest classes (ties: lower index), never more than a class's ``capacity`` (its
    distinct points; what a class cannot take goes to the next largest). Classes of size 0
    get none. Refuses (one line) a total outside ``[classes with samples, sum(capacity)]``."""
    sizes, cap = np.asarray(sizes, dtype=np.int64), np.asarray(capacity, dtype=np.int64)
    present = int((sizes > 0).sum())
    if not present <= total <= int(cap.sum()):
        raise param_error("num_clusters", f"at least one per class with samples ({present}) and at most the "
                          f"{int(cap.sum())} distinct points", total)
    out = np.where(sizes > 0, np.minimum(total // max(present, 1), cap), 0)
    order = sorted(np.flatnonzero(sizes > 0), key=lambda c: (-sizes[c], c))
    while out.sum() < total:  # one more to the largest classes that can still take one
        for c in order:
            if out.sum() < total and out[c] < cap[c]:
                out[c] += 1
    return [int(v) for v in out]


def kmeans_within(
    embeddings: Any,
    coarse_labels: Any,
    clusters_per_class: int | None = None,
    seed: int | None = None,
    *,
    num_clusters: int | None = None,
    coarse_names: Sequence[str] | None = None,
    n_init: int = 1,
) -> LabelFunction:
    """k-means inside each coarse class: finer labels aligned with the target.

    Give either ``clusters_per_class`` (class ``c`` gets ``min(clusters_per_class, distinct
    points of c)`` clusters) or ``num_clusters``, exactly that many in total, spread by
    :func:`allocate_clusters`. Labels are numbered class by class (all clusters of class 0,
    then of class 1, ...). A coarse class with no samples (in ``0..max label`` or
    ``coarse_names``) gets one empty cluster with ``clusters_per_class`` (so level 1 of the
    implied hierarchy stays the target's label order: ``hierarchy.relabel(labels, 1) ==
    coarse_labels``) and none with ``num_clusters``. Each class uses seed ``seed + c``.
    """
    x = _embeddings(embeddings)
    y = _int_labels(coarse_labels, x.shape[0], "coarse_labels")
    if seed is None:
        raise param_error("seed", "an int", None)
    if (clusters_per_class is None) == (num_clusters is None):
        raise GranularityError("kmeans_within needs exactly one of 'clusters_per_class' and 'num_clusters'.")
    n_coarse = len(coarse_names) if coarse_names is not None else int(y.max()) + 1
    if int(y.max()) >= n_coarse:
        raise param_error("coarse_names", f"at least {int(y.max()) + 1} names", n_coarse)
    cnames = [str(c) for c in coarse_names] if coarse_names is not None else [f"coarse_{c}" for c in range(n_coarse)]
    members = [np.flatnonzero(y == c) for c in range(n_coarse)]
    distinct = [len(np.unique(x[idx], axis=0)) if idx.size else 0 for idx in members]
    if num_clusters is not None:
        k = _positive("num_clusters", num_clusters)
        alloc = allocate_clusters(k, [idx.size for idx in members], distinct)
        params: dict[str, Any] = {"num_clusters": k}
    else:
        k = _positive("clusters_per_class", clusters_per_class)
        alloc = [1 if idx.size == 0 else min(k, d) for idx, d in zip(members, distinct)]
        params = {"clusters_per_class": k}
    labels = np.empty(x.shape[0], dtype=np.int64)
    inertia, offset = 0.0, 0
    parent: dict[str, str] = {}
    leaves: list[str] = []
    for c, (idx, kc) in enumerate(zip(members, alloc)):
        sub, inert = _kmeans(x[idx], kc, seed + c, n_init) if kc > 1 else (np.zeros(idx.size, dtype=np.int64), 0.0)
        inertia += inert
        labels[idx] = offset + sub
        for j in range(kc):
            leaves.append(f"{cnames[c]}/k{j}")
            parent[leaves[-1]] = cnames[c]
        parent[cnames[c]] = "root"
        offset += kc
    meta = {
        "kind": "kmeans_within",
        "parameters": {**params, "n_init": n_init, "num_coarse": n_coarse},
        "seed": int(seed),
        "clusters_per_class_used": alloc,
        "inertia": inertia,
        "aligned": True,
    }
    h = LabelHierarchy(
        parent, "root", leaves, cnames, name=f"kmeans_within_k{k}_s{seed}",
        level_names=["root", "coarse", "cluster"], meta=meta,
    )
    return LabelFunction(labels, offset, h, meta)


def kmeans_global(
    embeddings: Any,
    num_clusters: int,
    seed: int,
    coarse_labels: Any = None,
    *,
    n_init: int = 1,
) -> LabelFunction:
    """k-means over the whole data set, ignoring the target (not aligned).

    The clusters do not nest in the coarse classes, so the implied hierarchy is flat
    (root -> clusters). Given ``coarse_labels``, ``meta`` records how far the clusters are from
    nesting: ``purity`` (share of samples in their cluster's majority coarse class; 1.0 means
    every cluster lies inside one coarse class) and ``nmi``.
    """
    x = _embeddings(embeddings)
    k = _positive("num_clusters", num_clusters)
    if k > len(np.unique(x, axis=0)):
        raise param_error("num_clusters", f"at most the {len(np.unique(x, axis=0))} distinct points", k)
    labels, inertia = _kmeans(x, k, seed, n_init) if k > 1 else (np.zeros(x.shape[0], dtype=np.int64), 0.0)
    meta: dict[str, Any] = {
        "kind": "kmeans_global",
        "parameters": {"num_clusters": k, "n_init": n_init},
        "seed": int(seed),
        "inertia": inertia,
        "aligned": False,
    }
    if coarse_labels is not None:
        from sklearn.metrics import normalized_mutual_info_score

        y = _int_labels(coarse_labels, x.shape[0], "coarse_labels")
        table = np.zeros((k, int(y.max()) + 1), dtype=np.int64)
        np.add.at(table, (labels, y), 1)
        meta["purity"] = float(table.max(axis=1).sum() / x.shape[0])
        meta["nmi"] = float(normalized_mutual_info_score(y, labels))
    h = _flat(k, "cluster_", f"kmeans_global_k{k}_s{seed}", meta)
    return LabelFunction(labels, k, h, meta)


def random_labels(n: int, num_classes: int, seed: int) -> LabelFunction:
    """``n`` labels drawn uniformly from ``num_classes`` classes (``np.random.default_rng(seed)``).

    They carry no information about the images and do not nest in any target: the implied
    hierarchy is flat (root -> classes).
    """
    n = _positive("n", n)
    k = _positive("num_classes", num_classes)
    if k > n:
        raise param_error("num_classes", f"at most the number of samples {n} (every class gets one)", k)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n, dtype=np.int64)
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:  # every class gets a sample: each empty class takes one from a class with >= 2
        donors = np.repeat(np.arange(k), np.maximum(counts - 1, 0))  # spare samples, by class
        taken = rng.choice(donors.size, size=empty.size, replace=False)
        for cls, d in zip(empty, np.sort(taken)):
            pool = np.flatnonzero(labels == donors[d])
            labels[pool[rng.integers(pool.size)]] = cls
    meta = {"kind": "random", "parameters": {"n": n, "num_classes": k}, "seed": int(seed), "aligned": False}
    return LabelFunction(labels, k, lambda: _flat(k, "random_", f"random_{k}_s{seed}", meta), meta)


def per_sample_labels(n: int) -> LabelFunction:
    """One label per sample (label ``i`` for sample ``i``): the finest possible labels.

    Every sample is its own class; the implied hierarchy is flat (root -> n samples). It nests
    trivially in any target, but a coarse level needs the targets, so none is built here.
    """
    n = _positive("n", n)
    if n > 2_000_000:
        raise GranularityError(f"per_sample_labels: n={n} is too many classes to build a hierarchy for (max 2,000,000).")
    meta = {"kind": "per_sample", "parameters": {"n": n}, "seed": None, "aligned": True}
    return LabelFunction(np.arange(n, dtype=np.int64), n, lambda: _flat(n, "sample_", f"per_sample_{n}", meta), meta)
