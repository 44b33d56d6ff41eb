"""CIFAR-100, image folders, iNat2021, tables and npz, each on tiny files in the real format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from granularity.data import StreamSplit, load_dataset
from granularity.errors import DataError, GranularityError, HierarchyError
from granularity.hierarchy.wordnet_db import wordnet_missing_reason

from data_writers import CIFAR_COARSE, CIFAR_FINE, CIFAR_PARENT, write_cifar100, write_image_folder


# -- CIFAR-100 --------------------------------------------------------------------------------
@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar100_pickles(tmp_path, bytes_keys):
    root = write_cifar100(tmp_path / "c", bytes_keys=bytes_keys)
    ds = load_dataset("cifar100", root=root)
    assert ds.train.x.shape == (24, 3, 32, 32) and ds.train.x.dtype == torch.uint8
    assert len(ds.test) == 12 and ds.leaf_names == CIFAR_FINE and ds.input_shape == (3, 32, 32)
    # rows reshape to (C, H, W): the red plane carries the class
    assert torch.equal(ds.train.x[:, 0, 5, 7].long(), ds.train.y * 10)
    h = ds.hierarchy
    assert h.num_classes(1) == 3 and h.num_classes(2) == 6 and list(h.leaves) == ds.leaf_names
    np.testing.assert_array_equal(h.relabel(ds.train.y.numpy(), 1), [CIFAR_PARENT[f] for f in ds.train.y])
    assert h.level_nodes(1) == CIFAR_COARSE
    # the root may also be the cifar-100-python folder itself
    assert len(load_dataset("cifar100", root=root / "cifar-100-python").train) == 24


def test_cifar100_errors(tmp_path, cifar_root):
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar100", root=tmp_path / "nothing")
    (cifar_root / "cifar-100-python" / "train").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(DataError, match="train is truncated") as exc:
        load_dataset("cifar100", root=cifar_root)
    assert "\n" not in str(exc.value)


def test_cifar100_inconsistent_superclass(tmp_path):
    root = write_cifar100(tmp_path / "c")
    p = root / "cifar-100-python" / "test"
    rec = pickle.loads(p.read_bytes())
    rec[b"coarse_labels"][0] = 2  # beaver under vehicles_1 in one record
    p.write_bytes(pickle.dumps(rec, protocol=2))
    with pytest.raises(DataError, match="'beaver' appears under several coarse classes"):
        load_dataset("cifar100", root=root)


# -- image folders ----------------------------------------------------------------------------
def test_image_folder_in_memory(folder_root):
    ds = load_dataset("image-folder", root=folder_root, image_size=8, hierarchy="flat")
    assert ds.train.in_memory and ds.train.x.shape == (12, 3, 8, 8) and ds.test.x.shape == (6, 3, 8, 8)
    assert ds.leaf_names == ["n01440764", "n01443537", "n02102040"]
    # class c is grey 60c+20 (JPEG: approximately)
    got = ds.train.x.float().mean(dim=(1, 2, 3))
    assert torch.allclose(got, (60 * ds.train.y + 20).float(), atol=3)
    assert ds.hierarchy.num_classes(1) == 3 and ds.hierarchy.depth == 1


def test_image_folder_streams_with_workers(folder_root):
    ds = load_dataset("image-folder", root=folder_root, image_size=6, channels=1, in_memory=False,
                      hierarchy="flat")
    assert isinstance(ds.train, StreamSplit) and ds.input_shape == (1, 6, 6)
    with pytest.raises(DataError, match="streams 12 images"):
        ds.train.x
    loader = torch.utils.data.DataLoader(ds.train.dataset, batch_size=5, num_workers=2)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (12, 1, 6, 6) and x.dtype == torch.uint8 and torch.equal(y, ds.train.y)
    assert torch.equal(ds.train.materialize().x, x)
    assert ds.mean.shape == (1,) and 0 < float(ds.mean) < 1
    sub = ds.subset(train=6, seed=0)
    assert isinstance(sub.train, StreamSplit) and torch.equal(sub.train.y.bincount(), torch.tensor([2, 2, 2]))


def test_image_folder_auto_memory_limit(folder_root):
    ds = load_dataset("image-folder", root=folder_root, image_size=8, max_memory_mb=0.001, hierarchy="flat")
    assert not ds.train.in_memory


def test_image_folder_parent_map_and_errors(tmp_path, folder_root):
    pmap = {"n01440764": "fish", "n01443537": "fish", "n02102040": "dog", "fish": "animal", "dog": "animal"}
    (tmp_path / "p.json").write_text(json.dumps(pmap))
    ds = load_dataset("image-folder", root=folder_root, image_size=4, hierarchy=str(tmp_path / "p.json"))
    assert ds.hierarchy.num_classes(1) == 2 and ds.hierarchy.relabel([0, 1, 2], 1).tolist() == [0, 0, 1]
    with pytest.raises(HierarchyError, match="no parent for 1 class"):
        load_dataset("image-folder", root=folder_root, image_size=4, hierarchy={"n01440764": "a", "n01443537": "a"})
    with pytest.raises(DataError, match="val2 not found"):
        load_dataset("image-folder", root=folder_root, test_dir="val2")
    bad = folder_root / "train" / "n01440764" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.JPEG") as exc:
        load_dataset("image-folder", root=folder_root, image_size=4, hierarchy="flat")
    assert "\n" not in str(exc.value)
    with pytest.raises(GranularityError, match="'image_size'"):
        load_dataset("image-folder", root=folder_root, image_size=0)


def test_image_folder_hierarchy_choice(tmp_path):
    root = write_image_folder(tmp_path / "named", classes=("cat", "dog"), per_class=(1, 1))
    ds = load_dataset("image-folder", root=root, image_size=4)  # auto: not wnids -> flat
    assert ds.hierarchy.depth == 1 and list(ds.hierarchy.leaves) == ["cat", "dog"]
    with pytest.raises(GranularityError, match="'hierarchy'"):
        load_dataset("image-folder", root=root, image_size=4, hierarchy="wordnet")


@pytest.mark.slow
@pytest.mark.skipif(wordnet_missing_reason() is not None, reason=str(wordnet_missing_reason()))
def test_image_folder_wordnet_hierarchy(folder_root):
    ds = load_dataset("image-folder", root=folder_root, image_size=4)  # auto: wnids -> WordNet
    h = ds.hierarchy
    assert list(h.leaves) == ds.leaf_names and h.depth > 3
    # the two fish (tench, goldfish) meet below the dog's branch
    assert h.lca("n01440764", "n01443537") != h.lca("n01440764", "n02102040")


# -- iNat2021 ---------------------------------------------------------------------------------
def test_inat2021(inat_root):
    ds = load_dataset("inat2021", root=inat_root, image_size=8)
    assert ds.train.x.shape == (9, 3, 8, 8) and ds.test.x.shape == (3, 3, 8, 8)
    assert ds.leaf_names == ["Morus bassanus", "Sula sula", "Morus alba"]
    assert torch.equal(ds.train.y, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    assert torch.allclose(ds.train.x.float().mean(dim=(1, 2, 3)), (70 * ds.train.y + 30).float(), atol=3)
    h = ds.hierarchy
    assert h.depth == 7 and h.num_classes(1) == 2 and list(h.leaves) == ds.leaf_names  # kingdoms
    assert h.num_classes(6) == 3  # genus Morus occurs in two kingdoms: two nodes
    assert h.relabel([0, 1, 2], 1).tolist() == [0, 0, 1]


def test_inat2021_errors(inat_root):
    data = json.loads((inat_root / "val.json").read_text())
    data["annotations"][0]["category_id"] = 99
    (inat_root / "val.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="val.json: annotation of image .* unknown category_id 99"):
        load_dataset("inat2021", root=inat_root)
    (inat_root / "val.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset("inat2021", root=inat_root)
    with pytest.raises(DataError, match="nope.json not found"):
        load_dataset("inat2021", root=inat_root, test_json="nope.json")


# -- tables -----------------------------------------------------------------------------------
def _frame(n=40, seed=0):
    rng = np.random.default_rng(seed)
    fine = np.array(["cat", "dog", "car", "bus"])[np.arange(n) % 4]
    coarse = np.where(np.isin(fine, ["cat", "dog"]), "animal", "vehicle")
    return pd.DataFrame({"f0": rng.normal(size=n), "f1": np.arange(n, dtype=float), "coarse": coarse, "fine": fine})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_two_files(tmp_path, fmt):
    d = tmp_path / "t"
    d.mkdir()
    for part, df in (("train", _frame(40)), ("test", _frame(12, 1))):
        getattr(df, f"to_{fmt}")(d / f"train.{fmt}" if part == "train" else d / f"test.{fmt}", index=False)
    ds = load_dataset("table", root=d, label_columns=["coarse", "fine"])
    assert ds.train.x.dtype == torch.float32 and ds.train.x.shape == (40, 2) and len(ds.test) == 12
    assert ds.leaf_names == ["bus", "car", "cat", "dog"] and ds.input_shape == (2,)
    df = _frame(40)
    assert [ds.leaf_names[i] for i in ds.train.y] == list(df["fine"])
    torch.testing.assert_close(ds.train.x[:, 1], torch.arange(40, dtype=torch.float32))
    h = ds.hierarchy
    assert h.num_classes(1) == 2 and h.depth == 2
    coarse_of = h.relabel(ds.train.y.numpy(), 1)
    names = [h.level_nodes(1)[c] for c in coarse_of]
    assert [n.split(":")[-1] for n in names] == list(df["coarse"])
    assert ds.mean.shape == (2,)


def test_table_split_column_and_random_split(tmp_path):
    df = _frame(40)
    df["split"] = np.where(np.arange(40) < 30, "train", "test")
    df.to_csv(tmp_path / "a.csv", index=False)
    ds = load_dataset("table", root=tmp_path / "a.csv", label_columns=["coarse", "fine"])
    assert len(ds.train) == 30 and len(ds.test) == 10 and ds.train.x.shape[1] == 2
    df.drop(columns=["split", "coarse"]).to_parquet(tmp_path / "b.parquet")
    a = load_dataset("table", root=tmp_path / "b.parquet", label_columns="fine", test_fraction=0.2, seed=1)
    b = load_dataset("table", root=tmp_path / "b.parquet", label_columns="fine", test_fraction=0.2, seed=1)
    c = load_dataset("table", root=tmp_path / "b.parquet", label_columns="fine", test_fraction=0.2, seed=2)
    assert len(a.test) == 8 and torch.equal(a.test.y.bincount(), torch.full((4,), 2))
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)
    assert a.hierarchy.depth == 1 and a.hierarchy.num_classes(1) == 4


def test_table_errors(tmp_path):
    df = _frame(20)
    df.loc[1, "coarse"] = "vehicle"  # 'dog' now has two parents
    df.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(HierarchyError, match="'dog' has two parents in 'coarse'"):
        load_dataset("table", root=tmp_path / "a.csv", label_columns=["coarse", "fine"]).hierarchy
    with pytest.raises(DataError, match="no column 'fin' \\(did you mean 'fine'\\?\\)"):
        load_dataset("table", root=tmp_path / "a.csv", label_columns=["fin"])
    with pytest.raises(DataError, match="feature column 'coarse' is not numeric"):
        load_dataset("table", root=tmp_path / "a.csv", label_columns=["fine"])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="bad.parquet") as exc:
        load_dataset("table", root=tmp_path / "bad.parquet")
    assert "\n" not in str(exc.value)


# -- npz --------------------------------------------------------------------------------------
def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    fine = np.arange(30) % 6
    coarse = fine // 2
    np.savez(tmp_path / "a.npz", x_train=rng.normal(size=(30, 2, 3)), x_test=rng.normal(size=(6, 2, 3)),
             coarse_train=coarse, fine_train=fine, coarse_test=np.arange(6) // 2, fine_test=np.arange(6))
    ds = load_dataset("npz", root=tmp_path / "a.npz", label_keys=["coarse", "fine"])
    assert ds.train.x.shape == (30, 6) and ds.train.x.dtype == torch.float32 and len(ds.test) == 6
    assert ds.hierarchy.num_classes(1) == 3 and ds.hierarchy.relabel(ds.train.y.numpy(), 1).tolist() == coarse.tolist()
    # one array per quantity plus a split array; uint8 images stay images
    imgs = rng.integers(0, 255, (30, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "b.npz", x=imgs, y=fine, split=(np.arange(30) >= 24).astype(int))
    ds = load_dataset("npz", root=tmp_path / "b.npz")
    assert ds.train.x.shape == (24, 1, 5, 5) and ds.train.x.dtype == torch.uint8 and len(ds.test) == 6
    # no split: stratified random split
    np.savez(tmp_path / "c.npz", x=rng.normal(size=(30, 4)), y=fine)
    ds = load_dataset("npz", root=tmp_path / "c.npz", test_fraction=0.2, seed=0)
    assert len(ds.test) == 6 and torch.equal(ds.test.y.bincount(), torch.ones(6, dtype=torch.long))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), label=np.zeros(4))
    with pytest.raises(DataError, match="no array 'y'"):
        load_dataset("npz", root=tmp_path / "a.npz")
    np.savez(tmp_path / "o.npz", x=np.array([object(), 1], dtype=object), y=np.zeros(2))
    with pytest.raises(DataError, match="object arrays"):
        load_dataset("npz", root=tmp_path / "o.npz")
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04trunc")
    with pytest.raises(DataError, match="t.npz"):
        load_dataset("npz", root=tmp_path / "t.npz")
    np.savez(tmp_path / "n.npz", x=np.array([[1.0], [np.nan]]), y=np.array([0, 1]), split=np.array([0, 0]))
    with pytest.raises(DataError, match="NaN"):
        load_dataset("npz", root=tmp_path / "n.npz")


@pytest.mark.parametrize("split,match", [
    (np.array([0.0, 1.0] * 10), "'split' has dtype float64"),  # issue 17: floats put every row in train
    (np.array(["train", "tst"] * 10), "'split' has value 'tst'"),
    (np.array([0, 2] * 10), "'split' has value '2'"),
    (np.zeros(20, dtype=int), "test split is empty"),
    (np.array(["test"] * 20), "training split is empty"),
])
def test_npz_split_array_is_validated_in_one_line(tmp_path, split, match):
    np.savez(tmp_path / "s.npz", x=np.zeros((20, 2)), y=np.arange(20) % 2, split=split)
    with pytest.raises(DataError, match=match) as exc:
        load_dataset("npz", root=tmp_path / "s.npz")
    assert "\n" not in str(exc.value) and "s.npz" in str(exc.value)


def test_table_and_npz_accept_the_same_split_values(tmp_path):
    values = np.array(["Train", "test ", "VAL", "validation"] * 5)
    np.savez(tmp_path / "s.npz", x=np.zeros((20, 2)), y=(np.arange(20) // 4) % 2, split=values)  # both classes in training
    df = _frame(20)
    df["split"] = values
    df.to_csv(tmp_path / "t.csv", index=False)
    a = load_dataset("npz", root=tmp_path / "s.npz")
    # the split values repeat with the fine labels' period: some classes are test-only
    b = load_dataset("table", root=tmp_path / "t.csv", label_columns=["coarse", "fine"], unseen="score")
    assert b.info["unseen_classes"] == ["bus", "car", "dog"]
    assert len(a.train) == len(b.train) == 5 and len(a.test) == len(b.test) == 15
    df["split"] = np.array([0, 1] * 10)  # integers: 1 = test, as in npz
    df.to_csv(tmp_path / "u.csv", index=False)
    assert len(load_dataset("table", root=tmp_path / "u.csv", label_columns=["coarse", "fine"], unseen="score").test) == 10
    df["split"] = np.array([0.0, 1.0] * 10)
    df.to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(DataError, match="'split' has dtype float64"):
        load_dataset("table", root=tmp_path / "f.csv", label_columns=["coarse", "fine"])
