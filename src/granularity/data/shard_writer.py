"""Writing WebDataset shards (:func:`write_shards`) from an image folder or the iNat2021 layout:
the bytes of each image file unchanged, in the loader's order, deterministic tar headers, and a
``manifest.json`` (classes, counts, sha256 per shard) that :func:`~granularity.data.shards.load_shards`
checks."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granularity.data.base import RealDataset, StreamSplit, stratified_indices
from granularity.data.image_folder import EXTENSIONS
from granularity.data.shards import MANIFEST, NAME, VERSION, _sha256, _write_index
from granularity.errors import DataError, param_error
from granularity.utils.io import write_bytes_atomic, write_json


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # fixed metadata: the same images give the same bytes
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tf.addfile(info, io.BytesIO(data))
    # addfile does not set offset_data: the data are the last 512-byte blocks written
    info.offset_data = tf.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return info


def _write_split(out: Path, split: str, paths: list[str], classes: list[str], shard_size: int) -> list[dict[str, Any]]:
    entries = []
    width = max(6, len(str(max(0, math.ceil(len(paths) / shard_size) - 1))))
    for k, start in enumerate(range(0, len(paths), shard_size)):
        name = f"{split}-{k:0{width}d}.tar"
        samples: list[list[Any]] = []

        def write(fh, start=start, samples=samples):
            samples.clear()  # [key, ext, offset, size, class] as _scan lists them
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                for i in range(start, min(start + shard_size, len(paths))):
                    ext = Path(paths[i]).suffix.lower().lstrip(".")
                    try:
                        data = Path(paths[i]).read_bytes()
                    except OSError as exc:
                        raise DataError(f"Image file {paths[i]} cannot be read ({exc.strerror or exc}).") from None
                    info = _add(tf, f"{i:09d}.{ext}", data)
                    _add(tf, f"{i:09d}.cls", classes[i].encode("utf-8"))
                    samples.append([f"{i:09d}", ext, info.offset_data, info.size, classes[i]])

        write_bytes_atomic(out / name, write)
        _write_index(out / name, samples)
        count = min(shard_size, len(paths) - start)
        entries.append({"name": name, "count": count, "bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)})
    return entries


def _source_parts(src: Path, fmt: str, train_dir: str, test_dir: str, test_fraction: float | None, seed: int):
    """``(leaf names, {split: (paths, labels)}, manifest extras)`` from the source's own loader."""
    if fmt == "inat":
        from granularity.data.inat import RANKS, categories_of, load_inat2021, read_annotation_file

        ds = load_inat2021(src, in_memory=False)
        cats = categories_of(read_annotation_file(src / "train.json"), src / "train.json")
        extra = {"inat_categories": cats, "inat_ranks": list(RANKS)}
    elif fmt == "image-folder":
        from granularity.data.image_folder import load_image_folder

        if test_fraction is None:
            ds = load_image_folder(src, train_dir=train_dir, test_dir=test_dir, hierarchy="flat", in_memory=False)
        else:
            ds = _one_folder(src, test_fraction, seed)
        extra = {}
    else:
        raise param_error("format", "'image-folder' or 'inat'", fmt)
    parts = {k: (s.paths, s.y.tolist()) for k, s in (("train", ds.train), ("test", ds.test))}
    return ds.leaf_names, parts, extra


def _one_folder(src: Path, test_fraction: float, seed: int) -> RealDataset:
    """One folder of class sub-folders split by a seeded stratified draw of the test images."""
    from granularity.data.image_folder import list_class_folders

    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise param_error("test_fraction", "a number in (0, 1)", test_fraction)
    if not src.is_dir():
        raise DataError(f"Image folder {src} not found.")
    classes = list_class_folders(src, EXTENSIONS)
    paths = [p for c in classes for p in classes[c]]
    y = torch.as_tensor([i for i, c in enumerate(classes) for _ in classes[c]], dtype=torch.int64)
    if not paths:
        raise DataError(f"No image files ({', '.join(EXTENSIONS)}) in class sub-folders of {src}.")
    n_test = int(round(test_fraction * len(paths)))
    if not 0 < n_test < len(paths):
        raise param_error("test_fraction", f"a fraction that leaves both splits non-empty for {len(paths)} images", test_fraction)
    test = stratified_indices(y, n_test, seed)
    is_test = np.zeros(len(paths), dtype=bool)
    is_test[test.numpy()] = True
    full = StreamSplit(paths, y, 1)
    return RealDataset(NAME, VERSION, full.take(np.flatnonzero(~is_test)), full.take(np.flatnonzero(is_test)), list(classes))


def write_shards(
    src: str | Path,
    out: str | Path,
    shard_size: int = 1000,
    format: str = "image-folder",  # noqa: A002 - the CLI option's name
    train_dir: str = "train",
    test_dir: str = "val",
    test_fraction: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``src`` as WebDataset shards ``out/{train,test}-NNNNNN.tar`` plus ``manifest.json``.

    Samples keep the source loader's order (classes sorted, files sorted; iNat by image id), so
    ``load_shards(out)`` gives the same rows, labels and pixels as loading ``src``. Each image
    file's bytes are stored unchanged as ``<index>.<ext>``, its class name as ``<index>.cls``.
    ``test_fraction`` splits one image folder of class sub-folders (seeded, stratified).
    Returns the manifest.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise param_error("shard_size", "a positive integer (samples per shard)", shard_size)
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"Output folder {out} exists and is not empty; give a new or empty folder.")
    leaf_names, parts, extra = _source_parts(src, format, train_dir, test_dir, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": VERSION, "source": str(src), "source_format": format,
                                "shard_size": shard_size, "classes": leaf_names, "splits": {}, **extra}
    for split, (paths, labels) in parts.items():
        classes = [leaf_names[c] for c in labels]
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(leaf_names))
        manifest["splits"][split] = {"count": len(paths), "class_counts": dict(zip(leaf_names, counts.tolist())),
                                     "shards": _write_split(out, split, list(paths), classes, shard_size)}
    write_json(out / MANIFEST, manifest)
    return manifest
