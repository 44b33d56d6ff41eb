"""Data set containers: splits held in memory (or streamed from disk) plus their hierarchy.

A :class:`RealDataset` has a ``train`` and a ``test`` split. An in-memory :class:`Split` holds
``x`` (``torch.uint8`` images ``(N, C, H, W)``, or ``float32`` features ``(N, D)``) and ``y``
(``torch.int64`` leaf labels ``(N,)``). A :class:`StreamSplit` keeps only the file paths and
labels and decodes images lazily through a :class:`torch.utils.data.Dataset` that works with
``DataLoader(num_workers=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from granularity.errors import DataError, param_error


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
class Split:
    """One in-memory split: ``x`` and leaf labels ``y`` as tensors (on one device).

    ``variants``: other versions of the same rows (name -> tensor shaped like ``x``), e.g. the
    ``easy`` and ``hard`` images of a planted cue (:func:`granularity.data.cues.cue_dataset`);
    :meth:`take` and :meth:`to` keep them row for row, and the engine evaluates each.
    """

    in_memory = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor, variants: dict[str, torch.Tensor] | None = None):
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"Inputs and labels differ in length: x has {x.shape[0]} rows, y has {y.shape[0]}."
            )
        self.x = x
        self.y = y.to(torch.int64)
        self.variants = dict(variants or {})
        for name, v in self.variants.items():
            if v.shape != x.shape:
                raise DataError(f"Variant {name!r} has shape {tuple(v.shape)}; it must match x {tuple(x.shape)}.")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"Split(x={tuple(self.x.shape)} {self.x.dtype}, y={tuple(self.y.shape)}, device={self.x.device})"

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def dataset(self) -> Dataset:
        """A ``TensorDataset(x, y)`` for use with a ``DataLoader``."""
        return TensorDataset(self.x, self.y)

    def to(self, device: torch.device | str) -> Split:
        """A copy of this split with ``x`` and ``y`` on ``device``."""
        return Split(self.x.to(device), self.y.to(device), {k: v.to(device) for k, v in self.variants.items()})

    def take(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> Split:
        """The rows ``indices`` of this split (a new split)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).to(self.x.device)
        return Split(self.x[idx], self.y[idx], {k: v[idx] for k, v in self.variants.items()})


class LazyImageDataset(Dataset):
    """Decode image files with Pillow on access, resized to ``size`` (shorter side, centre crop).

    Items are ``(uint8 tensor (C, size, size), int64 label)``. Picklable, so it works with
    ``DataLoader(num_workers=...)``.
    """

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, size: int, channels: int = 3):
        self.paths = [str(p) for p in paths]
        self.labels = labels.to(torch.int64).cpu()
        self.size = int(size)
        self.channels = int(channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_image(self.paths[i], self.size, self.channels), self.labels[i]


def decode_image(path: str, size: int, channels: int = 3) -> torch.Tensor:
    """Read one image file into a ``uint8`` tensor ``(C, size, size)``.

    The shorter side is resized to ``size`` and the centre cropped, so aspect ratios are kept.
    A file Pillow cannot read raises a :class:`DataError` naming it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
            arr = np.array(img, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"Cannot decode image file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on corrupt files
        # (DecompressionBombError for a corrupt size field, struct.error, EOFError, IndexError, ...)
        reason = " ".join(str(exc).split())[:200].rstrip(".") or "no detail"
        raise DataError(f"Cannot decode image file {path}: {type(exc).__name__}: {reason}.") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # (H, W, C) -> (C, H, W)


class StreamSplit:
    """A split streamed from image files: labels in memory, pixels decoded lazily.

    Use :attr:`dataset` with a ``DataLoader(num_workers=...)``; :meth:`materialize` decodes
    everything into an in-memory :class:`Split`.
    """

    in_memory = False

    def __init__(self, paths: Sequence[str], y: torch.Tensor, size: int, channels: int = 3):
        self.paths = [str(p) for p in paths]
        self.y = y.to(torch.int64).cpu()
        self.size = int(size)
        self.channels = int(channels)
        if len(self.paths) != len(self.y):
            raise DataError(f"Image paths and labels differ in length: {len(self.paths)} vs {len(self.y)}.")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"StreamSplit(n={len(self)}, image=({self.channels}, {self.size}, {self.size}))"

    @property
    def x(self) -> torch.Tensor:
        raise DataError(
            f"This split streams {len(self)} images from disk and has no in-memory 'x'; "
            "use split.dataset with a DataLoader(num_workers=...), split.materialize(), "
            "or load with in_memory=True."
        )

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dataset(self) -> LazyImageDataset:
        return LazyImageDataset(self.paths, self.y, self.size, self.channels)

    def to(self, device: torch.device | str) -> StreamSplit:
        """Streamed splits stay on the CPU; batches are moved by the training loop."""
        return self

    def take(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> StreamSplit:
        idx = np.asarray(torch.as_tensor(np.asarray(indices)).cpu(), dtype=np.int64)
        return StreamSplit([self.paths[i] for i in idx], self.y[torch.from_numpy(idx)], self.size, self.channels)

    def materialize(self, num_workers: int = 0, batch_size: int = 256) -> Split:
        """Decode all images (with ``num_workers`` worker processes) into an in-memory split."""
        return Split(decode_all(self.dataset, num_workers, batch_size), self.y.clone())


def iter_batches(dataset: LazyImageDataset, num_workers: int = 0, batch_size: int = 256):
    """The ``uint8 (B, C, S, S)`` image batches of a :class:`LazyImageDataset`, in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return (xb for xb, _ in loader)


def decode_all(dataset: LazyImageDataset, num_workers: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Decode a :class:`LazyImageDataset` into one ``uint8`` tensor ``(N, C, S, S)``."""
    n = len(dataset)
    out = torch.empty((n, dataset.channels, dataset.size, dataset.size), dtype=torch.uint8)
    if n == 0:
        return out
    pos = 0
    for xb in iter_batches(dataset, num_workers, batch_size):
        out[pos : pos + len(xb)] = xb
        pos += len(xb)
    return out


AnySplit = Split | StreamSplit


# --------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------
def _labels_of(obj: Any) -> torch.Tensor:
    if isinstance(obj, RealDataset):
        return obj.train.y
    if isinstance(obj, (Split, StreamSplit)):
        return obj.y
    if isinstance(obj, (torch.Tensor, np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(obj.cpu() if isinstance(obj, torch.Tensor) else obj), dtype=torch.int64)
    raise param_error("dataset_split", "a RealDataset, a Split or a 1-D array of labels", type(obj).__name__)


def stratified_indices(y: torch.Tensor | np.ndarray, n: int, seed: int) -> torch.Tensor:
    """``n`` indices drawn without replacement, class proportions kept (largest remainder).

    Returns a sorted ``int64`` tensor. The draw depends only on ``y``, ``n`` and ``seed``.
    """
    y_np = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y, dtype=np.int64)
    total = len(y_np)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 or n > total:
        raise param_error("subset", f"an integer in [0, {total}] (the split's size)", n)
    if n == total:
        return torch.arange(total, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y_np, return_inverse=True, return_counts=True)
    quota = counts * (n / total)
    take = np.floor(quota).astype(np.int64)
    remainder = int(n - take.sum())
    if remainder:
        # random tie-break among equal fractional parts, then largest fraction first
        frac = quota - take
        order = np.lexsort((rng.random(len(classes)), -frac))
        take[order[:remainder]] += 1
    picked = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        picked.append(rng.choice(members, size=int(take[c]), replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked)).astype(np.int64))


def make_rare(
    dataset_split: Any, fine_classes: Sequence[int | str], keep_fraction: float, seed: int
) -> torch.Tensor:
    """Training indices with the ``fine_classes`` subsampled to ``keep_fraction`` ("rare").

    Parameters
    ----------
    dataset_split : RealDataset, Split, StreamSplit or 1-D labels
        Where the leaf labels come from (a ``RealDataset`` means its ``train`` split).
    fine_classes : sequence of int or str
        Leaf labels to make rare; names are allowed when a ``RealDataset`` is given.
    keep_fraction : float in [0, 1]
        Fraction of each rare class kept (rounded, at least one sample when > 0).
    seed : int
        Seed of the subsampling.

    Returns
    -------
    torch.Tensor
        Sorted ``int64`` indices into the split: every sample of the other classes plus the
        kept samples of the rare classes.
    """
    y = _labels_of(dataset_split).cpu().numpy()
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)) or not 0 <= keep_fraction <= 1:
        raise param_error("keep_fraction", "a float in [0, 1]", keep_fraction)
    names = list(dataset_split.leaf_names) if isinstance(dataset_split, RealDataset) else None
    num = (int(y.max()) + 1) if len(y) else 0
    if isinstance(dataset_split, RealDataset):
        num = dataset_split.num_leaves
    classes = []
    for c in fine_classes:
        if isinstance(c, str):
            if names is None or c not in names:
                from granularity.errors import unknown_name

                raise unknown_name("fine class", c, names or [])
            c = names.index(c)
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < num:
            raise param_error("fine_classes", f"leaf labels in [0, {num - 1}]", c)
        classes.append(int(c))
    rng = np.random.default_rng(seed)
    keep = np.ones(len(y), dtype=bool)
    for c in sorted(set(classes)):
        members = np.flatnonzero(y == c)
        k = int(round(keep_fraction * len(members)))
        if keep_fraction > 0 and len(members):
            k = max(1, k)
        keep[members] = False
        keep[rng.choice(members, size=k, replace=False)] = True
    return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------
@dataclass
class RealDataset:
    """A labelled data set with a train/test split and a label hierarchy over its leaves.

    Attributes
    ----------
    name, version : str
        Registry name and format/version tag (e.g. ``"fashion-mnist"``, ``"idx-1"``).
    train, test : Split or StreamSplit
        ``x`` (``uint8 (N, C, H, W)`` images or ``float32 (N, D)`` features) and ``y``
        (``int64`` leaf labels).
    leaf_names : list of str
        Name of leaf ``i`` (the finest label ``i``).
    hierarchy : granularity.hierarchy.LabelHierarchy
        Built on first access (leaf ``i`` is label ``i``).
    mean, std : torch.Tensor
        Per-channel (images, in [0, 1] units) or per-feature statistics of the train split,
        for normalisation; computed on first access.
    info : dict
        Where it came from (paths, options).
    """

    name: str
    version: str
    train: AnySplit
    test: AnySplit
    leaf_names: list[str]
    hierarchy_factory: Callable[[], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _hierarchy: Any = field(default=None, repr=False)
    _stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _input_shape: tuple[int, ...] | None = field(default=None, repr=False)

    # -- labels and hierarchy ----------------------------------------------------------------
    @property
    def num_leaves(self) -> int:
        return len(self.leaf_names)

    @property
    def hierarchy(self) -> Any:
        if self._hierarchy is None:
            if self.hierarchy_factory is None:
                raise DataError(f"Data set {self.name!r} has no label hierarchy.")
            self._hierarchy = self.hierarchy_factory()
        return self._hierarchy

    @hierarchy.setter
    def hierarchy(self, value: Any) -> None:
        self._hierarchy = value

    # -- shapes and statistics ---------------------------------------------------------------
    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def input_kind(self) -> str:
        """``"image"``, ``"features"`` or ``"tokens"`` (integer token ids ``(N, L)`` padded
        with 0, set by text loaders in ``info``): the engine neither normalises nor augments
        tokens."""
        return str(self.info.get("input_kind") or ("image" if self.is_image else "features"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` for images, ``(D,)`` for feature vectors."""
        if self._input_shape is None:
            split = self.train
            if isinstance(split, StreamSplit):
                self._input_shape = (split.channels, split.size, split.size)
            else:
                self._input_shape = tuple(int(s) for s in split.x.shape[1:])
        return self._input_shape

    def normalisation_stats(self, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of the whole training split (:func:`channel_stats`), computed once;
        a streamed split is decoded in one pass by ``workers`` processes (no sample), so a
        streamed and an in-memory copy of the same images normalise identically."""
        if self._stats is None:
            split = self.train
            self._stats = channel_stats(iter_batches(split.dataset, workers) if isinstance(split, StreamSplit) else split.x)
        return self._stats

    @property
    def mean(self) -> torch.Tensor:
        return self.normalisation_stats()[0]

    @property
    def std(self) -> torch.Tensor:
        return self.normalisation_stats()[1]

    # -- derived data sets -------------------------------------------------------------------
    def _derive(self, train: AnySplit, test: AnySplit, **info: Any) -> RealDataset:
        return RealDataset(
            name=self.name,
            version=self.version,
            train=train,
            test=test,
            leaf_names=list(self.leaf_names),
            hierarchy_factory=self.hierarchy_factory,
            info={**self.info, **info},
            _hierarchy=self._hierarchy,
            _input_shape=self._input_shape,
        )

    def select(self, train: Any = None, test: Any = None, **info: Any) -> RealDataset:
        """Rows ``train`` / ``test`` (index arrays; ``None`` keeps a split) as a new data set.

        E.g. ``ds.select(train=make_rare(ds, ["Shirt"], 0.03, seed=0), rare=...)``; extra
        keywords are recorded in ``info``.
        """
        tr = self.train if train is None else self.train.take(train)
        te = self.test if test is None else self.test.take(test)
        return self._derive(tr, te, **info)

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> RealDataset:
        """Stratified random subsets of ``train`` and/or ``test`` samples (``None``: keep all).

        The hierarchy (and the leaf set) is unchanged; statistics are recomputed on the new
        train split.
        """
        tr = self.train if train is None else self.train.take(stratified_indices(self.train.y, train, seed))
        te = self.test if test is None else self.test.take(stratified_indices(self.test.y, test, seed + 1))
        out = self._derive(tr, te, subset={"train": train, "test": test, "seed": seed})
        if self.info.get("cue"):  # a planted cue: planned again on the subset's rows, so its rho is exact there
            from granularity.data.cues import replant

            out = replant(out)
        return out

    def to(self, device: torch.device | str) -> RealDataset:
        """A copy with in-memory splits on ``device`` (streamed splits stay on the CPU)."""
        out = self._derive(self.train.to(device), self.test.to(device))
        if self._stats is not None:
            out._stats = (self._stats[0].to(device), self._stats[1].to(device))
        return out

    def __repr__(self) -> str:
        return (
            f"RealDataset(name={self.name!r}, version={self.version!r}, train={self.train!r}, "
            f"test={self.test!r}, num_leaves={self.num_leaves})"
        )


def channel_stats(x: torch.Tensor | Iterable[torch.Tensor], chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of uint8 images (in [0, 1] units) or per-feature of (N, D) floats.

    The one place normalisation statistics are computed (data sets, the engine, embeddings):
    always over every row given, never a sample. ``x`` is a tensor, or an iterable of row
    batches (a streamed split: one pass). Accumulated in float64 over chunks so 60k images
    need no float copy of the whole set; the population std (ddof 0), at least 1e-8.
    """
    batches = (x[s : s + chunk] for s in range(0, x.shape[0], chunk)) if isinstance(x, torch.Tensor) else x
    s = ss = None
    count = 0
    for xb in batches:
        if len(xb) == 0:
            continue
        scale = 255.0 if xb.dtype == torch.uint8 else 1.0
        xb = xb.to(torch.float64) / scale
        if xb.dim() == 4:
            xb = xb.transpose(0, 1).reshape(xb.shape[1], -1)  # (C, N*H*W)
        elif xb.dim() == 2:
            xb = xb.T  # (D, N)
        else:
            xb = xb.reshape(1, -1)
        s = xb.sum(dim=1) if s is None else s + xb.sum(dim=1)
        ss = (xb * xb).sum(dim=1) if ss is None else ss + (xb * xb).sum(dim=1)
        count += xb.shape[1]
    if count == 0:
        raise DataError("Cannot compute normalisation statistics of an empty training split.")
    mean = s / count
    var = (ss / count - mean * mean).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-8)
    return mean.to(torch.float32), std.to(torch.float32)
