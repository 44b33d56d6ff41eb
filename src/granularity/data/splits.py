"""Disjoint pretraining / transfer / validation splits of one training file.

The paper pretrains and transfers on different data; a study that transfers on the images it
pretrained on cannot tell a better representation from memorised images. :func:`disjoint_splits`
draws, from one seeded permutation, a transfer split with exactly ``n`` images per *target*
class (the largest of the swept sizes; smaller sizes are its per-class prefixes, so few-shot
splits are nested), a validation split and a pretraining split, pairwise disjoint.
"""

from __future__ import annotations

import numpy as np

from granularity.errors import GranularityError


def per_class_prefix(order: np.ndarray, labels: np.ndarray, n_per_class: int) -> np.ndarray:
    """The first ``n_per_class`` entries of ``order`` of each class of ``labels[order]``, in
    ``order``'s order (so a smaller ``n_per_class`` gives a subset of a larger one)."""
    lab = np.asarray(labels)[order]
    keep = np.zeros(len(order), dtype=bool)
    for c in np.unique(lab):
        keep[np.flatnonzero(lab == c)[:n_per_class]] = True
    return order[keep]


def disjoint_splits(target: np.ndarray, leaf: np.ndarray, *, transfer_per_class: int, val: int, pretrain: int | None,
                    seed: int) -> dict[str, np.ndarray]:
    """Index arrays ``transfer``, ``val``, ``pretrain`` into the training file, pairwise disjoint.

    ``transfer`` is in draw order: ``per_class_prefix(transfer, target[transfer], k)`` is the
    nested k-per-class subset; ``val`` and ``pretrain`` are sorted.

    Parameters
    ----------
    target, leaf : (N,) int arrays
        Target (coarse) and leaf label of every training image.
    transfer_per_class : int
        Transfer images per target class (0: no transfer split).
    val : int
        Validation images (leaf-stratified).
    pretrain : int or None
        Pretraining images (leaf-stratified); None: every image left.
    seed : int
        The draw (the same seed gives the same splits).
    """
    from granularity.data.base import stratified_indices

    target, leaf = np.asarray(target), np.asarray(leaf)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(target))
    counts = np.bincount(target)
    if transfer_per_class > counts[counts > 0].min():
        raise GranularityError(
            f"The 'transfer_per_class' parameter must be at most {counts[counts > 0].min()} (the smallest target class). Got {transfer_per_class} instead."
        )
    transfer = per_class_prefix(order, target, transfer_per_class) if transfer_per_class else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(target)), transfer)
    need = val + (pretrain or 0)
    if need > len(rest) or (pretrain is None and val >= len(rest)):
        raise GranularityError(
            f"The splits need {need} images besides the {len(transfer)} transfer images, but the training file has {len(rest)} left; "
            "lower 'pretrain_size', 'val_size' or 'transfer_per_class'."
        )
    val_idx = rest[np.asarray(stratified_indices(leaf[rest], val, seed + 1))] if val else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(rest, val_idx)
    if pretrain is None or pretrain == len(rest):
        pre = rest
    else:
        pre = rest[np.asarray(stratified_indices(leaf[rest], pretrain, seed + 2))]
    return {"transfer": transfer, "val": np.sort(val_idx), "pretrain": np.sort(pre)}
