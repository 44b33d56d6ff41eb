"""The advisor's driver without training (fake runs): the confirmation's runs count in the run
budget, a call stopped before the confirmation says so, and continuing it with a larger budget
gives exactly the advice of an uninterrupted call."""

from __future__ import annotations

import numpy as np
import pytest

import granularity.experiments.advise as advise_mod
from granularity.hierarchy import fashion_mnist_hierarchy
from granularity.utils.io import read_json

MEANS = {"target": 0.30, "level:3": 0.22, "random:10": 0.45}


def _table():
    rng = np.random.default_rng(0)
    out = {}
    for s in range(20):
        shared = rng.normal(0, 0.02)
        for c, m in MEANS.items():
            v = m + shared + rng.normal(0, 0.01)
            out[(c, s)] = {"test_error": v + rng.normal(0, 0.005), "val_error": v, "worst_subclass_error": None,
                           "seconds": 1.0, "num_source_classes": {"target": 4, "level:3": 10, "random:10": 10}[c],
                           "test_by_metric": {}}
    return out


@pytest.fixture()
def fake_runs(monkeypatch):
    table, done = _table(), {}

    def run_sweep(sweep, store, **kw):
        for spec in sweep.runs:
            done[(spec.params["source"], spec.seed)] = table[(spec.params["source"], spec.seed)]
        return {"failures": []}

    monkeypatch.setattr("granularity.sweeps.runner.run_sweep", run_sweep)
    monkeypatch.setattr(advise_mod, "_read_results", lambda store, grid, metric="error": {k: done[k] for k in grid if k in done})
    monkeypatch.setattr(advise_mod, "_base_run", lambda cfg: ({"train_size": 100, "val_size": 10}, fashion_mnist_hierarchy(), 2))
    return done


CFG = {"candidates": list(MEANS), "min_seeds": 3, "max_seeds": 5, "confirm_seeds": 3, "random_control": False}


def test_confirmation_counts_in_the_budget_and_resumes_exactly(tmp_path, fake_runs):
    cut = advise_mod.run_advice({**CFG, "max_runs": 14}, tmp_path / "cut")  # race: 9 + 2 (or 4) runs; confirmation 6
    assert not cut["finished"] and "before the confirmation on fresh seeds" in cut["stopped_because"]
    assert cut["decision"]["confirmation"] == "pending" and cut["answer"].startswith("No answer yet")
    race_runs = cut["runs"]
    resumed = advise_mod.run_advice({**CFG, "max_runs": 40}, tmp_path / "cut")
    assert resumed["finished"] and resumed["runs"] == race_runs + 6  # 2 candidates x 3 fresh seeds
    d = resumed["decision"]["test_diff_vs_target"]
    assert d["seeds"] == [5, 6, 7] and resumed["decision"]["recommendation"] == "level:3"
    fake_runs.clear()
    whole = advise_mod.run_advice({**CFG, "max_runs": 40}, tmp_path / "whole")
    for key in ("rows", "decision", "answer", "rounds", "eliminated", "runs"):
        assert resumed[key] == whole[key]
    assert read_json(tmp_path / "cut" / "runs.json") == read_json(tmp_path / "whole" / "runs.json")
    roles = {r["role"] for r in read_json(tmp_path / "whole" / "runs.json")["runs"] if r["seed"] >= 5}
    assert roles == {"confirmation"}
