"""A planted common feature ("cue") per coarse class: the theory's data model on real images.

Every coarse class ``g`` gets a small fixed binary pattern (``size`` x ``size`` pixels, seeded,
distinct between classes) that is blended into a fixed corner of the image with weight
``strength`` (1 = the pattern replaces the pixels there). In a training split exactly
``round(rho * n_g)`` images of each coarse class carry a cue; of those, exactly
``round(leak * k_g)`` carry the cue of another coarse class (drawn uniformly), the rest their
own class's cue. Coarse pretraining can solve its task from the cue alone; fine pretraining
cannot, since all fine classes of a group share it.

Test images are evaluated in two versions: *easy* (every image carries its own class's cue)
and *hard* (the original image, no cue). Hard images are cue-free by construction, whatever
the model; this is the theory's hard sample (the common feature is missing).

Two users share :func:`plant`: the study designs (:mod:`granularity.experiments.designs`, which
plant per split of one seed) and the ``cue`` data option of every in-memory image data set
(:func:`cue_dataset`, applied by :func:`granularity.data.load_dataset`; ``--data-option
cue.rho=0.9``), which plants once per data set, and again on a subset's own rows (:func:`replant`,
so ``train_size`` subsets carry rho exactly): the training and test images carry cues as
planned (rho, leak), and each split keeps its ``easy`` and ``hard`` versions row for row
(:attr:`granularity.data.base.Split.variants`), so the engine reports both errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import Field

from granularity.errors import GranularityError
from granularity.utils.config import Config

NO_CUE = -1


class CueConfig(Config):
    rho: float = Field(0.9, ge=0, le=1)  # fraction of each coarse class's training images that carry a cue
    strength: float = Field(1.0, gt=0, le=1)  # blend weight of the pattern over the pixels it covers
    size: int = Field(4, ge=1, le=14)  # pattern side in pixels
    leak: float = Field(0.0, ge=0, lt=1)  # fraction of cue-carrying images that carry another class's cue
    corner: tuple[int, int] = (0, 0)  # top-left pixel of the pattern (row, column)


class CueOption(CueConfig):
    """The ``cue`` data option: :class:`CueConfig` plus where the cue goes and its seed."""

    level: int = Field(1, ge=1)  # hierarchy level whose classes each get their own cue (set it to the target level)
    seed: int = 0  # the patterns and which images carry a cue (a property of the data, shared by all runs)


def cue_patterns(n_groups: int, size: int, seed: int = 0) -> np.ndarray:
    """``(n_groups, size, size)`` uint8 patterns of 0/255, pairwise distinct, none constant.

    Seeded (the same for every run with the same ``seed``): the cue is a fixed property of the
    data, not of a run.
    """
    if n_groups > 2 ** (size * size) - 2:
        raise GranularityError(
            f"The 'size' parameter {size} gives too few distinct {size}x{size} patterns for {n_groups} classes; use a larger size."
        )
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < n_groups:
        p = rng.integers(0, 2, (size, size), dtype=np.uint8)
        if 0 < p.sum() < size * size and not any(np.array_equal(p, q) for q in out):
            out.append(p)
    return np.stack(out).astype(np.uint8) * 255


def plan_cues(coarse: np.ndarray, n_groups: int, rho: float, leak: float, rng: np.random.Generator) -> np.ndarray:
    """Which cue each image carries: ``(N,)`` int64, a coarse class id, or ``NO_CUE`` (-1).

    Exactly ``round(rho * n_g)`` images of coarse class ``g`` carry a cue, and exactly
    ``round(leak * k_g)`` of those ``k_g`` carry another class's cue.
    """
    coarse = np.asarray(coarse, dtype=np.int64)
    cue = np.full(coarse.shape, NO_CUE, dtype=np.int64)
    if leak > 0 and n_groups < 2:
        raise GranularityError("The 'leak' parameter needs at least 2 coarse classes to leak a cue into.")
    for g in range(n_groups):
        members = np.flatnonzero(coarse == g)
        k = int(round(rho * len(members)))
        chosen = rng.permutation(members)[:k]
        cue[chosen] = g
        n_leak = int(round(leak * k))
        if n_leak:
            leaked = rng.permutation(chosen)[:n_leak]
            others = np.array([h for h in range(n_groups) if h != g])
            cue[leaked] = others[rng.integers(0, len(others), n_leak)]
    return cue


def plant(x: torch.Tensor, coarse: np.ndarray, n_groups: int, cue: CueConfig, patterns: np.ndarray,
          rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """``x`` with cues planted as :func:`plan_cues` draws them for ``cue.rho`` / ``cue.leak``
    (none at rho 0): ``(images, plan, counts)``; counts are ``n``, ``with_cue``, ``own_cue``,
    ``other_cue``. The one planting path of the designs and of the data option."""
    coarse = np.asarray(coarse, dtype=np.int64)
    plan = plan_cues(coarse, n_groups, cue.rho, cue.leak, rng) if cue.rho > 0 else np.full(len(coarse), NO_CUE)
    counts = {"n": len(coarse), "with_cue": int((plan >= 0).sum()), "own_cue": int((plan == coarse).sum()),
              "other_cue": int(((plan >= 0) & (plan != coarse)).sum())}
    return apply_cues(x, plan, patterns, cue.strength, cue.corner), plan, counts


def cue_dataset(ds: Any, cue: CueOption | Mapping[str, Any]) -> Any:
    """Data set ``ds`` with a cue per class of hierarchy level ``cue.level`` planted in its
    training and test images (:func:`plant`; the training split drawn with ``[seed, 1]``, the
    test split with ``[seed, 2]``), each split keeping ``variants`` ``easy`` (every image its
    own class's cue) and ``hard`` (the original images, cue-free). Needs in-memory uint8 images."""
    cue = cue if isinstance(cue, CueOption) else CueOption.build(cue, where="data option 'cue'")
    for split in (ds.train, ds.test):
        if not getattr(split, "in_memory", True) or split.x.dtype != torch.uint8 or split.x.dim() != 4:
            raise GranularityError(
                f"The data option 'cue' needs in-memory uint8 images (N, C, H, W); data set {ds.name!r} has "
                f"{'streamed images' if not getattr(split, 'in_memory', True) else f'{split.x.dtype} inputs of shape {tuple(split.x.shape[1:])}'}."
            )
    depth = int(ds.hierarchy.depth)
    if cue.level > depth:
        raise GranularityError(f"The data option 'cue.level' must be a hierarchy level in [1, {depth}]. Got {cue.level} instead.")
    return _plant_splits(ds, cue, lambda split: split.x.cpu())


def replant(ds: Any) -> Any:
    """``ds`` (a subset of a data set with a planted cue) with its cues planned again on its own
    rows, from their cue-free versions: each coarse class of the subset then carries exactly
    ``round(rho * n_g)`` cues (a subset of the full split's plan carries ``rho`` only roughly).
    A data set without a cue is returned as it is."""
    if not ds.info.get("cue"):
        return ds
    cue = CueOption.build({k: v for k, v in ds.info["cue"].items() if k != "counts"}, where="data option 'cue'")
    return _plant_splits(ds, cue, lambda split: split.variants["hard"].cpu())


def _plant_splits(ds: Any, cue: CueOption, original: Any) -> Any:
    """The cue planted on ``original(split)`` of the training and test splits (seeded streams
    ``[seed, 1]`` and ``[seed, 2]``), with the ``easy`` / ``hard`` versions (splits of the same
    in-memory type, so this module needs nothing from :mod:`granularity.data.base`)."""
    n_groups = int(ds.hierarchy.num_classes(cue.level))
    patterns = cue_patterns(n_groups, cue.size, cue.seed)
    splits, counts = {}, {}
    for name, split, salt in (("train", ds.train, 1), ("test", ds.test, 2)):
        y = split.y.cpu().numpy()
        coarse = np.asarray(ds.hierarchy.relabel(y, cue.level), dtype=np.int64)
        x = original(split)
        planted, _, counts[name] = plant(x, coarse, n_groups, cue, patterns, np.random.default_rng([cue.seed, salt]))
        easy = apply_cues(x, coarse, patterns, cue.strength, cue.corner)
        splits[name] = type(split)(planted, split.y.cpu(), variants={"easy": easy, "hard": x})
    return ds._derive(splits["train"], splits["test"], cue={**cue.to_dict(), "counts": counts})


def apply_cues(x: torch.Tensor, cue: np.ndarray, patterns: np.ndarray, strength: float,
               corner: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """A copy of uint8 images ``x`` ``(N, C, H, W)`` with pattern ``cue[i]`` blended into image
    ``i`` at ``corner`` (``cue[i] == NO_CUE``: image unchanged)."""
    size = patterns.shape[-1]
    r, c = corner
    if r + size > x.shape[-2] or c + size > x.shape[-1]:
        raise GranularityError(
            f"The cue ({size}x{size} at {tuple(corner)}) must fit in the {x.shape[-2]}x{x.shape[-1]} images; move 'corner' or lower 'size'."
        )
    out = x.clone()
    rows = np.flatnonzero(np.asarray(cue) != NO_CUE)
    if len(rows) == 0:
        return out
    rows_t = torch.as_tensor(rows)
    pat = torch.as_tensor(patterns[np.asarray(cue)[rows]], dtype=torch.float32)[:, None]  # (n, 1, s, s)
    patch = out[rows_t, :, r : r + size, c : c + size].float()
    blended = (1 - strength) * patch + strength * pat
    out[rows_t, :, r : r + size, c : c + size] = blended.round().clamp(0, 255).to(torch.uint8)
    return out


def cue_present(x: torch.Tensor, patterns: np.ndarray, strength: float, corner: tuple[int, int] = (0, 0),
                original: torch.Tensor | None = None) -> np.ndarray:
    """``(N,)`` id of the cue found in each image, or ``NO_CUE`` (exact check, for tests and
    audits). With ``original`` (the images before planting) a cue is found where the patch
    equals the original patch blended with that class's pattern and differs from the original;
    without it (only ``strength`` 1) where the patch equals the pattern."""
    size = patterns.shape[-1]
    r, c = corner
    patch = x[:, :, r : r + size, c : c + size]
    found = np.full(len(x), NO_CUE, dtype=np.int64)
    if original is None and strength != 1:
        raise GranularityError("cue_present needs the original images to find a cue of strength < 1.")
    for g in range(len(patterns)):
        if original is None:
            hit = (patch == torch.as_tensor(patterns[g])).flatten(1).all(1)
        else:
            planted = apply_cues(original, np.full(len(x), g), patterns, strength, corner)[:, :, r : r + size, c : c + size]
            hit = (planted == patch).flatten(1).all(1) & (planted != original[:, :, r : r + size, c : c + size]).flatten(1).any(1)
        found[hit.numpy()] = g
    return found
