"""iNaturalist 2021 (COCO-style JSON plus image folders); the hierarchy is its taxonomy.

The JSON has ``images`` (``id``, ``file_name`` relative to ``root``), ``annotations``
(``image_id``, ``category_id``) and ``categories`` (``id``, ``name``, ``kingdom``, ``phylum``,
``class``, ``order``, ``family``, ``genus``, ...). Leaf ``i`` is the category with the
``i``-th smallest id; the tree is :func:`granularity.hierarchy.inat2021_hierarchy` of the
training file's categories (homonyms across ranks are disambiguated there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from granularity.data.base import RealDataset
from granularity.data.image_folder import check_image_options, make_splits
from granularity.errors import DataError, param_error
from granularity.utils.io import read_json

NAME = "inat2021"
VERSION = "inat2021-json-1"
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


def read_annotation_file(path: Path) -> dict[str, Any]:
    """An iNat2021 annotation file, checked to hold the ``images``, ``annotations`` and
    ``categories`` lists (the JSON itself is parsed by :func:`granularity.utils.io.read_json`)."""
    if not Path(path).exists():
        raise DataError(f"iNat2021 annotation file {path} not found (expected train.json / val.json in the root).")
    obj = read_json(path, "iNat2021 annotation file")
    if not isinstance(obj, dict):
        raise DataError(f"iNat2021 annotation file {path} must hold a JSON object.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj.get(key), list):
            raise DataError(f"iNat2021 annotation file {path} has no {key!r} list.")
    return obj


def _pairs(data: dict[str, Any], path: Path, root: Path, cat_index: dict[int, int]) -> tuple[list[str], list[int]]:
    try:
        files = {int(im["id"]): im["file_name"] for im in data["images"]}
        bad = next((iid for iid, f in files.items() if not isinstance(f, str) or not f.strip()), None)
        if bad is not None:
            raise DataError(f"iNat2021 file {path}: image {bad} has file_name {files[bad]!r}, not a relative path.")
        labels: dict[int, int] = {}
        for ann in data["annotations"]:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            if cid not in cat_index:
                raise DataError(f"iNat2021 file {path}: annotation of image {iid} has unknown category_id {cid}.")
            if iid in labels and labels[iid] != cat_index[cid]:
                raise DataError(f"iNat2021 file {path}: image {iid} has two different category annotations.")
            labels[iid] = cat_index[cid]
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"iNat2021 file {path}: malformed image or annotation record ({type(exc).__name__}: {exc}).") from None
    missing = [iid for iid in files if iid not in labels]
    if missing:
        raise DataError(f"iNat2021 file {path}: image {missing[0]} ({files[missing[0]]}) has no annotation.")
    unknown = [iid for iid in labels if iid not in files]
    if unknown:
        raise DataError(f"iNat2021 file {path}: annotation for image_id {unknown[0]} which is not in 'images'.")
    ids = sorted(files)
    return [str(root / files[i]) for i in ids], [labels[i] for i in ids]


def categories_of(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The ``categories`` of an annotation file in leaf order (by id)."""
    try:
        return sorted(data["categories"], key=lambda c: int(c["id"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        raise DataError(f"iNat2021 file {path}: every category needs an integer 'id'.") from None


def taxonomy_factory(categories: list[dict[str, Any]], ranks: Sequence[str] | None, source: str) -> Callable[[], Any]:
    """Builds the taxonomy of ``categories`` (leaf order) when a run first asks for the tree;
    ``source`` names the file they came from in error messages."""

    def factory():
        from granularity.hierarchy import inat2021_hierarchy

        return inat2021_hierarchy({"categories": categories}, ranks=ranks, source=source)

    return factory


def leaf_names_of(categories: list[dict[str, Any]]) -> list[str]:
    """Display names of the categories (``name``; ``name (id)`` where a name repeats)."""
    names = [str(c.get("name", c["id"])) for c in categories]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({c['id']})" if counts[n] > 1 else n for n, c in zip(names, categories)]


def load_inat2021(
    root: str | Path | None = None,
    *,
    train_json: str = "train.json",
    test_json: str = "val.json",
    ranks: Sequence[str] = RANKS,
    image_size: int = 32,
    channels: int = 3,
    in_memory: bool | None = None,
    max_memory_mb: float = 2048,
    workers: int = 0,
) -> RealDataset:
    """Load iNat2021 images with their species labels and taxonomy (kingdom ... genus, species).

    Parameters
    ----------
    root : folder
        Holds ``train_json``, ``test_json`` and the image folders their ``file_name`` point to.
    train_json, test_json : str
        Annotation files (``train_mini.json`` is the small official training set).
    ranks : sequence of str
        Taxonomy levels above the species, coarse to fine.
    image_size, channels, in_memory, max_memory_mb, workers
        As for ``image-folder``.
    """
    check_image_options(image_size, channels, in_memory, max_memory_mb, workers)
    if root is None:
        raise param_error("root", "a folder holding the iNat2021 JSON files and image folders", None)
    if isinstance(ranks, str) or not all(isinstance(r, str) for r in ranks):
        raise param_error("ranks", "a list of taxonomy field names, coarse to fine", ranks)
    root = Path(root).expanduser()
    tr_path, te_path = root / train_json, root / test_json
    tr, te = read_annotation_file(tr_path), read_annotation_file(te_path)
    cats = categories_of(tr, tr_path)
    cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
    if len(cat_index) != len(cats):
        raise DataError(f"iNat2021 file {tr_path}: duplicate category ids.")
    leaf_names = leaf_names_of(cats)
    ranks = list(ranks)
    parts = {"train": _pairs(tr, tr_path, root, cat_index), "test": _pairs(te, te_path, root, cat_index)}
    for key, (paths, _) in parts.items():
        # a sample of ~100 files: a full check would stat millions of files
        absent = next((p for p in paths[:: max(1, len(paths) // 100)] if not Path(p).is_file()), None)
        if absent is not None:
            raise DataError(f"iNat2021 image {absent} (listed in {tr_path if key == 'train' else te_path}) not found.")
    splits = make_splits(parts, image_size, channels, in_memory, max_memory_mb, workers)

    return RealDataset(
        name=NAME,
        version=VERSION,
        train=splits["train"],
        test=splits["test"],
        leaf_names=leaf_names,
        hierarchy_factory=taxonomy_factory(cats, ranks, str(tr_path)),
        info={"root": str(root), "image_size": image_size, "in_memory": splits["train"].in_memory,
              **({"label_source": "the iNat ranks"} if ranks else {})},
    )
