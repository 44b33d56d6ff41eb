"""Source label functions for pretraining, named by short strings (the CLI's vocabulary).

``target`` | ``level:L`` | ``leaf`` | ``kmeans-within:K`` | ``kmeans-global:K`` | ``random:K`` |
``per-sample``. Hierarchy levels are relabelled through the data set's
:class:`~granularity.hierarchy.LabelHierarchy`; the other label functions come from
:mod:`granularity.hierarchy.label_functions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from granularity.errors import GranularityError, suggest

KINDS = ("target", "level", "leaf", "kmeans-within", "kmeans-global", "random", "per-sample")
_NEEDS_K = ("kmeans-within", "kmeans-global", "random")


@dataclass
class SourceLabels:
    """Pretraining labels of the training set."""

    labels: np.ndarray  # (N_train,) int64 in [0, num_classes)
    num_classes: int
    spec: str
    family: str  # for plots: "target", "hierarchy", "kmeans-within", ...
    meta: dict[str, Any] = field(default_factory=dict)


def parse_source(spec: str) -> tuple[str, int | None]:
    """Split ``"kmeans-within:40"`` into ``("kmeans-within", 40)``, with one-line errors."""
    kind, _, arg = str(spec).partition(":")
    allowed = "target, leaf, level:L, kmeans-within:K, kmeans-global:K, random:K, per-sample"
    if kind not in KINDS:
        raise GranularityError(
            f"Unknown source label function {spec!r}{suggest(kind, KINDS)}; valid ones are: {allowed}."
        )
    if kind in _NEEDS_K or kind == "level":
        try:
            k = int(arg)
        except ValueError:
            raise GranularityError(
                f"The source label function {spec!r} needs a positive integer after ':' (for example {kind}:{'2' if kind == 'level' else '40'})."
            ) from None
        if k < 1:
            raise GranularityError(f"The number in source label function {spec!r} must be >= 1. Got {k} instead.")
        return kind, k
    if arg:
        raise GranularityError(f"The source label function {kind!r} takes no ':' argument. Got {spec!r} instead.")
    return kind, None


def _lf_result(lf: Any) -> tuple[np.ndarray, int, dict]:
    labels = np.asarray(getattr(lf, "labels", lf), dtype=np.int64)
    k = int(getattr(lf, "num_classes", int(labels.max()) + 1 if labels.size else 0))
    meta = {**(getattr(lf, "meta", {}) or {}), "num_classes": k}  # the number made, recorded
    return labels, k, meta


def build_source_labels(
    spec: str,
    hierarchy: Any,
    leaf_labels: np.ndarray,
    target_level: int,
    embeddings: Callable[[], np.ndarray],
    seed: int,
) -> SourceLabels:
    """Pretraining labels for the training set.

    Parameters
    ----------
    spec : str
        Label function name, see :func:`parse_source`.
    hierarchy : LabelHierarchy
        The data set's hierarchy (leaf labels -> any level).
    leaf_labels : ndarray of shape (N,)
        Leaf labels of the training set.
    target_level : int
        Level of the downstream task (k-means-within clusters inside its classes).
    embeddings : callable
        Returns ``(N, d)`` embeddings of the training set; only called for k-means labels.
    seed : int
        Seed of k-means and of random labels.
    """
    from granularity.hierarchy import label_functions as lfs

    kind, k = parse_source(spec)
    depth = int(hierarchy.depth)
    leaf_labels = np.asarray(leaf_labels, dtype=np.int64)
    if kind in ("target", "level", "leaf"):
        level = {"target": target_level, "leaf": depth}.get(kind, k)
        if not 1 <= level <= depth:
            raise GranularityError(
                f"The source level in {spec!r} must be in the range [1, {depth}] for this hierarchy. Got {level} instead."
            )
        labels = np.asarray(hierarchy.relabel(leaf_labels, level), dtype=np.int64)
        fam = "target" if kind == "target" else "hierarchy"
        n = int(hierarchy.num_classes(level))
        return SourceLabels(labels, n, spec, fam, {"kind": "level", "level": level, "num_classes": n})
    if kind == "per-sample":
        labels, n, meta = _lf_result(lfs.per_sample_labels(len(leaf_labels)))
        return SourceLabels(labels, n, spec, kind, {"kind": kind, **meta})
    if kind == "random":
        labels, n, meta = _lf_result(lfs.random_labels(len(leaf_labels), k, seed=seed))
        return SourceLabels(labels, n, spec, kind, {"kind": kind, **meta})
    if kind == "kmeans-within":
        coarse = np.asarray(hierarchy.relabel(leaf_labels, target_level), dtype=np.int64)
        g = int(hierarchy.num_classes(target_level))
        if k < g:  # checked before the (possibly expensive) embeddings are computed
            raise GranularityError(
                f"The 'source' parameter {spec!r} needs at least one cluster per target class: K >= {g} "
                f"(target level {target_level} has {g} classes). Got K={k} instead."
            )
        emb = embeddings()
        # K clusters in total: K // g per target class, the remainder to the largest classes
        labels, n, meta = _lf_result(lfs.kmeans_within(emb, coarse, seed=seed, num_clusters=k))
    else:
        emb = embeddings()
        labels, n, meta = _lf_result(lfs.kmeans_global(emb, k, seed=seed, coarse_labels=hierarchy.relabel(leaf_labels, target_level)))
    return SourceLabels(labels, n, spec, kind, {"kind": kind, "k_requested": k, **meta})


def group_map(fine: np.ndarray, coarse: np.ndarray, num_fine: int) -> np.ndarray | None:
    """``map[c]`` = the coarse class of fine class ``c`` if the fine labels nest in the coarse
    ones on these samples (every fine class has one coarse label), else ``None``.
    Fine classes without samples map to -1 (they are left out of the coarse logsumexp)."""
    fine = np.asarray(fine, dtype=np.int64)
    coarse = np.asarray(coarse, dtype=np.int64)
    out = np.full(num_fine, -1, dtype=np.int64)
    out[fine] = coarse
    if np.any(out[fine] != coarse):  # some fine class carries two coarse labels
        return None
    return out
