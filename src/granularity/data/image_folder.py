"""Image-folder trees (ImageNet-1k / ImageNet-21k layout): ``root/train/<class>/*.JPEG``.

The class is the folder name (a wnid for ImageNet). Images are decoded with Pillow, the
shorter side resized to ``image_size`` and centre-cropped. When all images fit in
``max_memory_mb`` they are decoded once (``workers`` processes) into uint8 tensors; otherwise
the splits stream from disk (:class:`~granularity.data.base.StreamSplit`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from granularity.data.base import RealDataset, StreamSplit, Split
from granularity.data.hierarchies import flat_factory, parent_map_factory
from granularity.errors import DataError, GranularityError, param_error, suggest

NAME = "image-folder"
VERSION = "folder-1"
EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
WNID = re.compile(r"^n\d{8}$")


def check_image_options(image_size: int, channels: int, in_memory: bool | None, max_memory_mb: float, workers: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise param_error("image_size", "a positive integer (pixels)", image_size)
    if channels not in (1, 3):
        raise param_error("channels", "1 (greyscale) or 3 (RGB)", channels)
    if in_memory not in (None, True, False):
        raise param_error("in_memory", "True, False or None (automatic)", in_memory)
    if not isinstance(max_memory_mb, (int, float)) or max_memory_mb < 0:
        raise param_error("max_memory_mb", "a non-negative number", max_memory_mb)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise param_error("workers", "a non-negative integer", workers)


def fits_in_memory(n_images: int, image_size: int, channels: int, max_memory_mb: float) -> bool:
    """Whether ``n_images`` decoded uint8 images fit the ``max_memory_mb`` budget (the default
    choice between decoding once into memory and streaming from files)."""
    return n_images * channels * image_size * image_size <= max_memory_mb * 2**20


def make_splits(
    parts: dict[str, tuple[list[str], list[int]]],
    image_size: int,
    channels: int,
    in_memory: bool | None,
    max_memory_mb: float,
    workers: int,
) -> dict[str, Split | StreamSplit]:
    """Stream or decode each part's ``(paths, labels)`` into a split (same choice for all)."""
    if in_memory is None:
        in_memory = fits_in_memory(sum(len(p) for p, _ in parts.values()), image_size, channels, max_memory_mb)
    out: dict[str, Split | StreamSplit] = {}
    for key, (paths, labels) in parts.items():
        split = StreamSplit(paths, torch.as_tensor(labels, dtype=torch.int64), image_size, channels)
        out[key] = split.materialize(num_workers=workers) if in_memory else split
    return out


def list_class_folders(folder: Path, extensions: Sequence[str]) -> dict[str, list[str]]:
    """``{class folder name: sorted image paths}`` for the sub-folders of ``folder``."""
    exts = tuple(e.lower() for e in extensions)
    classes: dict[str, list[str]] = {}
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith("."):
                files = []
                for dirpath, _dirs, names in os.walk(entry.path):
                    files += [os.path.join(dirpath, n) for n in names if n.lower().endswith(exts)]
                classes[entry.name] = sorted(files)
    return classes


HIERARCHY_NAMES = ("auto", "wordnet", "flat")


def _hierarchy_error(got: Any) -> GranularityError:
    return GranularityError(
        "The 'hierarchy' parameter must be 'auto', 'wordnet', 'flat', a dict or an existing JSON file "
        f"{{child: parent}}. Got {got!r} instead{suggest(str(got), HIERARCHY_NAMES)}."
    )


def check_hierarchy_option(hierarchy: Any) -> None:
    """Refuse a ``hierarchy`` string that is neither a tree name nor an existing file (loaders
    call it before they read any file)."""
    if isinstance(hierarchy, str) and hierarchy not in HIERARCHY_NAMES and not Path(hierarchy).is_file():
        raise _hierarchy_error(hierarchy)


def parent_map_source(hierarchy: Any) -> str | None:
    """How messages name a ``hierarchy`` option that is a parent map (the data's own parents,
    which a ``hierarchy_file`` must agree with); None for the named trees."""
    if isinstance(hierarchy, dict):
        return "the parent map given as 'hierarchy'"
    if isinstance(hierarchy, (str, Path)) and str(hierarchy) not in HIERARCHY_NAMES:
        return f"the parent map {str(hierarchy)!r}"
    return None


def hierarchy_factory(leaf_names: list[str], hierarchy: Any, name: str) -> Callable[[], Any]:
    """``"auto"`` (WordNet when all classes are wnids, else flat), ``"wordnet"``, ``"flat"``,
    or a parent map (dict or JSON file ``{child: parent}``)."""
    check_hierarchy_option(hierarchy)
    if isinstance(hierarchy, (dict, Path)) or (isinstance(hierarchy, str) and hierarchy not in HIERARCHY_NAMES):
        return parent_map_factory(leaf_names, hierarchy, name)
    if hierarchy == "auto":
        hierarchy = "wordnet" if leaf_names and all(WNID.match(c) for c in leaf_names) else "flat"
    if hierarchy == "flat":
        return flat_factory(leaf_names, name)
    if hierarchy == "wordnet":
        bad = [c for c in leaf_names if not WNID.match(c)]
        if bad:
            raise GranularityError(
                f"The 'hierarchy' parameter 'wordnet' needs wnid class folders like n01440764; {bad[0]!r} is "
                "not one (use 'flat', a parent map or a hierarchy_file)."
            )

        def factory():
            from granularity.hierarchy.wordnet import wordnet_hierarchy

            return wordnet_hierarchy(leaf_names, name=name)

        return factory
    raise _hierarchy_error(hierarchy)


def load_image_folder(
    root: str | Path | None = None,
    *,
    image_size: int = 32,
    channels: int = 3,
    train_dir: str = "train",
    test_dir: str = "val",
    extensions: Sequence[str] = EXTENSIONS,
    hierarchy: Any = "auto",
    in_memory: bool | None = None,
    max_memory_mb: float = 2048,
    workers: int = 0,
) -> RealDataset:
    """Load an image-folder tree; classes are the sub-folders of ``train_dir`` (sorted).

    Parameters
    ----------
    root : folder
        Holds ``train_dir/<class>/...`` and ``test_dir/<class>/...``.
    image_size : int
        Side of the square images after resize (shorter side) and centre crop.
    channels : {1, 3}
        Greyscale or RGB.
    hierarchy : "auto", "wordnet", "flat", dict or JSON path
        Label tree over the classes (see :func:`hierarchy_factory`).
    in_memory : bool or None
        Decode everything into tensors (True), stream (False), or decide by ``max_memory_mb``.
    workers : int
        Decoding worker processes when loading into memory.
    """
    check_image_options(image_size, channels, in_memory, max_memory_mb, workers)
    check_hierarchy_option(hierarchy)
    if root is None:
        raise param_error("root", "a folder holding train/<class>/ and val/<class>/ image folders", None)
    root = Path(root).expanduser()
    tr_folder, te_folder = root / train_dir, root / test_dir
    if not tr_folder.is_dir():
        raise DataError(f"Image folder {tr_folder} not found; expected {root}/{train_dir}/<class>/<image files>.")
    if not te_folder.is_dir():
        raise DataError(
            f"Image folder {te_folder} not found; expected {root}/{test_dir}/<class>/<image files> "
            "(set test_dir= for another name)."
        )
    train_classes = list_class_folders(tr_folder, extensions)
    if not train_classes:
        raise DataError(f"Image folder {tr_folder} has no class sub-folders.")
    test_classes = list_class_folders(te_folder, extensions)
    # a test-only class is a leaf with no training images: load_dataset's 'unseen' policy decides
    leaf_names = sorted(set(train_classes) | set(test_classes))
    index = {c: i for i, c in enumerate(leaf_names)}
    parts = {}
    for key, classes, folder in (("train", train_classes, tr_folder), ("test", test_classes, te_folder)):
        paths = [p for c in classes for p in classes[c]]
        labels = [index[c] for c in classes for _ in classes[c]]
        if not paths:
            raise DataError(f"No image files ({', '.join(extensions)}) under {folder}.")
        parts[key] = (paths, labels)
    splits = make_splits(parts, image_size, channels, in_memory, max_memory_mb, workers)
    return RealDataset(
        name=NAME,
        version=VERSION,
        train=splits["train"],
        test=splits["test"],
        leaf_names=leaf_names,
        hierarchy_factory=hierarchy_factory(leaf_names, hierarchy, NAME),
        info={"root": str(root), "image_size": image_size, "in_memory": splits["train"].in_memory,
              **({"label_source": source} if (source := parent_map_source(hierarchy)) else {})},
    )
