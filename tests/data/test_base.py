"""RealDataset API: registry, stratified subsets, rare classes, devices and statistics."""

from __future__ import annotations

import pytest
import torch

from granularity.data import DATASETS, RealDataset, Split, load_dataset, make_rare, stratified_indices
from granularity.data.base import channel_stats
from granularity.errors import GranularityError


def tiny(n_per_class=(10, 10, 4), shape=(1, 3, 3)) -> RealDataset:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    x = (y.view(-1, 1, 1, 1) * 50 + torch.arange(len(y)).view(-1, 1, 1, 1) % 3).expand(-1, *shape)
    return RealDataset("tiny", "t-1", Split(x.to(torch.uint8).contiguous(), y), Split(x[:6].to(torch.uint8).contiguous(), y[:6]),
                       leaf_names=["a", "b", "c"][: len(n_per_class)])


def test_registry_names_and_suggestions():
    assert set(DATASETS) == {"fashion-mnist", "cifar100", "image-folder", "inat2021", "table", "npz", "shards",
                             "wordnet-glosses"}
    for spec in DATASETS.values():
        assert callable(spec.load_function()) and spec.description
    with pytest.raises(GranularityError, match="did you mean 'fashion-mnist'") as exc:
        load_dataset("fashion_mnist")
    assert "\n" not in str(exc.value) and "cifar100" in str(exc.value)
    with pytest.raises(GranularityError, match="Unknown option 'image_sise'.*did you mean 'image_size'"):
        load_dataset("image-folder", root=".", image_sise=3)


def test_stratified_indices_exact_and_proportional():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(y, 10, seed=0)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    assert y[idx].bincount().tolist() == [5, 3, 2]
    assert torch.equal(idx, stratified_indices(y, 10, seed=0))
    assert not torch.equal(idx, stratified_indices(y, 10, seed=1))
    assert y[stratified_indices(y, 7, seed=3)].bincount().sum() == 7
    for bad in (-1, 101, 2.5, True):
        with pytest.raises(GranularityError, match="'subset'"):
            stratified_indices(y, bad, seed=0)


def test_subset_keeps_leaves_and_recomputes_stats():
    ds = tiny()
    sub = ds.subset(train=12, test=3, seed=0)
    assert len(sub.train) == 12 and len(sub.test) == 3 and sub.leaf_names == ds.leaf_names
    assert sub.train.y.bincount().tolist() == [5, 5, 2] and sub.num_leaves == 3
    assert sub.name == ds.name and sub.info["subset"] == {"train": 12, "test": 3, "seed": 0}
    x = ds.train.x.float() / 255
    torch.testing.assert_close(ds.mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(ds.std, x.std(dim=(0, 2, 3), unbiased=False))


def test_channel_stats_features_and_chunks():
    x = torch.randn(103, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 5
    m, s = channel_stats(x, chunk=10)
    torch.testing.assert_close(m, x.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, x.std(0, unbiased=False), atol=1e-5, rtol=1e-5)


def test_make_rare():
    ds = tiny()
    idx = make_rare(ds, [0, "b"], keep_fraction=0.2, seed=0)
    counts = ds.train.y[idx].bincount().tolist()
    assert counts == [2, 2, 4] and idx.dtype == torch.int64 and torch.all(idx[1:] > idx[:-1])
    assert torch.equal(idx, make_rare(ds.train, [0, 1], 0.2, seed=0))
    assert not torch.equal(idx, make_rare(ds, [0, 1], 0.2, seed=5))
    assert make_rare(ds.train.y, [2], 0.01, seed=0).shape[0] == 21  # at least one sample kept
    assert make_rare(ds, [2], 0.0, seed=0).shape[0] == 20
    rare = ds.select(train=idx, rare="a,b")
    assert rare.train.y.bincount().tolist() == [2, 2, 4] and len(rare.test) == 6 and rare.info["rare"] == "a,b"
    with pytest.raises(GranularityError, match="'keep_fraction'"):
        make_rare(ds, [0], 1.5, seed=0)
    with pytest.raises(GranularityError, match="'fine_classes'"):
        make_rare(ds, [7], 0.5, seed=0)
    with pytest.raises(GranularityError, match="did you mean 'a'"):
        make_rare(ds, ["aa"], 0.5, seed=0)


def test_to_device_and_dataset():
    ds = tiny()
    moved = ds.to("cpu")  # the tests run on CPU; same code path as cuda
    assert moved.train.x.device.type == "cpu" and moved.train.device.type == "cpu"
    xb, yb = next(iter(torch.utils.data.DataLoader(ds.train.dataset, batch_size=4)))
    assert xb.shape == (4, 1, 3, 3) and yb.dtype == torch.int64
    assert ds.input_shape == (1, 3, 3) and ds.is_image
    with pytest.raises(GranularityError, match="differ in length"):
        Split(torch.zeros(3, 2), torch.zeros(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_to_cuda():
    ds = tiny().to("cuda")
    assert ds.train.x.is_cuda and ds.train.y.is_cuda and ds.mean.is_cuda


@pytest.mark.parametrize("fmt", ["fashion-mnist", "cifar100", "image-folder", "image-folder-streamed", "inat2021", "table", "npz"])
def test_statistics_of_every_format_ignore_row_order(tmp_path, fmt, cifar_root, folder_root, inat_root):
    """Issue 17: the same rows in another order normalise identically (to 1e-6, float64 sums in
    another order rounded to float32), in every registered format, streamed or not."""
    import numpy as np
    import pandas as pd
    from fakes import write_fake_fmnist

    rng = np.random.default_rng(0)
    x, y = rng.normal(3.0, 2.0, size=(60, 3)), np.arange(60) % 3
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}).to_csv(tmp_path / "t.csv", index=False)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = {
        "fashion-mnist": lambda: load_dataset("fashion-mnist", root=write_fake_fmnist(tmp_path / "fm")),
        "cifar100": lambda: load_dataset("cifar100", root=cifar_root),
        "image-folder": lambda: load_dataset("image-folder", root=folder_root, image_size=8, hierarchy="flat", in_memory=True),
        "image-folder-streamed": lambda: load_dataset("image-folder", root=folder_root, image_size=8, hierarchy="flat", in_memory=False),
        "inat2021": lambda: load_dataset("inat2021", root=inat_root, image_size=8),
        "table": lambda: load_dataset("table", root=tmp_path / "t.csv", label_columns=["y"]),
        "npz": lambda: load_dataset("npz", root=tmp_path / "d.npz"),
    }[fmt]()
    perm = torch.as_tensor(np.random.default_rng(1).permutation(len(ds.train)))
    other = ds.select(train=perm)
    torch.testing.assert_close(other.mean, ds.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(other.std, ds.std, rtol=0, atol=1e-6)
    assert torch.equal(other.train.y.sort().values, ds.train.y.sort().values)
