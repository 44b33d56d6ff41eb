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

:func:`granularity.data.shard_writer.write_shards` writes them from an image folder or the
iNat2021 layout.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from granularity.data.base import RealDataset, StreamSplit, decode_image
from granularity.data.image_folder import (
    EXTENSIONS, check_hierarchy_option, check_image_options, fits_in_memory, hierarchy_factory, parent_map_source,
)
from granularity.data.inat import taxonomy_factory
from granularity.errors import DataError, param_error
from granularity.utils.io import read_json, write_json

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
            raise DataError(f"Sample {where} has class {c!r}, which is not one of the {len(index)} classes listed in {MANIFEST}.")
        out.append(index[c])
    return torch.as_tensor(out, dtype=torch.int64)


def _make_hierarchy(leaf_names: list[str], hierarchy: Any, manifest: dict | None) -> tuple[Any, str | None]:
    """The tree factory and, when the data carry their own parents, where they come from."""
    cats = (manifest or {}).get("inat_categories")
    if hierarchy == "auto" and cats:
        return taxonomy_factory(cats, manifest.get("inat_ranks"), MANIFEST), "the iNat ranks of the shard manifest"
    return hierarchy_factory(leaf_names, hierarchy, NAME), parent_map_source(hierarchy)


def load_shards(
    root: str | Path | None = None,
    *,
    image_size: int = 32,
    channels: int = 3,
    train_shards: str = "train-*.tar",
    test_shards: str = "test-*.tar",
    hierarchy: Any = "auto",
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
        the iNat2021 layout. (A ``hierarchy_file`` is the data option every data set has.)
    cache_index : bool
        Keep each shard's member index in ``<shard>.index.json`` (rebuilt when the shard changes).
    verify : bool
        Check every shard's sha256 against the manifest (reads all bytes once).
    """
    check_image_options(image_size, channels, in_memory, max_memory_mb, workers)
    check_hierarchy_option(hierarchy)
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
    # a class only in the test shards is a leaf without training images ('unseen' in load_dataset)
    leaf_names = [str(c) for c in manifest["classes"]] if manifest else sorted(set(tr["classes"]) | set(te["classes"]))
    index = {c: i for i, c in enumerate(leaf_names)}
    splits = {}
    for key, shards, cols in (("train", tr_shards, tr), ("test", te_shards, te)):
        y = _labels(cols["classes"], index, shards, cols, key)
        splits[key] = ShardSplit(shards, cols["shard"], cols["offset"], cols["nbytes"], cols["names"], y, image_size, channels)
    if in_memory is None:
        in_memory = fits_in_memory(len(splits["train"]) + len(splits["test"]), image_size, channels, max_memory_mb)
    if in_memory:
        splits = {k: s.materialize(num_workers=workers) for k, s in splits.items()}
    factory, source = _make_hierarchy(leaf_names, hierarchy, manifest)
    return RealDataset(
        name=NAME, version=VERSION, train=splits["train"], test=splits["test"], leaf_names=leaf_names,
        hierarchy_factory=factory,
        info={"root": str(root), "image_size": image_size, "in_memory": bool(in_memory),
              **({"label_source": source} if source else {})},
    )


# --------------------------------------------------------------------------------------------
# Hashes and index caches (shared with the writer, granularity.data.shard_writer)
# --------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_index(path: Path, samples: list[list[Any]]) -> None:
    """The index cache of a shard just written (what a scan would find), so the first load
    need not scan it."""
    try:
        write_json(path.with_name(path.name + INDEX_SUFFIX), {"version": INDEX_VERSION, "shard": _fingerprint(path), "samples": samples})
    except OSError:
        pass
