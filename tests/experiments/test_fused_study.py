"""Studies with fused groups (runner.execute_units, engine.fused_group): a run's result does
not depend on fusion. A tiny study fused and with --no-fuse gives the same runs (float32:
predictions >= 99% equal, target accuracy within 2 test images) and the same table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from granularity.engine.config import TransferConfig
from granularity.engine.fused_group import activation_bytes, group_sizes
from granularity.experiments.registry import run_study
from granularity.experiments.runner import Unit, _fused_groups
from granularity.models import create_model

from engine.conftest import tiny_dataset  # tests/ is on sys.path (rootdir import mode)
from experiments.test_designs import tiny
from experiments.test_study import tiny_study


def _runs(folder):
    return {p.parent.relative_to(folder).as_posix(): json.loads(p.read_text()) for p in sorted(folder.glob("**/result.json"))}


def _same_table(a: dict, b: dict, n_test: int) -> None:
    assert [r["arm"] for r in a["table"]] == [r["arm"] for r in b["table"]]
    for ra, rb in zip(a["table"], b["table"]):
        assert abs(ra["target_error"]["mean"] - rb["target_error"]["mean"]) <= 2 / n_test, ra["arm"]


def test_a_tiny_study_fused_equals_it_unfused(tmp_path):
    ds = tiny_dataset(n_train=160)
    cfg = tiny_study(train_size=96, pretrain={"epochs": 2, "batch_size": 32})
    cfg["run"]["bf16"] = False
    fused = run_study(cfg, tmp_path / "fused", dataset=ds, progress=False, fuse=True)
    alone = run_study(cfg, tmp_path / "alone", dataset=ds, progress=False, fuse=False)
    runs_f, runs_a = _runs(tmp_path / "fused"), _runs(tmp_path / "alone")
    assert runs_f.keys() == runs_a.keys() and len(runs_f) == 20  # 8 arms x 2 seeds + 4 reference runs
    assert all(r["fused_with"] > 1 for r in runs_f.values()) and all("fused_with" not in r for r in runs_a.values())
    for k, rf in runs_f.items():
        ra = runs_a[k]
        assert abs(rf["target_acc"] - ra["target_acc"]) * rf["dataset"]["n_test"] <= 2, k
        pf = np.load(tmp_path / "fused" / k / "predictions.npz")["pred"]
        pa = np.load(tmp_path / "alone" / k / "predictions.npz")["pred"]
        assert np.mean(pf == pa) >= 0.99, k
    _same_table(fused, alone, 48)


def test_a_paired_design_fused_equals_it_unfused(tmp_path, make_fmnist, monkeypatch):
    import granularity.engine.fused as fused_mod
    from granularity.data import load_dataset

    fm = load_dataset("fashion-mnist", root=make_fmnist(1200, 200))
    cfg = tiny("bridge")
    groups, real = [], fused_mod.train_epoch_fused
    monkeypatch.setattr(fused_mod, "train_epoch_fused", lambda model, *a, **kw: groups.append(model.k) or real(model, *a, **kw))
    evals, real_predict = [], fused_mod.predict_fused
    monkeypatch.setattr(fused_mod, "predict_fused", lambda fn, xs, *a, **kw: evals.append(len(xs)) or real_predict(fn, xs, *a, **kw))
    fused = run_study(cfg, tmp_path / "fused", design=cfg.design, dataset=fm, progress=False, simulate=False, fuse=True)
    assert groups and min(groups) > 1  # the units' pretraining, fine-tuning and probe epochs ran fused
    assert evals and min(evals) > 1  # and so did their predictions
    n_fused = len(groups)
    alone = run_study(cfg, tmp_path / "alone", design=cfg.design, dataset=fm, progress=False, simulate=False, fuse=False)
    assert len(groups) == n_fused  # --no-fuse: nothing trained fused
    runs_f, runs_a = _runs(tmp_path / "fused"), _runs(tmp_path / "alone")
    assert runs_f.keys() == runs_a.keys() and runs_f
    assert all(r["fused_with"] > 1 for r in runs_f.values()) and all("fused_with" not in r for r in runs_a.values())
    assert [(r["cell"], r["transfer"]) for r in fused["table"]] == [(r["cell"], r["transfer"]) for r in alone["table"]]
    for rf, ra in zip(fused["table"], alone["table"]):
        for arm in ("target", "leaf"):
            assert abs(rf[arm]["mean"] - ra[arm]["mean"]) <= 0.02 + 1e-9, (rf["cell"], rf["transfer"], arm)
    for k, rf in runs_f.items():
        for name, err in rf["errors"].items():  # error rates on 100-image evaluation sets
            assert abs(err - runs_a[k]["errors"][name]) <= 0.02 + 1e-9, (k, name)


def test_units_are_grouped_by_data_and_model_within_the_memory_budget():
    cnn = TransferConfig.build({"model": {"name": "cnn", "options": {"width": 4}}})
    mlp = TransferConfig.build({"model": {"name": "mlp"}})
    units = [Unit("a", s, cnn, f"a{s}") for s in range(5)] + [Unit("b", 0, mlp, "b0"), Unit("r", 0, cnn, "r0", data="refs")]

    class Data:
        input_shape = (1, 28, 28)

    per_run = activation_bytes(create_model("cnn", (1, 28, 28), 1, width=4), (1, 28, 28), 128)
    groups = _fused_groups(units, {"main": Data(), "refs": Data()}, budget=2 * per_run + 1)
    assert [[u.folder for u in g] for g in groups] == [["a0", "a1"], ["a2", "a3"], ["a4"], ["b0"], ["r0"]]
    assert [len(g) for g in _fused_groups(units, {"main": Data()}, budget=2**40)] == [5, 1, 1]


def test_group_sizes_and_activation_bytes():
    assert group_sizes(10, 1, 100, 4) == [4, 3, 3]  # capped at 4, as equal as they can be
    assert group_sizes(10, 30, 100, 16) == [3, 3, 2, 2]  # 3 runs fit in the budget
    assert group_sizes(3, 1000, 10, 16) == [1, 1, 1] and group_sizes(0, 1, 1, 1) == []
    small = activation_bytes(create_model("cnn", (1, 28, 28), 1, width=4), (1, 28, 28), 128)
    assert activation_bytes(create_model("cnn", (1, 28, 28), 1, width=8), (1, 28, 28), 128) > small
    assert activation_bytes(create_model("cnn", (1, 28, 28), 1, width=4), (1, 28, 28), 256) > small


@pytest.mark.parametrize("bad", ["lots", "-1G", "0", "infG"])
def test_fuse_memory_errors_are_one_line(cli, bad):
    code, out, err = cli("study", "--quick", "--fuse-memory", bad, "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "fuse-memory" in err

