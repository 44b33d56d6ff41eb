"""A tiny image data set (4 leaves in 2 groups, 8x8 greyscale) for fast engine tests."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
