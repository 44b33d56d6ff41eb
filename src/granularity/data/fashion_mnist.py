"""Fashion-MNIST (Xiao et al. 2017), the built-in default real data set.

Where the four IDX files are looked for, in order:

1. ``root`` if given (the folder itself, then ``root/fashion-mnist``); nothing else;
2. otherwise ``$GRANULARITY_DATA`` (itself, then ``$GRANULARITY_DATA/fashion-mnist``), the
   Debian package's folder ``/usr/share/datasets/fashion-mnist`` (``apt-get install
   dataset-fashion-mnist``) and the cache ``~/.cache/granularity/data/fashion-mnist``.

Files may be ``.gz`` or uncompressed. When none is found and ``download=True`` the files are
fetched from the official sources (zalandoresearch GitHub, then the S3 mirror) with a short
timeout, checked against the official MD5 sums, and stored in ``root/fashion-mnist`` or the
cache (``$GRANULARITY_DATA/fashion-mnist`` when that is set). Without a network the error says
where it looked and how to install the files.
"""

from __future__ import annotations

import functools
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from granularity.data.base import RealDataset, Split
from granularity.data.idx import read_idx, read_idx_bytes
from granularity.errors import DataError

NAME = "fashion-mnist"
VERSION = "idx-1"
LEAF_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MD5 of the official .gz files (as published by Zalando and used by torchvision).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# SHA256 of the uncompressed IDX content; independent of how the .gz was compressed (the
# Debian package re-compresses the files, so its .gz differ from the official ones).
CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MIRRORS = [
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
#: The route without root: download from the official sources into the cache (MD5-checked).
FETCH_COMMAND = 'python -c "from granularity.data.fashion_mnist import locate; locate()"'


def cache_dir() -> Path:
    """``$GRANULARITY_DATA`` if set, else ``~/.cache/granularity/data``."""
    env = os.environ.get("GRANULARITY_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "granularity" / "data"


def candidate_dirs(root: str | Path | None) -> list[Path]:
    """Folders searched for the IDX files, in order."""
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / NAME]
    dirs: list[Path] = []
    env = os.environ.get("GRANULARITY_DATA")
    if env:
        dirs += [Path(env).expanduser(), Path(env).expanduser() / NAME]
    dirs.append(DEBIAN_DIR)
    cache = Path.home() / ".cache" / "granularity" / "data"
    dirs += [cache / NAME]
    return list(dict.fromkeys(dirs))


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_files(root: str | Path | None = None) -> dict[str, Path] | None:
    """The first folder holding all four files, as ``{key: path}``; ``None`` if none does."""
    for folder in candidate_dirs(root):
        found = {key: _file_in(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(dest: Path, timeout: float = 10.0) -> dict[str, Path]:
    """Fetch the four official ``.gz`` files into ``dest``, verifying their MD5 sums.

    Tries each mirror in turn; raises a :class:`DataError` with the last reason on failure.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for key, stem in FILES.items():
        fname = stem + ".gz"
        target = dest / fname
        if target.is_file() and _md5(target) == MD5[fname]:
            out[key] = target
            continue
        reasons = []
        for base in MIRRORS:
            tmp = dest / f".{fname}.part"
            try:
                with urllib.request.urlopen(base + fname, timeout=timeout) as resp, open(tmp, "wb") as fh:
                    while chunk := resp.read(1 << 20):
                        fh.write(chunk)
            except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
                tmp.unlink(missing_ok=True)
                reasons.append(f"{base}: {getattr(exc, 'reason', exc)}")
                continue
            digest = _md5(tmp)
            if digest != MD5[fname]:
                tmp.unlink(missing_ok=True)
                reasons.append(f"{base}{fname}: MD5 {digest} != expected {MD5[fname]}")
                continue
            os.replace(tmp, target)
            out[key] = target
            break
        else:
            raise DataError(f"Download of {fname} failed ({'; '.join(reasons)}).")
    return out


def verify_content(paths: dict[str, Path]) -> None:
    """Check the uncompressed content against the official SHA256 sums (raises DataError)."""
    for key, path in paths.items():
        stem = FILES[key]
        data = read_idx_bytes(path)  # one-line DataError for unreadable or corrupt gzip files
        digest = hashlib.sha256(data).hexdigest()
        if digest != CONTENT_SHA256[stem]:
            raise DataError(
                f"Fashion-MNIST file {path} differs from the official release (SHA256 of content "
                f"{digest[:12]}... != {CONTENT_SHA256[stem][:12]}...); delete it and fetch it again."
            )


def locate(root: str | Path | None = None, allow_download: bool = True, timeout: float = 10.0) -> dict[str, Path]:
    """Find the Fashion-MNIST files (see the module docstring), downloading if allowed."""
    found = find_files(root)
    if found is not None:
        return found
    looked = ", ".join(str(d) for d in candidate_dirs(root))
    if allow_download:
        dest = Path(root).expanduser() / NAME if root is not None else cache_dir() / NAME
        try:
            return download(dest, timeout=timeout)
        except (DataError, OSError) as exc:
            reason = f"download to {dest} failed: {str(exc).rstrip('.')}"
    else:
        reason = "download=False"
    raise DataError(
        f"Fashion-MNIST files (train-images-idx3-ubyte[.gz], ...) not found in {looked}; {reason}. "
        f"Install them by either route: with root on Debian/Ubuntu `{INSTALL_HINT}`; without "
        f"root, when online, `{FETCH_COMMAND}` (official sources, MD5-checked, into "
        f"{cache_dir() / NAME}), or put the 4 IDX files in a folder and pass root=<folder> or "
        "set GRANULARITY_DATA."
    )


def _images(path: Path) -> torch.Tensor:
    arr = read_idx(path)
    if arr.ndim != 3 or arr.dtype.itemsize != 1:
        raise DataError(f"Fashion-MNIST image file {path} must hold uint8 (N, H, W) images; got dims {arr.shape}, {arr.dtype}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"Fashion-MNIST image file {path} holds no images (dims {arr.shape}); delete it and fetch it again.")
    return torch.from_numpy(arr.astype("uint8", copy=False).copy()).unsqueeze(1)  # (N, 1, H, W)


def _labels(path: Path, n_images: int, images_path: Path) -> torch.Tensor:
    arr = read_idx(path)
    if arr.ndim != 1:
        raise DataError(f"Fashion-MNIST label file {path} must be 1-D; got dims {arr.shape}.")
    if len(arr) != n_images:
        raise DataError(f"Label file {path} has {len(arr)} labels but image file {images_path} has {n_images} images.")
    if len(arr) and (arr.min() < 0 or arr.max() >= len(LEAF_NAMES)):
        raise DataError(f"Label file {path} has labels outside 0..9 (min {arr.min()}, max {arr.max()}).")
    return torch.from_numpy(arr.astype("int64"))


@functools.lru_cache(maxsize=2)
def _read(key: tuple[tuple[str, int, int], ...]) -> tuple[torch.Tensor, ...]:
    """Parse the four files once per process (a study loads the set for every run).

    ``key`` holds (path, mtime, size) of the files in FILES order, so a changed file is
    re-read. The tensors are shared between loads: treat them as read-only.
    """
    p = dict(zip(FILES, (Path(k[0]) for k in key)))
    xtr = _images(p["train_images"])
    xte = _images(p["test_images"])
    ytr = _labels(p["train_labels"], len(xtr), p["train_images"])
    yte = _labels(p["test_labels"], len(xte), p["test_images"])
    return xtr, ytr, xte, yte


def _hierarchy():
    from granularity.hierarchy import fashion_mnist_hierarchy

    return fashion_mnist_hierarchy()


def load_fashion_mnist(
    root: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = False,
    timeout: float = 10.0,
) -> RealDataset:
    """Load Fashion-MNIST as uint8 ``(N, 1, 28, 28)`` tensors (60,000 train / 10,000 test).

    The parsed files are cached per process; the returned tensors are shared between loads,
    so treat them as read-only (``subset``/``select``/``to`` make new tensors).

    Parameters
    ----------
    root : folder, optional
        Folder with the four IDX files (or a ``fashion-mnist/`` subfolder). Default: search
        ``$GRANULARITY_DATA``, the Debian package folder and the cache.
    download : bool
        Fetch the official files (checked by MD5) when they are not found.
    verify : bool
        Also check the uncompressed content against the official SHA256 sums.
    timeout : float
        Seconds per download request.
    """
    paths = locate(root, allow_download=download, timeout=timeout)
    if verify:
        verify_content(paths)
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths.values())
    xtr, ytr, xte, yte = _read(key)
    return RealDataset(
        name=NAME,
        version=VERSION,
        train=Split(xtr, ytr),
        test=Split(xte, yte),
        leaf_names=list(LEAF_NAMES),
        hierarchy_factory=_hierarchy,
        info={"root": str(paths["train_images"].parent), "files": {k: str(v) for k, v in paths.items()}},
    )
