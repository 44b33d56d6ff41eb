"""The final model is evaluated once: the last epoch's evaluation is the run's final result
(no second pass over the test set), and it equals an independent evaluation of the saved model."""

import numpy as np
import pytest

import granularity.engine.stages as engine_stages
from granularity.engine import run_transfer
from granularity.utils.io import read_jsonl

from .conftest import tiny_config


@pytest.mark.parametrize("protocol", ["finetune", "probe"])
def test_one_test_pass_per_epoch_and_none_after(tiny, tmp_path, monkeypatch, protocol):
    calls = []
    real = engine_stages.predict_levels
    monkeypatch.setattr(engine_stages, "predict_levels", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = run_transfer(tiny_config(transfer={"protocol": protocol, "epochs": 2, "lr": 0.1}), tmp_path / protocol, dataset=tiny)
    epochs = [rec for rec in read_jsonl(tmp_path / protocol / "metrics.jsonl") if "epoch" in rec]
    assert len(epochs) == 4 and len(calls) == 4  # 2 pretraining + 2 transfer epochs, one pass each
    # the final figures are those of the last epoch's evaluation
    assert r["target_acc"] == pytest.approx(epochs[-1]["acc_level1"])
    pred = np.load(tmp_path / protocol / "predictions.npz")
    assert (pred["pred"] == pred["y_target"]).mean() == pytest.approx(r["target_acc"])
