"""The held-out validation split (``val_size``): disjoint from training, its figures recomputed
independently from the final weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from granularity.engine import TransferConfig, run_transfer
from granularity.engine.run import holdout_validation, prepare_data
from granularity.errors import GranularityError
from granularity.models import create_model

from .conftest import tiny_config


@pytest.mark.parametrize("protocol", ["finetune", "probe", "map"])
def test_validation_error_recomputed_from_the_final_weights(tiny, tmp_path, protocol):
    raw = tiny_config(val_size=24, transfer={"epochs": 1, "batch_size": 16, "lr": 0.02, "protocol": protocol})
    r = run_transfer(raw, tmp_path, dataset=tiny)
    cfg = TransferConfig.build(raw)
    ds, val = holdout_validation(cfg, prepare_data(cfg, tiny))
    assert r["dataset"]["n_train"] == len(tiny.train) - 24 == len(ds.train) and r["val"]["n"] == 24
    # the held-out rows are not among the training rows (exact row match of the uint8 images)
    tr = {t.numpy().tobytes() for t in ds.train.x}
    assert not any(v.numpy().tobytes() in tr for v in val.x)
    assert np.bincount(val.y.numpy(), minlength=4).tolist() == [6, 6, 6, 6]  # stratified by leaf
    # independent recomputation: the checkpoint's weights, the train split's own statistics
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    n_out = 4 if protocol == "map" else 2
    model = create_model("cnn", (1, 8, 8), n_out, width=4)
    model.load_state_dict(state["model"])
    model.eval()
    x = val.x.float() / 255.0
    mean = ds.train.x.float().mean() / 255.0
    std = (ds.train.x.float() / 255.0).std(unbiased=False)
    with torch.no_grad():
        logits = model((x - mean) / std)
    if protocol == "map":  # leaf logits -> target logits by logsumexp over each group (a, b | c, d)
        logits = torch.stack([logits[:, :2].logsumexp(1), logits[:, 2:].logsumexp(1)], 1)
    pred = logits.argmax(1).numpy()
    y_target = np.asarray(tiny.hierarchy.relabel(val.y.numpy(), 1))
    assert r["val"]["target_error"] == pytest.approx(float((pred != y_target).mean()), abs=1e-9)


def test_val_size_checked_and_absent_by_default(tiny, tmp_path):
    with pytest.raises(GranularityError, match="'val_size' parameter must be at most half"):
        run_transfer(tiny_config(val_size=60), tmp_path / "a", dataset=tiny)
    r = run_transfer(tiny_config(pretrain={"epochs": 1, "batch_size": 16}), tmp_path / "b", dataset=tiny)
    assert "val" not in r and r["dataset"]["n_train"] == len(tiny.train)
