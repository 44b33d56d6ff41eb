"""Fashion-MNIST: IDX parsing, locating, downloading (mocked) and the loaded tensors."""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from granularity.data import fashion_mnist as fm
from granularity.data import load_dataset
from granularity.data.idx import parse_idx, read_idx, write_idx
from granularity.errors import DataError

from fakes import write_fake_fmnist  # noqa: E402

DEBIAN = Path("/usr/share/datasets/fashion-mnist")

@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    # never look at the real machine-wide places or the network unless a test asks for it
    monkeypatch.delenv("GRANULARITY_DATA", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_net(*a, **k):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(fm.urllib.request, "urlopen", no_net)


# -- IDX --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, dtype, gz):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_idx_header_bytes_match_the_format(tmp_path):
    path = write_idx(tmp_path / "l.idx", np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00", "truncated"),
        (b"PK\x03\x04rest", "not an IDX file"),
        (bytes([0, 0, 8, 3, 0, 0]), "truncated inside its header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "truncated: dims"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 1, 2]), "trailing"),
    ],
)
def test_idx_errors_name_the_file(data, match):
    with pytest.raises(DataError, match=match) as exc:
        parse_idx(data, "some/file-idx1")
    assert "some/file-idx1" in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_gzip_names_the_file(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


# -- locating and loading ---------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_load_from_root_folder(tmp_path, gz):
    write_fake_fmnist(tmp_path / "d", gz=gz)
    ds = load_dataset("fashion-mnist", root=tmp_path / "d")
    assert ds.name == "fashion-mnist" and ds.version == "idx-1"
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape == (40, 1, 28, 28)
    assert ds.test.x.shape == (20, 1, 28, 28) and ds.train.y.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28) and ds.num_leaves == 10
    assert ds.leaf_names[0] == "T-shirt/top" and ds.leaf_names[9] == "Ankle boot"
    # class c images are ~20*c: labels and pixels stay paired
    assert torch.equal(ds.train.x[:, 0, 0, 0] // 20, ds.train.y.to(torch.uint8))
    assert list(ds.hierarchy.leaves) == ds.leaf_names  # leaf i is label i


def test_parsed_files_are_cached_until_they_change(tmp_path):
    d = write_fake_fmnist(tmp_path / "d")
    a = load_dataset("fashion-mnist", root=d)
    b = load_dataset("fashion-mnist", root=d)
    assert a.train.x.data_ptr() == b.train.x.data_ptr()
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.full(20, 3, dtype=np.uint8))
    c = load_dataset("fashion-mnist", root=d)
    assert torch.equal(c.test.y, torch.full((20,), 3))


def test_root_subfolder_and_env_var(tmp_path, monkeypatch):
    write_fake_fmnist(tmp_path / "data" / "fashion-mnist")
    assert len(load_dataset("fashion-mnist", root=tmp_path / "data").train) == 40
    monkeypatch.setenv("GRANULARITY_DATA", str(tmp_path / "data"))
    assert len(load_dataset("fashion-mnist").train) == 40


def test_debian_folder_is_searched(tmp_path, monkeypatch):
    write_fake_fmnist(tmp_path / "deb")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "deb")
    assert fm.find_files(None)["train_images"].parent == tmp_path / "deb"


def test_missing_without_network_is_one_clear_line(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("fashion-mnist", root=tmp_path / "empty")
    msg = str(exc.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "empty") in msg and "network unreachable" in msg
    with pytest.raises(DataError, match="download=False"):
        load_dataset("fashion-mnist", root=tmp_path / "empty", download=False)


def _serve(monkeypatch, payloads):
    calls = []

    def fake_urlopen(url, timeout):
        calls.append((url, timeout))
        name = url.rsplit("/", 1)[1]
        if url.startswith(fm.MIRRORS[0]) and "bad-first-mirror" in payloads:
            raise urllib.error.URLError("refused")
        return io.BytesIO(payloads[name])

    monkeypatch.setattr(fm.urllib.request, "urlopen", fake_urlopen)
    return calls


def test_download_checks_md5_and_caches(tmp_path, monkeypatch):
    src = write_fake_fmnist(tmp_path / "src")
    payloads = {p.name: p.read_bytes() for p in src.iterdir()}
    payloads["bad-first-mirror"] = b""
    monkeypatch.setattr(fm, "MD5", {k: hashlib.md5(v).hexdigest() for k, v in payloads.items()})
    calls = _serve(monkeypatch, payloads)
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRANULARITY_DATA", str(cache))
    ds = load_dataset("fashion-mnist", timeout=3)
    assert len(ds.train) == 40 and (cache / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert all(t == 3 for _, t in calls) and any(u.startswith(fm.MIRRORS[1]) for u, _ in calls)
    n_calls = len(calls)
    load_dataset("fashion-mnist")  # found in the cache now: no more requests
    assert len(calls) == n_calls


def test_download_with_wrong_checksum_fails(tmp_path, monkeypatch):
    src = write_fake_fmnist(tmp_path / "src")
    payloads = {p.name: p.read_bytes() for p in src.iterdir()}
    _serve(monkeypatch, payloads)  # official MD5s do not match the fake files
    with pytest.raises(DataError, match="MD5") as exc:
        load_dataset("fashion-mnist", root=tmp_path / "dl")
    assert "\n" not in str(exc.value)
    assert not list((tmp_path / "dl" / "fashion-mnist").glob("*.gz"))


def test_label_count_mismatch(tmp_path):
    d = write_fake_fmnist(tmp_path / "d")
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match="7 labels but image file"):
        load_dataset("fashion-mnist", root=d)


def test_subset_is_stratified_and_seeded(tmp_path):
    write_fake_fmnist(tmp_path / "d", n_train=100)
    ds = load_dataset("fashion-mnist", root=tmp_path / "d", subset=30, seed=3)
    assert len(ds.train) == 30 and torch.equal(ds.train.y.bincount(), torch.full((10,), 3))
    again = load_dataset("fashion-mnist", root=tmp_path / "d", subset=30, seed=3)
    assert torch.equal(ds.train.x, again.train.x)
    other = load_dataset("fashion-mnist", root=tmp_path / "d", subset=30, seed=4)
    assert not torch.equal(ds.train.x, other.train.x)


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_debian_files(monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", DEBIAN)
    ds = load_dataset("fashion-mnist", verify=True)
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert torch.equal(ds.train.y.bincount(), torch.full((10,), 6000))
    assert ds.hierarchy.leaves == ds.leaf_names and ds.hierarchy.num_classes(2) == 4
    assert abs(float(ds.mean[0]) - 0.2860) < 1e-3 and abs(float(ds.std[0]) - 0.3530) < 1e-3
