"""WebDataset tar shards: written from an image folder / iNat2021, read back by offset.

The shards must give the same rows, labels, pixels and hierarchy as the source's own loader
(so the same training run), be written deterministically, keep their member index in a cache
that is rebuilt when a shard changes, and reject damaged shards with one-line errors.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_writers import write_image_folder, write_inat  # noqa: E402

from granularity.data import load_dataset  # noqa: E402
from granularity.data import shards as sh  # noqa: E402
from granularity.data.image_folder import load_image_folder  # noqa: E402
from granularity.data.shard_writer import write_shards  # noqa: E402
from granularity.data.shards import iter_rank_shards, load_shards  # noqa: E402
from granularity.errors import DataError, GranularityError  # noqa: E402

WORDNET_OK = all(Path("/usr/share/wordnet", f).is_file() for f in ("data.noun", "index.noun"))
CLASSES = ("n01440764", "n01443537", "n02102040")


def noisy_folder(root: Path, classes=("cat", "dog", "eel"), n=(5, 3), size=(12, 9)) -> Path:
    """Images of random pixels (so a wrong row or a resize difference shows), PNG and JPEG."""
    rng = np.random.default_rng(0)
    for part, k in zip(("train", "val"), n):
        for c in classes:
            (root / part / c).mkdir(parents=True)
            for j in range(k):
                img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3)).astype(np.uint8))
                img.save(root / part / c / f"{j}.{'png' if j % 2 else 'jpg'}")
    return root


@pytest.fixture
def folder(tmp_path):
    return noisy_folder(tmp_path / "folder")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- same data as the source
@pytest.mark.parametrize("in_memory", [True, False])
def test_shards_equal_image_folder(folder, tmp_path, in_memory):
    write_shards(folder, tmp_path / "sh", shard_size=4)
    ref = load_image_folder(folder, image_size=8, in_memory=True)
    got = load_dataset("shards", root=tmp_path / "sh", image_size=8, in_memory=in_memory)
    assert got.leaf_names == ref.leaf_names == ["cat", "dog", "eel"]
    for part in ("train", "test"):
        a, b = getattr(ref, part), getattr(got, part)
        assert b.in_memory is in_memory
        assert torch.equal(a.y, b.y)
        x = b.x if in_memory else b.materialize().x
        assert x.dtype == torch.uint8 and torch.equal(a.x, x)
    assert len(got.train) == 15 and len(got.test) == 9
    assert got.hierarchy.level_sizes() == ref.hierarchy.level_sizes()
    assert torch.allclose(got.mean, ref.mean) and torch.allclose(got.std, ref.std)


def test_streamed_take_and_workers(folder, tmp_path):
    write_shards(folder, tmp_path / "sh", shard_size=4)
    ref = load_image_folder(folder, image_size=8, in_memory=True)
    st = load_shards(tmp_path / "sh", image_size=8, in_memory=False)
    idx = [14, 0, 7, 7, 3]  # across shards, repeated, out of order
    part = st.train.take(idx)
    assert torch.equal(part.y, ref.train.y[idx])
    assert torch.equal(part.materialize(num_workers=2, batch_size=2).x, ref.train.x[idx])  # pickled to workers
    sub = st.subset(train=6, seed=3)
    assert torch.equal(sub.train.materialize().x, ref.subset(train=6, seed=3).train.x)


def test_write_is_deterministic_and_manifest_is_right(folder, tmp_path):
    m1 = write_shards(folder, tmp_path / "a", shard_size=4)
    m2 = write_shards(folder, tmp_path / "b", shard_size=4)
    assert m1["splits"] == m2["splits"]  # byte-identical shards (sha256, sizes, counts)
    tr = m1["splits"]["train"]
    assert [e["count"] for e in tr["shards"]] == [4, 4, 4, 3] and tr["count"] == 15
    assert tr["class_counts"] == {"cat": 5, "dog": 5, "eel": 5}
    for e in tr["shards"] + m1["splits"]["test"]["shards"]:
        p = tmp_path / "a" / e["name"]
        assert sha(p) == e["sha256"] and p.stat().st_size == e["bytes"]
    # members: <key>.<ext> with the file's bytes unchanged, then <key>.cls with the class name
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tf:
        names = tf.getnames()
        assert names[:4] == ["000000000.jpg", "000000000.cls", "000000001.png", "000000001.cls"]
        assert tf.extractfile("000000001.png").read() == (folder / "train" / "cat" / "1.png").read_bytes()
        assert tf.extractfile("000000000.cls").read() == b"cat"
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["classes"] == ["cat", "dog", "eel"]
    load_shards(tmp_path / "a", image_size=8, verify=True)  # sha256 check passes


def test_index_cache_is_used_and_rebuilt_when_a_shard_changes(folder, tmp_path, monkeypatch):
    write_shards(folder, tmp_path / "sh", shard_size=100)
    cache = tmp_path / "sh" / "train-000000.tar.index.json"
    written = json.loads(cache.read_text())  # by the writer
    calls = []
    real = sh._scan
    monkeypatch.setattr(sh, "_scan", lambda p: calls.append(p.name) or real(p))
    first = load_shards(tmp_path / "sh", image_size=8, in_memory=True)
    assert calls == []  # the writer's index was used ...
    assert real(tmp_path / "sh" / "train-000000.tar") == written["samples"]  # ... and is what a scan finds
    cache.unlink()
    again = load_shards(tmp_path / "sh", image_size=8, in_memory=True)
    assert calls == ["train-000000.tar"] and json.loads(cache.read_text()) == written
    assert torch.equal(again.train.x, first.train.x)
    load_shards(tmp_path / "sh", image_size=8)
    assert calls == ["train-000000.tar"]
    # the test shard replaced by the train shard's bytes (no manifest: shards found by glob)
    os.remove(tmp_path / "sh" / "manifest.json")
    (tmp_path / "sh" / "test-000000.tar").write_bytes((tmp_path / "sh" / "train-000000.tar").read_bytes())
    swapped = load_shards(tmp_path / "sh", image_size=8, in_memory=True)
    assert calls == ["train-000000.tar", "test-000000.tar"]
    assert torch.equal(swapped.test.x, first.train.x)


def test_read_only_folder_loads_without_cache(folder, tmp_path, monkeypatch):
    write_shards(folder, tmp_path / "sh", shard_size=100)
    for f in (tmp_path / "sh").glob("*.index.json"):
        f.unlink()

    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(sh, "write_json", refuse)
    ds = load_shards(tmp_path / "sh", image_size=8)
    assert len(ds.train) == 15 and not list((tmp_path / "sh").glob("*.index.json"))


def test_inat_layout_keeps_taxonomy(tmp_path):
    root = write_inat(tmp_path / "inat")
    m = write_shards(root, tmp_path / "sh", format="inat", shard_size=2)
    ref = load_dataset("inat2021", root=root, image_size=8, in_memory=True)
    got = load_shards(tmp_path / "sh", image_size=8, in_memory=True)
    assert m["classes"] == got.leaf_names == ref.leaf_names
    assert torch.equal(got.train.x, ref.train.x) and torch.equal(got.test.y, ref.test.y)
    assert got.hierarchy.level_sizes() == ref.hierarchy.level_sizes()
    for level in range(1, ref.hierarchy.depth + 1):
        assert got.hierarchy.ancestor_map(level).tolist() == ref.hierarchy.ancestor_map(level).tolist()


@pytest.mark.slow  # reading WordNet: ~20 s on a loaded machine
@pytest.mark.skipif(not WORDNET_OK, reason="needs the WordNet database")
def test_wnid_classes_get_wordnet_levels(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=CLASSES, per_class=(2, 1))
    write_shards(root, tmp_path / "sh")
    ref, got = load_image_folder(root, image_size=8), load_shards(tmp_path / "sh", image_size=8)
    assert got.hierarchy.level_sizes() == ref.hierarchy.level_sizes() and got.hierarchy.depth > 2


def test_one_folder_split(tmp_path):
    root = tmp_path / "one"
    noisy_folder(root, n=(10, 0))  # only train/, used as one folder of 3 classes x 10
    m = write_shards(root / "train", tmp_path / "sh", test_fraction=0.3, seed=1)
    assert m["splits"]["test"]["class_counts"] == {"cat": 3, "dog": 3, "eel": 3}
    assert m["splits"]["train"]["count"] == 21
    again = write_shards(root / "train", tmp_path / "sh2", test_fraction=0.3, seed=1)
    assert again["splits"] == m["splits"]
    other = write_shards(root / "train", tmp_path / "sh3", test_fraction=0.3, seed=2)
    assert other["splits"]["test"]["shards"][0]["sha256"] != m["splits"]["test"]["shards"][0]["sha256"]
    ds = load_shards(tmp_path / "sh", image_size=8, in_memory=True)
    assert len(ds.train) == 21 and len(ds.test) == 9
    with pytest.raises(GranularityError, match="'test_fraction' parameter .* 30 images"):
        write_shards(root / "train", tmp_path / "sh4", test_fraction=0.01)


def write_foreign(folder: Path, samples, name="train-0.tar") -> Path:
    """A shard written by another tool: ``(key, image bytes or None, {ext: bytes})``."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / name, "w") as tf:
        for key, img, extra in samples:
            for ext, data in ([("png", img)] if img is not None else []) + list(extra.items()):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return folder / name


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_foreign_shards_with_json_and_a_hierarchy_file(tmp_path):
    d = tmp_path / "foreign"
    write_foreign(d, [(f"dir/s{i}", png(10 * i), {"json": json.dumps({"class": c}).encode()})
                      for i, c in enumerate(["Morus alba", "sula_sula", "Morus alba", "sula_sula"])])
    write_foreign(d, [("t0", png(5), {"cls": b"sula_sula\n"})], name="test-0.tar")
    hfile = tmp_path / "tree.csv"
    hfile.write_text("child,parent\nMorus alba,Moraceae\nSula sula,Sulidae\nMoraceae,root\nSulidae,root\n")
    ds = load_dataset("shards", d, image_size=4, hierarchy_file=str(hfile), in_memory=True)
    assert ds.leaf_names == ["Morus alba", "sula_sula"]  # sorted class texts when there is no manifest
    assert ds.train.y.tolist() == [0, 1, 0, 1] and ds.test.y.tolist() == [1]
    assert int(ds.train.x[2].float().mean()) == 20
    assert ds.hierarchy.num_leaves == 2 and ds.hierarchy.depth == 2


def test_iter_rank_shards_covers_every_row_once(folder, tmp_path):
    write_shards(folder, tmp_path / "sh", shard_size=4)
    st = load_shards(tmp_path / "sh", image_size=8, in_memory=False)
    ref = load_image_folder(folder, image_size=8, in_memory=True)
    seen = [list(iter_rank_shards(st.train, r, 3)) for r in range(3)]
    assert [len(s) for s in seen] == [7, 4, 4]  # shards 0+3, 1, 2
    rows = torch.stack([x for s in seen for x, _ in s])
    assert sorted(map(bytes, rows.flatten(1).numpy())) == sorted(map(bytes, ref.train.x.flatten(1).numpy()))
    with pytest.raises(GranularityError, match="'rank' parameter"):
        next(iter_rank_shards(st.train, 3, 3))


# --------------------------------------------------------------------------- one-line errors
def one_line(exc: pytest.ExceptionInfo, *names: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, GranularityError)
    assert all(n in msg for n in names), msg


@pytest.fixture
def shard_dir(folder, tmp_path):
    write_shards(folder, tmp_path / "sh", shard_size=100)
    (tmp_path / "sh" / "manifest.json").unlink()  # no manifest: only the tar itself to check
    return tmp_path / "sh"


def cuts_and_flips(data: bytes, seed: int = 3):
    """Truncations (inside the first header, inside a member, at a later header, mid-file,
    inside the end blocks), single bit flips in the first, a middle and the last member
    header (name / mode / size / checksum fields), and an empty file."""
    out = [(f"cut@{c}", data[:c]) for c in (100, 700, 1024 + 300, len(data) // 2, len(data) - 1024 - 7)]
    rng = np.random.default_rng(seed)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        starts = [m.offset for m in tf.getmembers()]
    for h in [starts[0], starts[len(starts) // 2], starts[-1]]:
        b = bytearray(data)
        pos = h + int(rng.integers(0, 150))
        b[pos] ^= 1 << int(rng.integers(0, 8))
        out.append((f"flip@{pos}", bytes(b)))
    return out + [("empty", b"")]


def test_random_bit_flips_load_consistently_or_fail_in_one_line(shard_dir):
    """Flips anywhere (image bytes included): a one-line error naming the shard, or a load with
    every row (a flip in JPEG data may decode to other pixels; tar cannot tell without sha256)."""
    good = (shard_dir / "train-000000.tar").read_bytes()
    rng = np.random.default_rng(7)
    bad, outcomes = [], []
    for pos in sorted(rng.choice(len(good) - 1024, size=12, replace=False).tolist()):
        b = bytearray(good)
        b[pos] ^= 1 << int(rng.integers(0, 8))
        for f in shard_dir.glob("*.index.json"):
            f.unlink()
        (shard_dir / "train-000000.tar").write_bytes(bytes(b))
        try:
            ds = load_shards(shard_dir, image_size=8, in_memory=True)
            outcomes.append("loaded")
            if not (ds.train.x.shape == (15, 3, 8, 8) and ds.train.y.tolist() == sorted(ds.train.y.tolist())):
                bad.append(f"flip@{pos}: inconsistent load")
        except GranularityError as exc:
            outcomes.append("rejected")
            if "\n" in str(exc) or "train-000000.tar" not in str(exc):
                bad.append(f"flip@{pos}: {exc}")
        except Exception as exc:  # noqa: BLE001 - exactly what this test looks for
            bad.append(f"flip@{pos}: raw {type(exc).__name__}: {exc}")
    assert not bad, "\n".join(bad)
    assert len(outcomes) == 12


def test_damaged_tar_is_one_line_error(shard_dir):
    ref = load_shards(shard_dir, image_size=8, in_memory=True)
    good = (shard_dir / "train-000000.tar").read_bytes()
    bad, rejected = [], 0
    for label, data in cuts_and_flips(good):
        for f in shard_dir.glob("*.index.json"):
            f.unlink()
        (shard_dir / "train-000000.tar").write_bytes(data)
        try:
            ds = load_shards(shard_dir, image_size=8, in_memory=True)
        except GranularityError as exc:
            rejected += 1
            if "\n" in str(exc) or "train-000000.tar" not in str(exc):
                bad.append(f"{label}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - exactly what this test looks for
            bad.append(f"{label}: raw {type(exc).__name__}: {exc}")
            continue
        # loaded (a cut inside the end-of-archive blocks loses nothing): must be all the data
        if not (torch.equal(ds.train.x, ref.train.x) and torch.equal(ds.train.y, ref.train.y)):
            bad.append(f"{label}: loaded different data")
    assert not bad, "\n".join(bad)
    assert rejected >= 8  # all but the cut inside the end blocks


def test_truncated_shard_against_manifest(folder, tmp_path):
    write_shards(folder, tmp_path / "sh", shard_size=100)
    p = tmp_path / "sh" / "train-000000.tar"
    p.write_bytes(p.read_bytes()[:-1024])  # cut at a member boundary: tar alone cannot tell
    with pytest.raises(DataError) as exc:
        load_shards(tmp_path / "sh")
    one_line(exc, "train-000000.tar", "manifest.json")


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("classes"),
    lambda m: m["splits"].pop("test"),
    lambda m: m["splits"]["train"]["shards"].append(3),
    lambda m: m["splits"]["train"]["shards"][0].update(name="train-9.tar"),
    lambda m: m["splits"]["train"]["shards"][0].update(count=99),
    lambda m: m["classes"].remove("dog"),
], ids=["no classes", "no test split", "bad entry", "missing shard", "wrong count", "class not listed"])
def test_bad_manifest_is_one_line_error(folder, tmp_path, edit):
    write_shards(folder, tmp_path / "sh", shard_size=100)
    m = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    edit(m)
    (tmp_path / "sh" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError) as exc:
        load_shards(tmp_path / "sh")
    one_line(exc)
    assert "manifest.json" in str(exc.value) or "'dog'" in str(exc.value)


def test_shard_truncated_after_indexing_fails_on_read(shard_dir):
    ds = load_shards(shard_dir, image_size=8, in_memory=False)
    p = shard_dir / "train-000000.tar"
    p.write_bytes(p.read_bytes()[: int(ds.train.offset[-1]) + 10])
    with pytest.raises(DataError) as exc:
        ds.train.dataset[len(ds.train) - 1]
    one_line(exc, "train-000000.tar", "truncated")


def test_undecodable_image_names_its_member(tmp_path):
    d = tmp_path / "f"
    write_foreign(d, [("a", b"not a png", {"cls": b"x"}), ("b", png(3), {"cls": b"x"})])
    write_foreign(d, [("c", png(3), {"cls": b"x"})], name="test-0.tar")
    with pytest.raises(DataError) as exc:
        load_shards(d, image_size=4, in_memory=True)
    one_line(exc, "train-0.tar:a.png")


@pytest.mark.parametrize("case, samples, names", [
    ("no class member", [("a", png(1), {}), ("b", png(1), {"cls": b"x"})], ["'a'", ".cls or a.json"]),
    ("json without class", [("a", png(1), {"json": b'{"id": 3}'})], ["a.json", "'class'"]),
    ("bad json", [("a", png(1), {"json": b"{"})], ["a.json", "not valid JSON"]),
    ("empty class", [("a", png(1), {"cls": b"  "})], ["'a'", "empty class"]),
    ("no image", [("a", None, {"cls": b"x"})], ["'a'", "no image"]),
    ("no extension", [("a", png(1), {"": b"x"})], ["'a.'", "extension"]),
])
def test_bad_samples_are_one_line_errors(tmp_path, case, samples, names):
    d = tmp_path / "f"
    write_foreign(d, samples)
    write_foreign(d, [("c", png(3), {"cls": b"x"})], name="test-0.tar")
    with pytest.raises(DataError) as exc:
        load_shards(d, image_size=4)
    one_line(exc, "train-0.tar", *names)


def test_unknown_test_class_is_one_line_error(tmp_path):
    d = tmp_path / "f"
    write_foreign(d, [("a", png(1), {"cls": b"cat"})])
    write_foreign(d, [("t", png(1), {"cls": b"dgo"})], name="test-0.tar")
    with pytest.raises(DataError) as exc:  # a class only in the test shards: the 'unseen' policy
        load_dataset("shards", d, image_size=4)
    one_line(exc, "Class 'dgo' of", "1 row(s) in the test split", "unseen=score")
    (d / "manifest.json").write_text(json.dumps({"classes": ["cat"], "splits": {
        s: {"shards": [{"name": f"{s}-0.tar", "count": 1, "bytes": (d / f"{s}-0.tar").stat().st_size}]} for s in ("train", "test")}}))
    with pytest.raises(DataError) as exc:  # a manifest lists the classes: one outside it is an error
        load_shards(d, image_size=4, cache_index=False)
    one_line(exc, "test-0.tar:t.png", "'dgo'", "1 classes listed in manifest.json")


def test_folder_and_option_errors(folder, tmp_path):
    with pytest.raises(DataError) as exc:
        load_shards(tmp_path / "nowhere")
    one_line(exc, "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        load_shards(tmp_path / "empty")
    one_line(exc, "train-*.tar")
    gz = tmp_path / "gz"
    gz.mkdir()
    with tarfile.open(gz / "train-0.tar", "w:gz") as tf:
        tf.add(folder / "train" / "cat" / "0.jpg", "a.jpg")
    with pytest.raises(DataError) as exc:
        load_shards(gz)
    one_line(exc, "train-0.tar", "uncompressed tar")
    with pytest.raises(GranularityError, match="'hierarchy_file' parameter"):
        load_dataset("shards", gz, hierarchy_file=str(tmp_path / "missing.csv"))
    with pytest.raises(GranularityError, match="'shard_size' parameter"):
        write_shards(folder, tmp_path / "x", shard_size=0)
    with pytest.raises(GranularityError, match="'format' parameter"):
        write_shards(folder, tmp_path / "y", format="coco")
    write_shards(folder, tmp_path / "z")
    with pytest.raises(DataError) as exc:
        write_shards(folder, tmp_path / "z")
    one_line(exc, "not empty")
    with pytest.raises(GranularityError, match="Unknown option 'shard_size' for data set 'shards'"):
        load_dataset("shards", root=tmp_path / "z", shard_size=3)


# --------------------------------------------------------------------------- the same training run
@pytest.mark.slow  # two tiny runs: ~10-25 s on the shared machine
def test_transfer_on_shards_equals_image_folder(folder, tmp_path):
    """Streamed image folder vs streamed shards of the same images: identical result.json
    metrics and training losses (same rows, labels, pixels, permutation and augmentation)."""
    from granularity.engine import run_transfer
    from granularity.utils.io import read_json, read_jsonl

    write_shards(folder, tmp_path / "sh", shard_size=4)
    cfg = {"dataset": "tiny", "train_size": None, "test_size": None, "target": 1, "source": "leaf",
           "model": {"name": "cnn", "options": {"width": 4}}, "device": "cpu", "eval_batch_size": 5,
           "pretrain": {"epochs": 2, "batch_size": 4, "lr": 0.05}, "transfer": {"epochs": 1, "batch_size": 4, "lr": 0.02}}
    parents = {"cat": "pets", "dog": "pets", "eel": "fish", "pets": "root", "fish": "root"}
    runs = {}
    for name, ds in (("folder", load_image_folder(folder, image_size=8, hierarchy=parents, in_memory=False)),
                     ("shards", load_shards(tmp_path / "sh", image_size=8, hierarchy=parents, in_memory=False))):
        assert not ds.train.in_memory
        run_transfer(cfg, tmp_path / name, dataset=ds)
        runs[name] = (read_json(tmp_path / name / "result.json"), read_jsonl(tmp_path / name / "metrics.jsonl"))
    (a, ma), (b, mb) = runs["folder"], runs["shards"]
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    assert set(differ) <= {"dataset", "data", "seconds", "train_seconds"}, differ
    # the data fingerprints differ only where they name the source (name, version, file stamps)
    same = ("labels_sha256", "leaf_names_sha256", "hierarchy_hash", "n_train", "n_test", "input_shape")
    assert {k: a["data"][k] for k in same} == {k: b["data"][k] for k in same}
    da, db = a["dataset"], b["dataset"]
    assert sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k)) == ["name", "version"], (da, db)
    for k in ("target_acc", "levels", "pretrain_levels"):
        assert k in a and a[k] == b[k]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s" and "time" not in k and "second" not in k} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb) and len(ma) == 3


DRIVER = """
import json, sys
from granularity.data.image_folder import load_image_folder
from granularity.data.shards import load_shards
from granularity.engine import run_transfer
cfg, kind, root, out, parents = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
load = load_shards if kind == "shards" else load_image_folder
run_transfer(cfg, out, dataset=load(root, image_size=8, hierarchy=parents, in_memory=False))
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_ranks_on_shards_match_two_ranks_on_the_folder(folder, tmp_path):
    """2 gloo ranks, each reading only its rows of every global batch from the shards (rows
    of one batch sit in several shards): the same losses as the same 2-rank run on the folder."""
    from ddp_helpers import torchrun

    from granularity.utils.io import read_json, read_jsonl

    write_shards(folder, tmp_path / "sh", shard_size=4)
    cfg = {"dataset": "tiny", "train_size": None, "test_size": None, "target": 1, "source": "leaf",
           "model": {"name": "cnn", "options": {"width": 4}}, "device": "cpu", "eval_batch_size": 5,
           "pretrain": {"epochs": 2, "batch_size": 6, "lr": 0.05}, "transfer": {"epochs": 1, "batch_size": 6, "lr": 0.02}}
    parents = {"cat": "pets", "dog": "pets", "eel": "fish", "pets": "root", "fish": "root"}
    (tmp_path / "drive.py").write_text(DRIVER)
    out = {}
    for kind, root in (("shards", tmp_path / "sh"), ("folder", folder)):
        proc = torchrun([str(tmp_path / "drive.py"), json.dumps(cfg), kind, str(root), str(tmp_path / kind),
                         json.dumps(parents)], tmp_path, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[kind] = (read_json(tmp_path / kind / "result.json"), [m["train_loss"] for m in read_jsonl(tmp_path / kind / "metrics.jsonl")])
    (a, la), (b, lb) = out["folder"], out["shards"]
    assert a["world_size"] == b["world_size"] == 2
    assert la == lb and a["target_acc"] == b["target_acc"] and a["levels"] == b["levels"]
