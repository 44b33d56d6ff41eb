"""Corrupt input files in every supported format: each load either succeeds with consistent
content or raises a GranularityError whose message is one line and names the file (or the
column / label) -- never another exception type.

For each format a valid tiny file is written (with the writers the data tests use), then
truncated copies (0 bytes, inside the header, half, all but the last byte) and bit-flipped
copies (header bytes and seeded random positions), plus semantic corruptions (labels out of
range or outside the hierarchy, empty classes, mismatched counts, wrong magic numbers, two
parents, cycles). The number of cases tried per format is written to
``<pytest tmp>/corruption-counts.json`` and printed at the end of the session.
"""

from __future__ import annotations

import copy
import gzip
import json
import pickle
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from data_writers import (  # noqa: E402
    CIFAR_COARSE,
    CIFAR_FINE,
    write_cifar100,
    write_image_folder,
    write_inat,
)

from granularity.data import load_dataset  # noqa: E402
from granularity.data.idx import write_idx  # noqa: E402
from granularity.errors import GranularityError  # noqa: E402
from granularity.hierarchy import LabelHierarchy, cifar100_hierarchy, inat2021_hierarchy  # noqa: E402



# --------------------------------------------------------------------------- bookkeeping
@pytest.fixture(scope="session")
def tally(request, tmp_path_factory):
    """Per-format counters {format: Counter(tried, loaded, rejected)}; reported at the end."""
    counts: dict[str, Counter] = {}
    yield counts
    total = Counter()
    for c in counts.values():
        total.update(c)
    out = tmp_path_factory.getbasetemp() / "corruption-counts.json"
    data = {k: dict(v) for k, v in sorted(counts.items())} | {"total": dict(total)}
    out.write_text(json.dumps(data, indent=2))
    line = (f"corruption suite: {total['tried']} bad inputs tried ({total['loaded']} loaded consistently, "
            f"{total['rejected']} rejected with a one-line error); per format: "
            + ", ".join(f"{k} {v['tried']}" for k, v in sorted(counts.items())) + f"; counts in {out}")

    def report():  # after the run, when output is no longer captured
        rep = request.config.pluginmanager.get_plugin("terminalreporter")
        rep.write_line(line) if rep is not None else print(line)

    request.config.add_cleanup(report)


class Probe:
    """Runs loads, classifies outcomes and collects anything that is not allowed."""

    def __init__(self, tally: dict[str, Counter], fmt: str):
        self.c = tally.setdefault(fmt, Counter())
        self.fmt = fmt
        self.bad: list[str] = []

    def __call__(self, case: str, load, names, check=None, expect: str | None = None) -> str:
        """``load()`` must succeed (then ``check(result)`` must hold) or raise a one-line
        GranularityError naming one of ``names``; ``expect`` ("loaded"/"rejected") pins which.
        Returns "loaded", "rejected", or "raw"/"bad" (recorded as failures)."""
        got = self._run(case, load, names, check)
        if expect is not None and got in ("loaded", "rejected") and got != expect:
            self.bad.append(f"{case}: {got}, expected {expect}")
        return got

    def _run(self, case, load, names, check):
        self.c["tried"] += 1
        names = [names] if isinstance(names, str) else list(names)
        try:
            obj = load()
        except GranularityError as exc:
            msg = str(exc)
            if "\n" in msg or not msg.strip():
                self.bad.append(f"{case}: multi-line/empty message {msg!r}")
            elif not any(n in msg for n in names):
                self.bad.append(f"{case}: message names none of {names}: {msg}")
            self.c["rejected"] += 1
            return "rejected"
        except Exception as exc:  # noqa: BLE001 - exactly what this suite looks for
            self.bad.append(f"{case}: raw {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}")
            return "raw"
        if check is not None:
            try:
                check(obj)
            except AssertionError as exc:
                self.bad.append(f"{case}: loaded but inconsistent: {exc}")
                return "bad"
        self.c["loaded"] += 1
        return "loaded"

    def done(self, *others: Probe) -> None:
        bad = [f"{p.fmt}: {b}" for p in (self, *others) for b in p.bad]
        assert not bad, f"{len(bad)} bad outcome(s):\n" + "\n".join(bad)


def corrupt_copies(data: bytes, seed: int, header: int = 8, n_random: int = 4):
    """(label, bytes) pairs: truncations and single bit flips (header and seeded random)."""
    n = len(data)
    cuts = sorted({0, 1, min(3, n - 1), min(header, n - 1), n // 2, n - 1})
    out = [(f"truncated@{c}", data[:c]) for c in cuts if c < n]
    rng = np.random.default_rng(seed)
    positions = sorted({p for p in range(min(header, n))}) + sorted(rng.choice(n, size=min(n_random, n), replace=False).tolist())
    for p in positions:
        bit = int(rng.integers(0, 8))
        b = bytearray(data)
        b[p] ^= 1 << bit
        out.append((f"flip@{p}.{bit}", bytes(b)))
    return out


# --------------------------------------------------------------------------- consistency
def check_dataset(loaded):
    ds, h = loaded
    n = ds.num_leaves
    assert n == len(ds.leaf_names) >= 1, "leaf count"
    assert h.num_leaves == n, f"hierarchy has {h.num_leaves} leaves for {n} classes"
    for name, split in (("train", ds.train), ("test", ds.test)):
        y = split.y
        assert y.ndim == 1 and len(split) == y.shape[0], f"{name}: labels not 1-D"
        if len(y):
            assert 0 <= int(y.min()) and int(y.max()) < n, f"{name}: labels outside 0..{n - 1}"
        if split.in_memory:
            assert split.x.shape[0] == y.shape[0], f"{name}: {split.x.shape[0]} inputs, {y.shape[0]} labels"
    assert len(ds.train) > 0, "empty training split"


def with_hierarchy(load):
    def run():
        ds = load()
        return ds, ds.hierarchy

    return run


def check_tree(h):
    assert isinstance(h, LabelHierarchy)
    assert h.num_leaves >= 1 and len(set(h.leaves)) == h.num_leaves
    for leaf in h.leaves:
        assert h.ancestors(leaf)[-1] == h.root if h.ancestors(leaf) else True
    assert sum(h.level_sizes()) >= h.num_leaves


# --------------------------------------------------------------------------- Fashion-MNIST
from fakes import write_fake_fmnist  # noqa: E402

FM_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_fmnist(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> Path:
    return write_fake_fmnist(folder, n_train, n_test, gz=gz)


@pytest.fixture
def no_fmnist_search(monkeypatch, tmp_path):
    from granularity.data import fashion_mnist as fm

    monkeypatch.delenv("GRANULARITY_DATA", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")


def _fm_load(d):
    return with_hierarchy(lambda: load_dataset("fashion-mnist", root=d, download=False))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_mnist_idx(tmp_path, tally, gz, no_fmnist_search):
    probe = Probe(tally, "fashion-mnist-idx")
    good = write_fmnist(tmp_path / "good", gz)
    assert probe("valid", _fm_load(good), str(good), check_dataset) == "loaded"
    ext = ".gz" if gz else ""
    k = 0
    for target in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        raw = (good / (target + ext)).read_bytes()
        for label, data in corrupt_copies(raw, seed=zlib.crc32(f"{target}{gz}".encode()), header=12 if not gz else 10):
            k += 1
            d = write_fmnist(tmp_path / f"c{k}", gz)
            (d / (target + ext)).write_bytes(data)
            probe(f"{target}{ext}:{label}", _fm_load(d), target, check_dataset)
            if label.startswith("truncated"):  # the SHA256 check reads the files too
                probe(f"{target}{ext}:{label}:verify", lambda: load_dataset("fashion-mnist", root=d, download=False, verify=True),
                      str(d), expect="rejected")  # tiny fakes never match the official sums
        if gz:  # also corrupt the IDX content inside a valid gzip stream
            body = gzip.decompress(raw)
            for label, data in corrupt_copies(body, seed=7, header=12, n_random=2):
                k += 1
                d = write_fmnist(tmp_path / f"c{k}", gz)
                (d / (target + ext)).write_bytes(gzip.compress(data))
                probe(f"{target}{ext}:inner-{label}", _fm_load(d), target, check_dataset)

    def semantic(name, mutate):
        nonlocal k
        k += 1
        d = write_fmnist(tmp_path / f"s{k}", gz)
        mutate(d)
        probe(name, _fm_load(d), [str(d)], check_dataset, expect="rejected")

    # labels out of range, mismatched image/label counts, wrong magic, wrong dims
    semantic("label 10", lambda d: write_idx(d / f"train-labels-idx1-ubyte{ext}", np.full(20, 10, np.uint8)))
    semantic("label 255", lambda d: write_idx(d / f"t10k-labels-idx1-ubyte{ext}", np.full(10, 255, np.uint8)))
    semantic("count mismatch", lambda d: write_idx(d / f"train-labels-idx1-ubyte{ext}", np.zeros(19, np.uint8)))
    semantic("labels 2-D", lambda d: write_idx(d / f"train-labels-idx1-ubyte{ext}", np.zeros((20, 1), np.uint8)))
    semantic("images 2-D", lambda d: write_idx(d / f"train-images-idx3-ubyte{ext}", np.zeros((20, 784), np.uint8)))
    semantic("images float", lambda d: write_idx(d / f"train-images-idx3-ubyte{ext}", np.zeros((20, 28, 28), np.float32)))
    semantic("labels int32", lambda d: write_idx(d / f"train-labels-idx1-ubyte{ext}", np.full(20, -1, np.int32)))
    semantic("empty train", lambda d: [write_idx(d / f"train-images-idx3-ubyte{ext}", np.zeros((0, 28, 28), np.uint8)),
                                       write_idx(d / f"train-labels-idx1-ubyte{ext}", np.zeros(0, np.uint8))])

    def magic(d):
        p = d / f"t10k-images-idx3-ubyte{ext}"
        body = bytearray(gzip.decompress(p.read_bytes()) if gz else p.read_bytes())
        body[0:4] = b"\x08\x03\x00\x00"
        p.write_bytes(gzip.compress(bytes(body)) if gz else bytes(body))

    semantic("wrong magic", magic)
    probe("root not a path", lambda: load_dataset("fashion-mnist", root=3, download=False), "root", expect="rejected")
    semantic("not a file", lambda d: [(d / f"t10k-labels-idx1-ubyte{ext}").unlink(),
                                      (d / f"t10k-labels-idx1-ubyte{ext}").mkdir()])
    probe.done()


# --------------------------------------------------------------------------- CIFAR-100
def _cifar_load(root):
    return with_hierarchy(lambda: load_dataset("cifar100", root=root))


def _cifar_tree(root):
    return lambda: cifar100_hierarchy(root)


def check_cifar_tree(h):
    check_tree(h)
    assert h.num_leaves == len(CIFAR_FINE)


def rewrite_pickle(path: Path, mutate) -> None:
    d = pickle.loads(path.read_bytes())
    mutate(d)
    path.write_bytes(pickle.dumps(d, protocol=2))


def test_cifar100_pickles(tmp_path, tally):
    probe = Probe(tally, "cifar100-pickle")
    tree = Probe(tally, "cifar100-hierarchy")
    good = write_cifar100(tmp_path / "good", n_train=12, n_test=6)
    assert probe("valid", _cifar_load(good), str(good), check_dataset) == "loaded"
    assert tree("valid", _cifar_tree(good), str(good), check_cifar_tree) == "loaded"
    k = 0
    for part in ("meta", "train", "test"):
        raw = (good / "cifar-100-python" / part).read_bytes()
        for label, data in corrupt_copies(raw, seed=len(part), header=6, n_random=5):
            k += 1
            root = write_cifar100(tmp_path / f"c{k}", n_train=12, n_test=6)
            (root / "cifar-100-python" / part).write_bytes(data)
            names = [str(root)]
            probe(f"{part}:{label}", _cifar_load(root), names, check_dataset)
            tree(f"{part}:{label}", _cifar_tree(root), names, check_cifar_tree)

    def semantic(name, part, mutate, expect="rejected"):
        nonlocal k
        k += 1
        root = write_cifar100(tmp_path / f"s{k}", n_train=12, n_test=6)
        rewrite_pickle(root / "cifar-100-python" / part, mutate)
        a = probe(name, _cifar_load(root), [str(root)], check_dataset)
        b = tree(name, _cifar_tree(root), [str(root)], check_cifar_tree)
        if expect != "any" and expect not in (a, b):
            probe.bad.append(f"{name}: loader {a}, builder {b}; expected {expect} from at least one")

    def set_(key, value):
        return lambda d: d.__setitem__(key, value)

    semantic("fine label out of range", "train", set_(b"fine_labels", [99] * 12))
    semantic("negative coarse label", "test", set_(b"coarse_labels", [-1] * 6))
    semantic("fine with two coarse parents", "train", set_(b"coarse_labels", [0] * 12))
    semantic("count mismatch", "train", set_(b"fine_labels", [0] * 5))
    semantic("labels not numbers", "test", set_(b"fine_labels", ["x"] * 6))
    semantic("labels None", "test", set_(b"fine_labels", None))
    semantic("data wrong shape", "train", set_(b"data", np.zeros((12, 100), np.uint8)))
    semantic("data not an array", "train", set_(b"data", "pixels"))
    semantic("no fine_labels", "train", lambda d: d.pop(b"fine_labels"))
    semantic("meta names not a list", "meta", set_(b"fine_label_names", 7))
    semantic("meta names missing", "meta", lambda d: d.pop(b"coarse_label_names"))
    semantic("meta empty fine names", "meta", set_(b"fine_label_names", []))
    semantic("meta duplicate fine names", "meta", set_(b"fine_label_names", [b"rose"] * len(CIFAR_FINE)))
    semantic("meta non-utf8 key", "meta", lambda d: d.__setitem__(b"\xff\xfe", 1) or d.pop(b"fine_label_names"))
    semantic("meta fewer coarse names", "meta", set_(b"coarse_label_names", [b"x"]))
    semantic("empty class (no samples of a fine class)", "train", set_(b"fine_labels", [0, 1, 2, 3, 4, 0] * 2), expect="any")
    k += 1
    root = write_cifar100(tmp_path / f"s{k}", n_train=12, n_test=6)
    (root / "cifar-100-python" / "train").write_bytes(pickle.dumps([1, 2, 3]))
    probe("pickle of a list", _cifar_load(root), str(root), expect="rejected")
    tree("pickle of a list", _cifar_tree(root), str(root), expect="rejected")
    probe.done(tree)


# --------------------------------------------------------------------------- iNat2021 JSON
def _inat_load(root):
    return with_hierarchy(lambda: load_dataset("inat2021", root=root, image_size=8))


def test_inat2021_json(tmp_path, tally):
    probe = Probe(tally, "inat2021-json")
    tree = Probe(tally, "inat2021-hierarchy")
    good = write_inat(tmp_path / "good", per_class=(2, 1))
    assert probe("valid", _inat_load(good), str(good), check_dataset) == "loaded"
    assert tree("valid", lambda: inat2021_hierarchy(good / "train.json"), "train.json", check_tree) == "loaded"
    raw = (good / "train.json").read_bytes()
    k = 0
    for label, data in corrupt_copies(raw, seed=3, header=4, n_random=10):
        k += 1
        root = write_inat(tmp_path / f"c{k}", per_class=(2, 1))
        (root / "train.json").write_bytes(data)
        probe(f"train.json:{label}", _inat_load(root), "train.json", check_dataset)
        tree(f"train.json:{label}", lambda: inat2021_hierarchy(root / "train.json"), "train.json", check_tree)

    def semantic(name, mutate, part="train"):
        nonlocal k
        k += 1
        root = write_inat(tmp_path / f"s{k}", per_class=(2, 1))
        p = root / f"{part}.json"
        d = json.loads(p.read_text())
        mutate(d)
        p.write_text(json.dumps(d))
        probe(name, _inat_load(root), f"{part}.json", check_dataset)
        tree(name, lambda: inat2021_hierarchy(p), f"{part}.json", check_tree)

    semantic("unknown category", lambda d: d["annotations"][0].__setitem__("category_id", 99))
    semantic("unknown category in val", lambda d: d["annotations"][0].__setitem__("category_id", 99), part="val")
    semantic("image without annotation", lambda d: d["annotations"].pop())
    semantic("annotation without image", lambda d: d["images"].pop())
    semantic("file_name a number", lambda d: d["images"][0].__setitem__("file_name", 5))
    semantic("file_name null", lambda d: d["images"][0].__setitem__("file_name", None))
    semantic("file_name missing file", lambda d: d["images"][0].__setitem__("file_name", "nope.jpg"))
    semantic("category id string", lambda d: d["categories"][0].__setitem__("id", "zero"))
    semantic("category id null", lambda d: d["categories"][0].__setitem__("id", None))
    semantic("category id huge float", lambda d: d["categories"][0].__setitem__("id", 1e400))
    semantic("category not an object", lambda d: d["categories"].__setitem__(0, "Morus"))
    semantic("category lacks genus", lambda d: d["categories"][0].pop("genus"))
    semantic("rank value a list", lambda d: d["categories"][0].__setitem__("genus", ["a", "b"]))
    semantic("rank value null", lambda d: d["categories"][1].__setitem__("family", None))
    semantic("species under two genera (duplicate name)", lambda d: d["categories"][1].__setitem__("name", "Morus bassanus"))
    semantic("duplicate category ids", lambda d: d["categories"][1].__setitem__("id", 0))
    semantic("no categories", lambda d: d.__setitem__("categories", []))
    semantic("categories an object", lambda d: d.__setitem__("categories", {"a": 1}))
    semantic("images not a list", lambda d: d.__setitem__("images", 3))
    semantic("annotation not an object", lambda d: d["annotations"].__setitem__(0, 3))
    semantic("top level a list", lambda d: (d.clear(), d.update({"x": [1]})))
    k += 1
    root = write_inat(tmp_path / f"s{k}", per_class=(2, 1))
    (root / "train.json").unlink()
    (root / "train.json").mkdir()
    probe("train.json a folder", _inat_load(root), "train.json")
    tree("train.json a folder", lambda: inat2021_hierarchy(root / "train.json"), "train.json")
    probe.done(tree)


# --------------------------------------------------------------------------- image folders
@pytest.mark.parametrize("ext", [".JPEG", ".png"])
def test_image_folder_files(tmp_path, tally, ext):
    probe = Probe(tally, f"image-folder-{ext.lower().strip('.')}")
    good = write_image_folder(tmp_path / "good", classes=("cat", "dog"), per_class=(2, 1))
    load = lambda r: with_hierarchy(lambda: load_dataset("image-folder", root=r, image_size=8))  # noqa: E731
    assert probe("valid", load(good), str(good), check_dataset) == "loaded"
    name = "cat_1.JPEG" if ext == ".JPEG" else "cat_0.png"
    raw = (good / "train" / "cat" / name).read_bytes()
    k = 0
    for label, data in corrupt_copies(raw, seed=11, header=16, n_random=8):
        k += 1
        root = write_image_folder(tmp_path / f"c{k}", classes=("cat", "dog"), per_class=(2, 1))
        (root / "train" / "cat" / name).write_bytes(data)
        probe(f"{name}:{label}", load(root), name, check_dataset)
    # streamed: the error comes when the image is read
    root = tmp_path / f"c{k}"
    probe(f"{name}:streamed", lambda: [x for x in load_dataset("image-folder", root=root, image_size=8, in_memory=False).train.dataset],
          name)
    # a text file and an empty file with an image extension
    k += 1
    root = write_image_folder(tmp_path / f"s{k}", classes=("cat", "dog"), per_class=(2, 1))
    (root / "train" / "dog" / f"notes{ext}").write_text("not an image\n")
    probe("text file", load(root), f"notes{ext}", expect="rejected")
    probe.done()


def test_image_folder_layout(tmp_path, tally):
    probe = Probe(tally, "image-folder-layout")
    load = lambda r, **kw: with_hierarchy(lambda: load_dataset("image-folder", root=r, image_size=8, **kw))  # noqa: E731

    def case(name, mutate, expect=None, **kw):
        root = write_image_folder(tmp_path / name.replace(" ", "_"), classes=("cat", "dog"), per_class=(2, 1))
        mutate(root)
        got = probe(name, load(root, **kw), [str(root), "Parent map", "pm.json", "pm2.json"], check_dataset)
        if expect is not None and got in ("loaded", "rejected") and got != expect:
            probe.bad.append(f"{name}: {got}, expected {expect}")

    import shutil

    case("empty class folder in train", lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()])
    case("empty class folder in val", lambda r: [p.unlink() for p in (r / "val" / "dog").iterdir()])
    case("val class unknown", lambda r: (r / "val" / "cow").mkdir() or shutil.copy(next((r / "val" / "cat").iterdir()), r / "val" / "cow" / "x.png"), "rejected")
    case("no val", lambda r: shutil.rmtree(r / "val"), "rejected")
    case("no train classes", lambda r: [shutil.rmtree(p) for p in (r / "train").iterdir()], "rejected")
    case("train is a file", lambda r: shutil.rmtree(r / "train") or (r / "train").write_text("x"), "rejected")
    case("parent map missing a class", lambda r: None, "rejected", hierarchy={"cat": "animal"})
    case("parent map with a cycle", lambda r: None, "rejected", hierarchy={"cat": "a", "dog": "a", "a": "b", "b": "a"})

    def bomb(r):  # a valid PNG whose header claims 40000 x 40000 pixels (correct CRC)
        import struct
        import zlib

        p = next((r / "train" / "cat").glob("*.png"))
        b = bytearray(p.read_bytes())
        b[16:24] = struct.pack(">II", 40000, 40000)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
        p.write_bytes(bytes(b))

    case("decompression bomb header", bomb, "rejected")
    pm = tmp_path / "pm.json"
    pm.write_text("{not json")
    case("parent map file corrupt", lambda r: None, "rejected", hierarchy=str(pm))
    pm2 = tmp_path / "pm2.json"
    pm2.write_text('{"cat": "a", "dog": "a", "a": "cat"}')
    case("parent map file with a cycle", lambda r: None, "rejected", hierarchy=str(pm2))
    probe.done()


# --------------------------------------------------------------------------- CSV / Parquet / npz
def small_table():
    import pandas as pd

    rng = np.random.default_rng(0)
    fine = np.repeat(["a", "b", "c", "d"], 5)
    coarse = np.array([{"a": "x", "b": "x", "c": "y", "d": "y"}[f] for f in fine])
    return pd.DataFrame({"f0": rng.normal(size=20).round(3), "f1": rng.normal(size=20).round(3),
                         "coarse": coarse, "fine": fine})


def _table_load(p):
    return with_hierarchy(lambda: load_dataset("table", root=p, label_columns=["coarse", "fine"]))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables(tmp_path, tally, fmt):
    probe = Probe(tally, fmt)
    df = small_table()
    good = tmp_path / f"good.{fmt}"
    df.to_csv(good, index=False) if fmt == "csv" else df.to_parquet(good, index=False)
    assert probe("valid", _table_load(good), good.name, check_dataset) == "loaded"
    raw = good.read_bytes()
    k = 0
    for label, data in corrupt_copies(raw, seed=5, header=8, n_random=12):
        k += 1
        p = tmp_path / f"c{k}.{fmt}"
        p.write_bytes(data)
        probe(label, _table_load(p), [p.name, "'fine'", "'coarse'"], check_dataset)

    def semantic(name, mutate, expect=None):
        nonlocal k
        k += 1
        p = tmp_path / f"s{k}.{fmt}"
        d = mutate(small_table())
        d.to_csv(p, index=False) if fmt == "csv" else d.to_parquet(p, index=False)
        got = probe(name, _table_load(p), [p.name, "'fine'", "'coarse'"], check_dataset)
        if expect is not None and got in ("loaded", "rejected") and got != expect:
            probe.bad.append(f"{name}: {got}, expected {expect}")

    def two_parents(d):
        d.loc[0, "coarse"] = "y"
        return d

    semantic("fine label with two parents", two_parents, "rejected")
    semantic("missing label column", lambda d: d.drop(columns=["coarse"]), "rejected")
    semantic("missing label values", lambda d: d.assign(fine=d["fine"].where(d.index > 0, None)), "rejected")
    semantic("feature not numeric", lambda d: d.assign(f0=d["f0"].astype(str) + "m"), "rejected")
    semantic("NaN feature", lambda d: d.assign(f1=d["f1"].where(d.index > 2, np.nan)), "rejected")
    semantic("empty table", lambda d: d.iloc[:0], "rejected")
    semantic("only labels", lambda d: d[["coarse", "fine"]], "rejected")
    semantic("fine equals a coarse name", lambda d: d.assign(fine=d["fine"].replace({"a": "coarse:x"})))
    semantic("bad split value", lambda d: d.assign(split=["train"] * 19 + ["oops"]), "rejected")
    semantic("split all test", lambda d: d.assign(split=["test"] * 20), "rejected")
    semantic("one sample per class", lambda d: d.iloc[[0, 5, 10, 15]])
    semantic("mixed label types", lambda d: d.assign(fine=[1, "a"] * 10) if fmt == "csv" else d.assign(fine=list(range(20))))
    probe.done()


def test_npz(tmp_path, tally):
    probe = Probe(tally, "npz")
    rng = np.random.default_rng(0)
    fine = np.repeat(np.arange(4), 5)
    arrays = dict(x=rng.normal(size=(20, 3)).astype(np.float32), coarse=fine // 2, fine=fine)
    good = tmp_path / "good.npz"
    np.savez(good, **arrays)
    load = lambda p: with_hierarchy(lambda: load_dataset("npz", root=p, label_keys=["coarse", "fine"]))  # noqa: E731
    names = lambda p: [p.name, "'fine'", "'coarse'"]  # noqa: E731
    assert probe("valid", load(good), good.name, check_dataset) == "loaded"
    k = 0
    for compressed in (False, True):
        src = good
        if compressed:
            src = tmp_path / "goodz.npz"
            np.savez_compressed(src, **arrays)
        for label, data in corrupt_copies(src.read_bytes(), seed=13 + compressed, header=8, n_random=12):
            k += 1
            p = tmp_path / f"c{k}.npz"
            p.write_bytes(data)
            probe(f"{'z' if compressed else ''}{label}", load(p), names(p), check_dataset)

    def semantic(name, expect="rejected", **arrs):
        nonlocal k
        k += 1
        p = tmp_path / f"s{k}.npz"
        np.savez(p, **(arrays | arrs))
        got = probe(name, load(p), names(p), check_dataset)
        if expect is not None and got in ("loaded", "rejected") and got != expect:
            probe.bad.append(f"{name}: {got}, expected {expect}")

    semantic("two parents", coarse=np.r_[1, fine[1:] // 2])
    semantic("count mismatch", fine=fine[:-1])
    semantic("labels 2-D", fine=fine[:, None])
    semantic("coarse 2-D", coarse=np.stack([fine // 2, fine // 2], 1))
    semantic("x scalar", x=np.float32(3))
    semantic("x strings", x=np.array(["a"] * 20))
    semantic("x NaN", x=np.full((20, 3), np.nan, np.float32))
    semantic("no rows", x=np.zeros((0, 3), np.float32), coarse=np.zeros(0, int), fine=np.zeros(0, int))
    semantic("labels float with NaN", fine=np.r_[np.nan, fine[1:]].astype(float))
    semantic("split length differs", split=np.array(["train"] * 3))
    k += 1
    p = tmp_path / f"s{k}.npz"
    np.savez(p, x=arrays["x"], fine=fine)
    probe("missing label array", load(p), names(p), expect="rejected")
    k += 1
    p = tmp_path / f"s{k}.npz"
    np.savez(p, x_train=arrays["x"], coarse_train=fine // 2, fine_train=fine, x_test=np.zeros((2, 4), np.float32),
             coarse_test=np.zeros(2, int), fine_test=np.zeros(2, int))
    probe("train/test feature shapes differ", load(p), names(p), expect="rejected")
    k += 1
    p = tmp_path / f"s{k}.npz"
    np.savez(p, x=np.array([{"a": 1}] * 20, dtype=object), coarse=fine // 2, fine=fine)
    probe("object array", load(p), names(p), expect="rejected")
    probe.done()


# --------------------------------------------------------------------------- hierarchy JSON
def test_hierarchy_json(tmp_path, tally):
    probe = Probe(tally, "hierarchy-json")
    h = LabelHierarchy.from_parent_map({"a": "x", "b": "x", "c": "y", "x": "r", "y": "r"}, root="r", name="t")
    good = h.save(tmp_path / "good.json")
    assert probe("valid", lambda: LabelHierarchy.load(good), good.name, check_tree) == "loaded"
    k = 0
    for label, data in corrupt_copies(good.read_bytes(), seed=17, header=4, n_random=16):
        k += 1
        p = tmp_path / f"c{k}.json"
        p.write_bytes(data)
        probe(label, lambda: LabelHierarchy.load(p), p.name, check_tree)

    def semantic(name, mutate, expect="rejected", drop_hash=True):
        nonlocal k
        k += 1
        d = copy.deepcopy(h.to_dict())
        if drop_hash:
            d.pop("content_hash")
        mutate(d)
        p = tmp_path / f"s{k}.json"
        p.write_text(json.dumps(d))
        got = probe(name, lambda: LabelHierarchy.load(p), p.name, check_tree)
        if expect is not None and got in ("loaded", "rejected") and got != expect:
            probe.bad.append(f"{name}: {got}, expected {expect}")

    def setp(key, value):
        return lambda d: d["parent"].__setitem__(key, value)

    semantic("cycle", lambda d: d["parent"].update({"x": "y", "y": "x"}))
    semantic("self loop", setp("x", "x"))
    semantic("root with a parent", setp("r", "a"))
    semantic("a label with two parents", setp("a", ["x", "y"]))
    semantic("unknown parent", setp("a", "zz"))
    semantic("leaf outside the hierarchy", lambda d: d["leaves"].append("q"))
    semantic("duplicate leaf", lambda d: d["leaves"].append("a"))
    semantic("internal node listed as leaf", lambda d: d["leaves"].append("x"))
    semantic("childless node not a leaf", lambda d: d["leaves"].remove("c"))
    semantic("empty parent map", lambda d: d.__setitem__("parent", {}))
    semantic("edited without hash update", setp("a", "y"), drop_hash=False)
    semantic("wrong format", lambda d: d.__setitem__("format", "other"))
    semantic("leaves not a list", lambda d: d.__setitem__("leaves", "abc"))
    semantic("parent a list", lambda d: d.__setitem__("parent", [["a", "x"]]))
    semantic("no root", lambda d: d.pop("root"))
    semantic("titles a list", lambda d: d.__setitem__("titles", [1, 2]))
    semantic("titles a string", lambda d: d.__setitem__("titles", "ab"))
    semantic("meta a list", lambda d: d.__setitem__("meta", [1]))
    semantic("level_names an int", lambda d: d.__setitem__("level_names", 3))
    semantic("level_names too short", lambda d: d.__setitem__("level_names", ["r"]))
    semantic("internal an int", lambda d: d.__setitem__("internal", 5))
    semantic("internal missing a node", lambda d: d.__setitem__("internal", ["x"]))
    semantic("leaf a dict", lambda d: d["leaves"].__setitem__(0, {"a": 1}))
    semantic("parent null", setp("a", None))
    semantic("empty name", setp("", "x"))
    semantic("top level a list", lambda d: (d.clear(),), expect="rejected")
    k += 1
    p = tmp_path / "folder.json"
    p.mkdir()
    probe("a folder", lambda: LabelHierarchy.load(p), p.name, expect="rejected")
    probe.done()


# --------------------------------------------------------------------------- WordNet class lists
@pytest.fixture(scope="module")
def wn(tmp_path_factory):
    from granularity.hierarchy.wordnet_db import ensure_wordnet, wordnet_missing_reason, wordnet_reader

    if reason := wordnet_missing_reason():  # either route: Debian or NLTK's data package
        pytest.skip(reason)

    cache = tmp_path_factory.mktemp("wncache")
    ensure_wordnet(cache)
    return wordnet_reader(cache)


def test_wordnet_class_lists(tmp_path, tally, wn):
    from granularity.hierarchy.wordnet import imagenet21k_hierarchy

    probe = Probe(tally, "wordnet-class-list")
    good = tmp_path / "good.txt"
    good.write_text("n01440764 tench\nn01443537 goldfish\nn02123045\n")
    load = lambda p: lambda: imagenet21k_hierarchy(p, wn=wn)  # noqa: E731
    assert probe("valid", load(good), good.name, check_tree) == "loaded"
    k = 0
    for label, data in corrupt_copies(good.read_bytes(), seed=19, header=10, n_random=8):
        k += 1
        p = tmp_path / f"c{k}.txt"
        p.write_bytes(data)
        probe(label, load(p), [p.name, "wnid", "n0"], check_tree)
    for name, text in [("empty lines only", "\n\n"), ("comments only", "# x\n"), ("not a wnid", "cat\n"),
                       ("unknown synset", "n00000001\n"), ("verb offset", "v01440764\n"),
                       ("duplicate", "n01440764\nn01440764\n"), ("WordNet root", "n00001740\n"),
                       ("binary", None)]:
        k += 1
        p = tmp_path / f"s{k}.txt"
        p.write_bytes(bytes(range(256)) if text is None else text.encode())
        probe(name, load(p), [p.name, "wnid", "n0"], expect="rejected")
    p = tmp_path / "dir.txt"
    p.mkdir()
    probe("a folder", load(p), p.name, expect="rejected")
    probe.done()


# --------------------------------------------------------------------------- config YAML / JSON
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_files(tmp_path, tally, suffix):
    import yaml

    from granularity.theory.config import SimConfig
    from granularity.utils.config import load_config_file

    probe = Probe(tally, f"config{suffix}")
    doc = {"data": {"d": 16, "k": 2}, "train": {"steps": 5, "lr": 0.1}, "seed": 0}
    good = tmp_path / f"good{suffix}"
    good.write_text(json.dumps(doc) if suffix == ".json" else yaml.safe_dump(doc))

    def load(p):
        return lambda: SimConfig.build(load_config_file(p), where=str(p))

    def check(cfg):
        assert isinstance(cfg, SimConfig)

    assert probe("valid", load(good), good.name, check) in ("loaded", "rejected")
    for label, data in corrupt_copies(good.read_bytes(), seed=23, header=6, n_random=10):
        p = tmp_path / f"c-{label}{suffix}"
        p.write_bytes(data)
        probe(label, load(p), [p.name, "data", "train", "seed", "parameter", "field", "'"], check)
    p = tmp_path / f"dir{suffix}"
    p.mkdir()
    probe("a folder", load(p), p.name, expect="rejected")
    probe.done()


# --------------------------------------------------------------------------- through the CLI
def one_line_error(code, out, err, *names):
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("granularity: error:"), err
    assert "Traceback" not in err + out
    assert any(n in lines[0] for n in names), (names, lines[0])


def test_cli_corrupt_inputs(tmp_path, tally, cli):
    c = tally.setdefault("cli", Counter())
    good = write_cifar100(tmp_path / "cifar", n_train=12, n_test=6)
    code, out, err = cli("hierarchy", "export", "cifar100", "--root", good, "--out", tmp_path / "h.json")
    assert code == 0 and err == "", err
    c["tried"] += 1
    c["loaded"] += 1
    k = 0
    for part in ("meta", "train"):
        raw = (good / "cifar-100-python" / part).read_bytes()
        for label, data in corrupt_copies(raw, seed=29, header=4, n_random=2)[::2]:
            k += 1
            root = write_cifar100(tmp_path / f"c{k}", n_train=12, n_test=6)
            (root / "cifar-100-python" / part).write_bytes(data)
            out_file = tmp_path / f"out{k}.json"
            code, out, err = cli("hierarchy", "export", "cifar100", "--root", root, "--out", out_file)
            c["tried"] += 1
            if code == 0:
                c["loaded"] += 1
                check_tree(LabelHierarchy.load(out_file))
            else:
                c["rejected"] += 1
                one_line_error(code, out, err, str(root))
                assert not out_file.exists()
    hj = tmp_path / "h.json"
    raw = hj.read_bytes()
    for label, data in corrupt_copies(raw, seed=31, header=2, n_random=3):
        p = tmp_path / f"h-{label}.json"
        p.write_bytes(data)
        for cmd in ("levels", "show"):
            code, out, err = cli("hierarchy", cmd, "json", "--file", p)
            c["tried"] += 1
            c["loaded" if code == 0 else "rejected"] += 1
            if code:
                one_line_error(code, out, err, p.name)
    inat = write_inat(tmp_path / "inat", per_class=(1, 1))
    for label, data in corrupt_copies((inat / "train.json").read_bytes(), seed=37, header=2, n_random=3):
        p = tmp_path / f"inat-{label}.json"
        p.write_bytes(data)
        code, out, err = cli("hierarchy", "levels", "inat2021", "--file", p)
        c["tried"] += 1
        c["loaded" if code == 0 else "rejected"] += 1
        if code:
            one_line_error(code, out, err, p.name)
    # folders where files are expected
    for args in (["levels", "json", "--file", tmp_path], ["levels", "inat2021", "--file", tmp_path],
                 ["levels", "cifar100", "--root", tmp_path / "h.json"]):
        c["tried"] += 1
        c["rejected"] += 1
        one_line_error(*cli("hierarchy", *args), str(tmp_path))
