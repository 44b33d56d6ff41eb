"""A tiny image data set (4 leaves in 2 groups, 8x8 greyscale) for fast engine tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from granularity.data import RealDataset, Split
from granularity.hierarchy import LabelHierarchy


def tiny_dataset(n_train: int = 96, n_test: int = 48, seed: int = 0) -> RealDataset:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        y = np.arange(n) % 4
        x = rng.integers(0, 60, size=(n, 1, 8, 8))
        for c in range(4):  # leaf c lights up quadrant c, so the task is learnable
            r, q = divmod(c, 2)
            x[y == c, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 150
        return Split(torch.as_tensor(x.astype(np.uint8)), torch.as_tensor(y))

    paths = [["g0", "a"], ["g0", "b"], ["g1", "c"], ["g1", "d"]]
    return RealDataset(
        name="tiny", version="test", train=split(n_train), test=split(n_test), leaf_names=["a", "b", "c", "d"],
        _hierarchy=LabelHierarchy.from_paths(paths, name="tiny"),
    )


@pytest.fixture
def tiny() -> RealDataset:
    return tiny_dataset()


def tiny_config(**kw) -> dict:
    base = {
        "dataset": "tiny", "train_size": None, "test_size": None, "target": 1, "source": "leaf",
        "model": {"name": "cnn", "options": {"width": 4}},
        "pretrain": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "transfer": {"epochs": 1, "batch_size": 16, "lr": 0.02},
        "device": "cpu", "eval_batch_size": 64,
    }
    base.update(kw)
    return base


def run_files(folder):
    """What a run folder holds that must not depend on timing: ``result.json`` and the
    ``metrics.jsonl`` records without their clock fields, and the predictions as lists (so
    two runs compare with ``==``, bit for bit)."""
    res = json.loads((folder / "result.json").read_text())
    for k in ("seconds", "train_seconds"):
        res.pop(k)
    metrics = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
               for line in (folder / "metrics.jsonl").read_text().splitlines()]
    preds = {k: v.tolist() for k, v in np.load(folder / "predictions.npz").items()}
    return res, metrics, preds


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def table_dataset(n: int = 20000, order: str = "shuffled", seed: int = 0) -> RealDataset:
    """A float table: 10 leaves in 5 groups (target level 1), 8 features. Feature 0 is 0 for
    leaves 0..5 and noisy for the others, so a label-sorted table starts with > 10,000 rows in
    which it is constant (the issue-17 reproduction). ``order``: "shuffled" or "sorted"."""
    rng = np.random.default_rng(seed)

    def split(m: int, sort: bool) -> Split:
        y = rng.integers(0, 10, size=m)
        centres = np.random.default_rng(99).normal(0, 1, size=(10, 8))
        x = centres[y] + rng.normal(0, 1.0, size=(m, 8))
        x[:, 0] = np.where(y < 6, 0.0, rng.normal(3.0, 1.0, size=m))
        if sort:
            o = np.argsort(y, kind="stable")
            x, y = x[o], y[o]
        return Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))

    leaves = [f"l{i}" for i in range(10)]
    paths = [[f"g{i // 2}", leaf] for i, leaf in enumerate(leaves)]
    return RealDataset(
        name="table-test", version="test", train=split(n, order == "sorted"), test=split(2000, False),
        leaf_names=leaves, _hierarchy=LabelHierarchy.from_paths(paths, name="table-test"),
    )
