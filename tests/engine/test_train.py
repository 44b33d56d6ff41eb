"""Training-loop pieces: coarse logits by logsumexp, augmentation, schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from granularity.engine.augment import random_crop_flip
from granularity.engine.config import StageConfig
from granularity.engine.labels import group_map
from granularity.engine.train import group_logits, make_optimizer, make_scheduler


def test_group_logits_is_logsumexp_over_groups():
    logits = torch.randn(5, 4)
    out = group_logits(logits, np.array([0, 0, 1, -1]), 3)
    torch.testing.assert_close(out[:, 0], torch.logsumexp(logits[:, :2], 1))
    torch.testing.assert_close(out[:, 1], logits[:, 2])
    assert torch.isinf(out[:, 2]).all()  # an empty group never wins


def test_group_map_detects_nesting():
    assert group_map(np.array([0, 1, 2, 2]), np.array([0, 0, 1, 1]), 4).tolist() == [0, 0, 1, -1]
    assert group_map(np.array([0, 0, 1]), np.array([0, 1, 1]), 2) is None


def test_augment_shapes_and_reproducible():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    a = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(random_crop_flip(x, 0, torch.Generator(), flip=False), x)


@pytest.mark.parametrize("schedule,last", [("cosine", 0.0), ("step", 0.01), ("constant", 1.0)])
def test_schedules(schedule, last):
    p = torch.nn.Parameter(torch.zeros(1))
    stage = StageConfig(epochs=2, lr=1.0, schedule=schedule, warmup_epochs=0.5)
    opt = make_optimizer([p], stage)
    sched = make_scheduler(opt, stage, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)  # warm-up over 5 steps
    assert opt.param_groups[0]["lr"] == pytest.approx(last, abs=1e-9)


def test_embeddings(tmp_path):
    from granularity.engine.embeddings import compute_embeddings
    from granularity.errors import GranularityError

    x = torch.randint(0, 255, (40, 1, 8, 8), dtype=torch.uint8)
    y = np.arange(40) % 2
    assert compute_embeddings("pca", x, y, 2, seed=0).shape == (40, 32)
    assert compute_embeddings("cnn", x, y, 2, seed=0).shape == (40, 128)
    np.save(tmp_path / "e.npy", np.ones((39, 3)))
    with pytest.raises(GranularityError, match="must have shape \\(n_train=40, d\\)"):
        compute_embeddings(str(tmp_path / "e.npy"), x, y, 2, seed=0)
    with pytest.raises(GranularityError, match="'embedding' parameter must be 'pca', 'cnn' or a path"):
        compute_embeddings("clip", x, y, 2, seed=0)
