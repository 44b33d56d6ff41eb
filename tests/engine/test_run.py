"""Engine: relabelling at every level, resume, label functions, transfer modes, errors."""

from __future__ import annotations

import numpy as np
import pytest

from granularity.engine import TransferConfig, run_transfer
from granularity.errors import GranularityError
from granularity.utils.io import read_json, read_jsonl

from .conftest import tiny_config


@pytest.mark.parametrize("source,n_src", [("level:1", 2), ("leaf", 4), ("target", 2)])
def test_relabel_at_every_level(tiny, tmp_path, source, n_src):
    r = run_transfer(tiny_config(source=source, pretrain={"epochs": 1, "batch_size": 16}), tmp_path, dataset=tiny)
    assert r["num_source_classes"] == n_src
    assert r["hierarchy_hash"] == tiny.hierarchy.content_hash
    # a source that nests in a level reports that level's accuracy during pretraining (logsumexp)
    expected = {"acc_level1"} | ({"acc_level2"} if n_src == 4 else set())
    assert set(r["pretrain_levels"]) == expected
    assert set(r["levels"]) == {"acc_level1"}  # target level 1: nothing coarser below the root
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(m["stage"], m["epoch"]) for m in rows] == [("pretrain", 1), ("transfer", 1)]
    assert set(r["per_fine_class_target_acc"]) == {"a", "b", "c", "d"}
    for f in ("config.json", "env.json", "result.json", "predictions.npz", "checkpoint.pt"):
        assert (tmp_path / f).exists(), f
    assert r["target_error"] == pytest.approx(1 - r["target_acc"])


def test_resume_after_interrupted_epochs_gives_same_result(tiny, tmp_path):
    cfg = tiny_config()  # 6 steps per epoch: 2 pretraining epochs (12 steps), 1 transfer epoch
    full = run_transfer(cfg, tmp_path / "full", dataset=tiny)
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of pretraining epoch 2
        run_transfer(cfg, tmp_path / "cut", dataset=tiny, stop_after_steps=9)
    with pytest.raises(KeyboardInterrupt):  # resumed from epoch 1, killed inside the transfer epoch
        run_transfer(cfg, tmp_path / "cut", dataset=tiny, stop_after_steps=8)
    resumed = run_transfer(cfg, tmp_path / "cut", dataset=tiny)
    for key in ("target_acc", "per_fine_class_target_acc", "levels", "pretrain_levels"):
        assert resumed[key] == full[key]
    a, b = np.load(tmp_path / "full" / "predictions.npz"), np.load(tmp_path / "cut" / "predictions.npz")
    np.testing.assert_array_equal(a["margin"], b["margin"])  # bit for bit on the CPU
    drop = ("seconds", "images_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "full" / "metrics.jsonl"))
    # a finished run is returned as is
    assert run_transfer(cfg, tmp_path / "cut", dataset=tiny)["target_acc"] == full["target_acc"]


@pytest.mark.parametrize("source", ["per-sample", "random:3", "kmeans-within:4", "kmeans-global:3"])
def test_other_label_functions_run(tiny, tmp_path, source):
    r = run_transfer(tiny_config(source=source, pretrain={"epochs": 1, "batch_size": 32}), tmp_path, dataset=tiny)
    assert 0.0 <= r["target_acc"] <= 1.0
    assert r["label_function_meta"]["kind"]
    if source == "per-sample":
        assert r["num_source_classes"] == len(tiny.train)
    if source == "kmeans-within:4":  # aligned clusters nest in the target: coarse metrics for free
        assert "acc_level1" in r["pretrain_levels"]
    if source == "random:3":  # random labels nest in nothing
        assert r["pretrain_levels"] == {}


def test_linear_probe_and_map(tiny, tmp_path):
    lin = run_transfer(tiny_config(transfer={"protocol": "probe", "epochs": 2, "lr": 0.1}), tmp_path / "lin", dataset=tiny)
    mp = run_transfer(tiny_config(transfer={"protocol": "map"}), tmp_path / "map", dataset=tiny)
    assert lin["protocol"] == "probe" and mp["protocol"] == "map"
    # map = the pretrained fine model's coarse accuracy by logsumexp over groups
    assert mp["target_acc"] == pytest.approx(mp["pretrain_levels"]["acc_level1"])
    assert mp["target_acc"] > 0.75  # the tiny task is easy (4 bright quadrants)
    with pytest.raises(GranularityError, match="nest in the target"):
        run_transfer(tiny_config(source="random:3", transfer={"protocol": "map"}), tmp_path / "bad", dataset=tiny)


def test_rare_subclasses_reported(tiny, tmp_path):
    r = run_transfer(tiny_config(rare={"classes": ["b"], "keep_fraction": 0.25}), tmp_path, dataset=tiny)
    assert r["rare_classes"] == ["b"]
    assert r["dataset"]["n_train"] == 96 - 24 + 6
    assert 0 <= r["rare_error"] <= 1 and 0 <= r["common_error"] <= 1


def test_config_errors(tiny, tmp_path):
    with pytest.raises(GranularityError, match="Unknown source label function 'kmeans-withn:4'.*did you mean"):
        TransferConfig.build({"source": "kmeans-withn:4"})
    with pytest.raises(GranularityError, match="needs a positive integer"):
        TransferConfig.build({"source": "random"})
    with pytest.raises(GranularityError, match="Unknown config key 'pretrain.epoch'"):
        TransferConfig.build({"pretrain": {"epoch": 2}})
    with pytest.raises(GranularityError, match="'target' parameter must be a hierarchy level in \\[1, 2\\]"):
        run_transfer(tiny_config(target=3), tmp_path / "a", dataset=tiny)
    with pytest.raises(GranularityError, match="source level"):
        run_transfer(tiny_config(source="level:5"), tmp_path / "b", dataset=tiny)
    run_transfer(tiny_config(pretrain={"epochs": 0}, transfer={"epochs": 0}), tmp_path / "c", dataset=tiny)
    with pytest.raises(GranularityError, match="holds a run with another config"):
        run_transfer(tiny_config(seed=1, pretrain={"epochs": 0}, transfer={"epochs": 0}), tmp_path / "c", dataset=tiny)
    assert read_json(tmp_path / "c" / "config.json")["seed"] == 0


def test_tabular_data_with_mlp(tmp_path):
    import torch

    from granularity.data import RealDataset, Split
    from granularity.hierarchy import LabelHierarchy

    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % 4
        x = rng.normal(size=(n, 6)).astype(np.float32) + np.eye(4, 6, dtype=np.float32)[y] * 3
        return Split(torch.as_tensor(x), torch.as_tensor(y))

    ds = RealDataset("table", "test", split(80), split(40), ["a", "b", "c", "d"],
                     _hierarchy=LabelHierarchy.from_paths([["g0", "a"], ["g0", "b"], ["g1", "c"], ["g1", "d"]]))
    cfg = tiny_config(model={"name": "mlp", "options": {"hidden": 16}}, transfer={"protocol": "probe", "epochs": 10, "lr": 0.1})
    r = run_transfer(cfg, tmp_path, dataset=ds)
    assert r["target_acc"] > 0.75  # well-separated Gaussian blobs
