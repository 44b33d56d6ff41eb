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


class SourceSpec(str):
    """A source label function, parsed once: the string itself (as written in configs and
    results, e.g. ``"kmeans-within:40"``) with ``kind`` (one of :data:`KINDS`) and ``k`` (the
    number after ':', or None). ``TransferConfig.source`` holds one; :func:`check_source`,
    :func:`build_source_labels` and the run's class count read its fields."""

    kind: str
    k: int | None

    def __new__(cls, spec: str) -> SourceSpec:
        if isinstance(spec, SourceSpec):
            return spec
        kind, k = _parse(str(spec))
        obj = super().__new__(cls, str(spec))
        obj.kind, obj.k = kind, k
        return obj

    def __getnewargs__(self) -> tuple[str]:  # pickled (sweep workers, DDP) as its text
        return (str(self),)

    def level(self, target: int, depth: int) -> int | None:
        """The hierarchy level of ``target``/``level:L``/``leaf`` (None for the others)."""
        return {"target": target, "leaf": depth, "level": self.k}.get(self.kind)

    def num_classes(self, hierarchy: Any, target: int, n_train: int) -> int:
        """Classes of the pretraining head, known before any label function is computed."""
        level = self.level(target, int(hierarchy.depth))
        if level is not None:
            return int(hierarchy.num_classes(level))
        return int(n_train) if self.kind == "per-sample" else int(self.k)


def _parse(spec: str) -> tuple[str, int | None]:
    kind, _, arg = spec.partition(":")
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


def parse_source(spec: str) -> tuple[str, int | None]:
    """``(kind, k)`` of a source string (``"kmeans-within:40"`` -> ``("kmeans-within", 40)``),
    with one-line errors; see :class:`SourceSpec`."""
    src = SourceSpec(spec)
    return src.kind, src.k


def check_source(src: SourceSpec, hierarchy: Any, target: int, n_train: int, dataset: str | None = None) -> None:
    """The checks of a source that need the data (hierarchy depth, target classes, training
    size), made once, before any embedding or label is computed."""
    depth = int(hierarchy.depth)
    level = src.level(target, depth)
    if level is not None and not 1 <= level <= depth:
        where = f"data set {dataset!r}" if dataset else "this hierarchy"
        raise GranularityError(
            f"The source level in {str(src)!r} must be in the range [1, {depth}] for {where}. Got {level} instead."
        )
    n_target = int(hierarchy.num_classes(target)) if src.kind == "kmeans-within" else 0
    if src.kind == "kmeans-within" and src.k < n_target:
        raise GranularityError(
            f"The 'source' parameter {str(src)!r} needs at least one cluster per target class: K >= {n_target} "
            f"(target level {target} has {n_target} classes). Got K={src.k} instead."
        )
    if src.kind in ("kmeans-within", "kmeans-global", "random") and src.k > n_train:
        raise GranularityError(
            f"The 'source' parameter {str(src)!r} asks for more classes than training images ({n_train}, 'train_size'). Got K={src.k} instead."
        )


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
    *,
    check: bool = True,
) -> SourceLabels:
    """Pretraining labels for the training set.

    Parameters
    ----------
    spec : SourceSpec or str
        Label function, see :class:`SourceSpec`.
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
    check : bool
        Run :func:`check_source` first; False where the caller has run it (a run's
        :func:`~granularity.engine.inputs.check_plan`), so a source is checked once.
    """
    from granularity.hierarchy import label_functions as lfs

    src = SourceSpec(spec)
    leaf_labels = np.asarray(leaf_labels, dtype=np.int64)
    if check:  # before the (possibly expensive) embeddings
        check_source(src, hierarchy, target_level, len(leaf_labels))
    level = src.level(target_level, int(hierarchy.depth))
    if level is not None:
        labels = np.asarray(hierarchy.relabel(leaf_labels, level), dtype=np.int64)
        n = int(hierarchy.num_classes(level))
        fam = "target" if src.kind == "target" else "hierarchy"
        return SourceLabels(labels, n, str(src), fam, {"kind": "level", "level": level, "num_classes": n})
    if src.kind == "per-sample":
        labels, n, meta = _lf_result(lfs.per_sample_labels(len(leaf_labels)))
        return SourceLabels(labels, n, str(src), src.kind, {"kind": src.kind, **meta})
    if src.kind == "random":
        labels, n, meta = _lf_result(lfs.random_labels(len(leaf_labels), src.k, seed=seed))
        return SourceLabels(labels, n, str(src), src.kind, {"kind": src.kind, **meta})
    coarse = np.asarray(hierarchy.relabel(leaf_labels, target_level), dtype=np.int64)
    if src.kind == "kmeans-within":
        # K clusters in total: K // g per target class, the remainder to the largest classes
        lf = lfs.kmeans_within(embeddings(), coarse, seed=seed, num_clusters=src.k)
    else:
        lf = lfs.kmeans_global(embeddings(), src.k, seed=seed, coarse_labels=coarse)
    labels, n, meta = _lf_result(lf)
    return SourceLabels(labels, n, str(src), src.kind, {"kind": src.kind, "k_requested": src.k, **meta})


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
