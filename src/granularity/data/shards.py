"""Sharded image data in the WebDataset format: tar files of ``<key>.<ext>`` images plus a
``<key>.cls`` (the class name or wnid as text) or ``<key>.json`` (``{"class": ...}``) member.

Reading is map-style, not a stream: the first load lists every shard's members with
:mod:`tarfile` (their byte offsets and sizes) and caches that index next to the shard
(``<shard>.index.json``, keyed by the shard's size, mtime and a hash of its first 8 KiB and
last 16 KiB); an image is then one ``seek`` + ``read`` in its shard. So a shard split is a
:class:`~granularity.data.base.StreamSplit` like an image folder's: the engine's per-epoch
permutation, its batch sampler, resume inside an epoch and DDP (each rank decodes its rows of
every global batch) work unchanged, and a run on shards equals the run on the image folder
they were written from. Splitting the global permutation over ranks, rather than whole shards,
is what keeps a ``world_size`` run equal to a one-process run; :func:`iter_rank_shards` offers
the whole-shard split (sequential reads, no global shuffle) for throughput-bound uses.

:func:`write_shards` writes shards from an image folder or the iNat2021 layout (the bytes of
each image file unchanged, in the loader's order, deterministic tar headers) and a
``manifest.json`` (classes, counts, sha256 per shard).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from granularity.data.base import RealDataset, StreamSplit, decode_image, stratified_indices
from granularity.data.image_folder import EXTENSIONS, check_hierarchy_option, check_image_options, fits_in_memory, hierarchy_factory
from granularity.data.inat import taxonomy_factory
from granularity.errors import DataError, param_error
from granularity.utils.io import read_json, write_bytes_atomic, write_json

NAME = "shards"
VERSION = "webdataset-1"
MANIFEST = "manifest.json"
INDEX_SUFFIX = ".index.json"
INDEX_VERSION = 1
IMAGE_EXTS = tuple(e.lstrip(".") for e in EXTENSIONS)
# bytes hashed at the start and end of a shard for the index key (with its size and mtime):
# small, as every load reads them for every shard; the end is past tar's zero padding (<= 10 KiB)
_HEAD, _TAIL = 8192, 16384


# --------------------------------------------------------------------------------------------
# Index of a shard: (key, image member offset/size/ext, class) per sample
# --------------------------------------------------------------------------------------------
def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(_HEAD))
        if st.st_size > _HEAD:
            fh.seek(max(_HEAD, st.st_size - _TAIL))
            h.update(fh.read(_TAIL))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "probe_sha256": h.hexdigest()}


def _class_of(path: Path, key: str, members: dict[str, bytes]) -> str:
    """The class text of a sample from its ``.cls`` or ``.json`` member."""
    if "cls" in members:
        try:
            text = members["cls"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"Shard {path}: member {key}.cls is not UTF-8 text.") from None
    elif "json" in members:
        try:
            obj = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"Shard {path}: member {key}.json is not valid JSON.") from None
        text = next((str(obj[k]).strip() for k in ("class", "wnid", "label") if isinstance(obj, dict) and k in obj), None)
        if text is None:
            raise DataError(f"Shard {path}: member {key}.json has no 'class', 'wnid' or 'label' field.")
    else:
        raise DataError(f"Shard {path}: sample {key!r} has no {key}.cls or {key}.json member with its class.")
    if not text:
        raise DataError(f"Shard {path}: sample {key!r} has an empty class.")
    return text


def _scan(path: Path) -> list[list[Any]]:
    """``[key, ext, offset, size, class]`` per sample, in the order of the tar."""
    size = path.stat().st_size
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if "." not in base or base.endswith("."):
                    raise DataError(f"Shard {path}: member {m.name!r} has no extension (expected <key>.<ext>).")
                key = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
                ext = base.split(".", 1)[1].lower()
                if m.offset_data + m.size > size:
                    raise DataError(f"Shard {path} is truncated: member {m.name!r} ends past the end of the file.")
                s = samples.setdefault(key, {"meta": {}})
                if ext in IMAGE_EXTS:
                    if "image" in s:
                        raise DataError(f"Shard {path}: sample {key!r} has two images.")
                    s["image"] = (ext, m.offset_data, m.size)
                elif ext in ("cls", "json"):
                    s["meta"][ext] = tf.extractfile(m).read()
            end = tf.offset
    except tarfile.TarError as exc:
        raise DataError(f"Shard {path} is not a readable uncompressed tar file ({exc}).") from None
    except EOFError:
        raise DataError(f"Shard {path} is truncated.") from None
    _check_tail(path, end)
    out = []
    for key, s in samples.items():
        if "image" not in s:
            raise DataError(f"Shard {path}: sample {key!r} has no image member ({', '.join(IMAGE_EXTS)}).")
        out.append([key, *s["image"], _class_of(path, key, s["meta"])])
    return out


def _check_tail(path: Path, end: int) -> None:
    """tarfile stops silently at a damaged header after the first: what follows the last
    member must be the zero blocks that end an archive (or nothing)."""
    with open(path, "rb") as fh:
        fh.seek(end)
        clean = all(not block.strip(b"\0") for block in iter(lambda: fh.read(1 << 16), b""))
    if not clean:
        raise DataError(f"Shard {path} is truncated or corrupt after byte {end} (a damaged tar header).")


def shard_index(path: Path, cache: bool = True) -> list[list[Any]]:
    """The shard's sample index, from its cache file when the shard is unchanged."""
    fp = _fingerprint(path)
    cache_file = path.with_name(path.name + INDEX_SUFFIX)
    if cache and cache_file.is_file():
        try:
            obj = json.loads(cache_file.read_text())
            if obj.get("version") == INDEX_VERSION and obj.get("shard") == fp:
                return obj["samples"]
        except (OSError, ValueError, AttributeError):
            pass  # a damaged cache is rebuilt
    samples = _scan(path)
    if cache:
        _write_index(path, samples)  # not writable (a read-only shard folder): scan again next time
    return samples


# --------------------------------------------------------------------------------------------
# Map-style reading
# --------------------------------------------------------------------------------------------
class _Member(io.BytesIO):
    """Image bytes that name their tar member in :func:`decode_image`'s error messages."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


class ShardImageDataset(Dataset):
    """Images read at their offsets in tar shards and decoded like image files.

    Items are ``(uint8 tensor (C, size, size), int64 label)``; picklable (each worker process
    opens its own file handles).
    """

    def __init__(self, shards: Sequence[str], shard: np.ndarray, offset: np.ndarray, nbytes: np.ndarray,
                 names: Sequence[str], labels: torch.Tensor, size: int, channels: int = 3):
        self.shards = [str(s) for s in shards]
        # int64 arrays, not lists: 8 bytes a row (a Python int is 28 + 8), copied into every worker
        self.shard, self.offset, self.nbytes = (np.asarray(a, dtype=np.int64) for a in (shard, offset, nbytes))
        self.names = list(names)
        self.labels = labels.to(torch.int64).cpu()
        self.size, self.channels = int(size), int(channels)
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        """The raw bytes of image ``i``."""
        if self._pid != os.getpid():  # a forked worker must not share the parent's offsets
            self._files, self._pid = {}, os.getpid()
        s, offset, nbytes = int(self.shard[i]), int(self.offset[i]), int(self.nbytes[i])
        fh = self._files.get(s)
        if fh is None:
            try:
                fh = self._files[s] = open(self.shards[s], "rb")
            except OSError as exc:
                raise DataError(f"Shard {self.shards[s]} cannot be read ({exc.strerror or exc}).") from None
        fh.seek(offset)
        data = fh.read(nbytes)
        if len(data) != nbytes:
            raise DataError(f"Shard {self.shards[s]} is truncated: member {self.names[i]} ends past the end of the file.")
        return data

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        member = _Member(self.read(i), f"{self.shards[int(self.shard[i])]}:{self.names[i]}")
        return decode_image(member, self.size, self.channels), self.labels[i]


class ShardSplit(StreamSplit):
    """A split streamed from tar shards (``paths`` are ``shard:member`` names)."""

    def __init__(self, shards: Sequence[str], shard: np.ndarray, offset: np.ndarray, nbytes: np.ndarray,
                 names: Sequence[str], y: torch.Tensor, size: int, channels: int = 3):
        self.shards = [str(s) for s in shards]
        self.shard = np.asarray(shard, dtype=np.int64)
        self.offset = np.asarray(offset, dtype=np.int64)
        self.nbytes = np.asarray(nbytes, dtype=np.int64)
        self.names = list(names)
        paths = [f"{self.shards[s]}:{n}" for s, n in zip(self.shard, self.names)]
        super().__init__(paths, y, size, channels)

    def __repr__(self) -> str:
        return f"ShardSplit(n={len(self)}, shards={len(self.shards)}, image=({self.channels}, {self.size}, {self.size}))"

    @property
    def dataset(self) -> ShardImageDataset:
        return ShardImageDataset(self.shards, self.shard, self.offset, self.nbytes, self.names, self.y,
                                 self.size, self.channels)

    def take(self, indices: Any) -> ShardSplit:
        idx = np.asarray(torch.as_tensor(np.asarray(indices)).cpu(), dtype=np.int64)
        return ShardSplit(self.shards, self.shard[idx], self.offset[idx], self.nbytes[idx],
                          [self.names[i] for i in idx], self.y[torch.from_numpy(idx)], self.size, self.channels)


def iter_rank_shards(split: ShardSplit, rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Whole-shard streaming for throughput: rank ``r`` reads shards ``r, r + world_size, ...``
    sequentially, in file order (no global permutation: not what :func:`run_transfer` uses, and
    its results differ from a one-process run; see ``docs/data.md``)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise param_error("world_size", "a positive integer", world_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise param_error("rank", f"an integer in [0, {world_size - 1}]", rank)
    ds = split.dataset
    for s in range(rank, len(split.shards), world_size):
        rows = np.flatnonzero(split.shard == s)
        for i in rows[np.argsort(split.offset[rows], kind="stable")]:
            yield ds[int(i)]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _split_shards(root: Path, manifest: dict[str, Any] | None, split: str, pattern: str) -> list[tuple[Path, dict | None]]:
    if manifest is not None:
        entries = manifest.get("splits", {}).get(split, {}).get("shards")
        ok = isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries)
        if not ok:
            raise DataError(f"Shard manifest {root / MANIFEST} has no list of {{'name': ...}} shards for split {split!r}.")
        return [(root / e["name"], e) for e in entries]
    found = sorted(glob.glob(str(root / pattern)))
    if not found:
        raise DataError(f"No shards matching {pattern!r} in {root} (and no {MANIFEST}).")
    return [(Path(p), None) for p in found]


def _read_split(root: Path, manifest: dict | None, split: str, pattern: str, cache_index: bool, verify: bool):
    """``(shard paths, per-sample columns)`` of one split, checked against the manifest."""
    shards, cols = [], {"shard": [], "offset": [], "nbytes": [], "names": [], "classes": []}
    for path, entry in _split_shards(root, manifest, split, pattern):
        if not path.is_file():
            raise DataError(f"Shard {path} not found" + (f" (listed in {root / MANIFEST})." if entry else "."))
        if entry is not None and path.stat().st_size != entry.get("bytes"):
            raise DataError(f"Shard {path} has {path.stat().st_size} bytes; {MANIFEST} says {entry.get('bytes')} (truncated or rewritten).")
        if verify and entry is not None and _sha256(path) != entry.get("sha256"):
            raise DataError(f"Shard {path} does not match the sha256 in {root / MANIFEST}.")
        samples = shard_index(path, cache=cache_index)
        if entry is not None and len(samples) != entry.get("count"):
            raise DataError(f"Shard {path} holds {len(samples)} samples; {MANIFEST} says {entry.get('count')}.")
        for key, ext, off, n, cls in samples:
            cols["shard"].append(len(shards))
            cols["offset"].append(off)
            cols["nbytes"].append(n)
            cols["names"].append(f"{key}.{ext}")
            cols["classes"].append(cls)
        shards.append(str(path))
    if not cols["names"]:
        raise DataError(f"The {split} shards in {root} hold no samples.")
    return shards, cols


def _labels(classes: list[str], index: dict[str, int], shards: list[str], cols: dict, split: str) -> torch.Tensor:
    out = []
    for i, c in enumerate(classes):
        if c not in index:
            where = f"{shards[cols['shard'][i]]}:{cols['names'][i]}"
            raise DataError(f"Sample {where} has class {c!r}, which is not one of the {len(index)} classes of the training shards.")
        out.append(index[c])
    return torch.as_tensor(out, dtype=torch.int64)


def _make_hierarchy(leaf_names: list[str], hierarchy: Any, hierarchy_file: Any, manifest: dict | None):
    if hierarchy_file is not None:

        def from_file():
            from granularity.hierarchy import load_hierarchy_file, match_classes

            return match_classes(load_hierarchy_file(hierarchy_file), leaf_names)

        return from_file
    cats = (manifest or {}).get("inat_categories")
    if hierarchy == "auto" and cats:
        return taxonomy_factory(cats, manifest.get("inat_ranks"), MANIFEST)
    return hierarchy_factory(leaf_names, hierarchy, NAME)


def load_shards(
    root: str | Path | None = None,
    image_size: int = 32,
    channels: int = 3,
    train_shards: str = "train-*.tar",
    test_shards: str = "test-*.tar",
    hierarchy: Any = "auto",
    hierarchy_file: str | Path | None = None,
    in_memory: bool | None = None,
    max_memory_mb: float = 2048,
    workers: int = 0,
    cache_index: bool = True,
    verify: bool = False,
) -> RealDataset:
    """Load WebDataset tar shards of images with class names or wnids.

    Parameters
    ----------
    root : folder
        Holds the shards, and ``manifest.json`` when :func:`write_shards` wrote them (then its
        shard lists, class order and counts are used and checked).
    image_size, channels, in_memory, max_memory_mb, workers
        As for ``image-folder``.
    train_shards, test_shards : str
        Glob patterns (relative to ``root``) of the shards when there is no manifest.
    hierarchy : "auto", "wordnet", "flat", dict or JSON parent map
        As for ``image-folder``; "auto" uses the iNat2021 taxonomy of a manifest written from
        the iNat2021 layout.
    hierarchy_file : path, optional
        A hierarchy file (see :func:`granularity.hierarchy.load_hierarchy_file`) whose leaves
        are matched to the class names.
    cache_index : bool
        Keep each shard's member index in ``<shard>.index.json`` (rebuilt when the shard changes).
    verify : bool
        Check every shard's sha256 against the manifest (reads all bytes once).
    """
    check_image_options(image_size, channels, in_memory, max_memory_mb, workers)
    check_hierarchy_option(hierarchy)
    if hierarchy_file is not None and not Path(hierarchy_file).is_file():  # before any shard is read
        raise param_error("hierarchy_file", "an existing hierarchy file (JSON, CSV/TSV or paths)", str(hierarchy_file))
    if root is None:
        raise param_error("root", "a folder holding WebDataset tar shards", None)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Shard folder {root} not found.")
    manifest = read_json(root / MANIFEST, "Shard manifest") if (root / MANIFEST).is_file() else None
    if manifest is not None and not (isinstance(manifest, dict) and isinstance(manifest.get("classes"), list)
                                     and isinstance(manifest.get("splits"), dict)):
        raise DataError(f"Shard manifest {root / MANIFEST} has no 'classes' list or 'splits' object.")
    tr_shards, tr = _read_split(root, manifest, "train", train_shards, cache_index, verify)
    te_shards, te = _read_split(root, manifest, "test", test_shards, cache_index, verify)
    leaf_names = [str(c) for c in manifest["classes"]] if manifest else sorted(set(tr["classes"]))
    index = {c: i for i, c in enumerate(leaf_names)}
    splits = {}
    for key, shards, cols in (("train", tr_shards, tr), ("test", te_shards, te)):
        y = _labels(cols["classes"], index, shards, cols, key)
        splits[key] = ShardSplit(shards, cols["shard"], cols["offset"], cols["nbytes"], cols["names"], y, image_size, channels)
    if in_memory is None:
        in_memory = fits_in_memory(len(splits["train"]) + len(splits["test"]), image_size, channels, max_memory_mb)
    if in_memory:
        splits = {k: s.materialize(num_workers=workers) for k, s in splits.items()}
    return RealDataset(
        name=NAME,
        version=VERSION,
        train=splits["train"],
        test=splits["test"],
        leaf_names=leaf_names,
        hierarchy_factory=_make_hierarchy(leaf_names, hierarchy, hierarchy_file, manifest),
        info={"root": str(root), "image_size": image_size, "in_memory": bool(in_memory)},
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # fixed metadata: the same images give the same bytes
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tf.addfile(info, io.BytesIO(data))
    # addfile does not set offset_data: the data are the last 512-byte blocks written
    info.offset_data = tf.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return info


def _write_index(path: Path, samples: list[list[Any]]) -> None:
    """The index cache of a shard just written (what a scan would find), so the first load
    need not scan it."""
    try:
        write_json(path.with_name(path.name + INDEX_SUFFIX), {"version": INDEX_VERSION, "shard": _fingerprint(path), "samples": samples})
    except OSError:
        pass


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
