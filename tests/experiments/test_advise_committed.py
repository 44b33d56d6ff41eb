"""Every committed advice (docs/results/advise-*/advice.json) recomputes from the per-run
figures in its folder (runs.json) through the real race and decision code: the rounds, the
eliminations, every row, the decision with its fresh-seed confirmation, and the answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from granularity.experiments.advise import AdviseConfig, replay, results_from_runs, sentence, summarise
from granularity.utils.io import read_json

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
FOLDERS = sorted(p.parent.name for p in RESULTS.glob("advise-*/advice.json"))


def test_there_are_committed_advice_folders():
    assert {"advise-fashion-mnist", "advise-fashion-mnist-cue"} <= set(FOLDERS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_committed_advice_recomputes_from_its_runs(folder):
    out = RESULTS / folder
    assert (out / "runs.json").exists(), f"{folder} has no runs.json: regenerate it (see its README)"
    adv = read_json(out / "advice.json")
    cfg = AdviseConfig.build(read_json(out / "advise.json")["config"])
    doc = read_json(out / "runs.json")
    assert doc["metric"] == adv["metric"] == cfg.metric and len(doc["runs"]) == adv["runs"]
    res = results_from_runs(doc)
    race = replay(cfg, adv["candidates"], {k: v["val_error"] for k, v in res.items()})
    assert race.rounds == adv["rounds"] and race.eliminated == adv["eliminated"]
    classes = {c: next(v["num_source_classes"] for (name, _), v in res.items() if name == c) for c in race.candidates}
    summary = summarise(cfg, race, res, classes)
    assert summary["rows"] == adv["rows"] and summary["decision"] == adv["decision"]
    assert sentence(summary, adv["finished"], cfg.metric) == adv["answer"]
    d = adv["decision"].get("test_diff_vs_target")
    if d:  # the confirmation by hand: fresh seeds only, paired by seed
        assert not set(d["seeds"]) & set(range(cfg.first_seed, cfg.first_seed + cfg.max_seeds))
        best = adv["decision"]["selected_on_validation"]
        diffs = [res[(best, s)]["test_error"] - res[("target", s)]["test_error"] for s in d["seeds"]]
        assert d["mean"] == pytest.approx(np.mean(diffs)) and d["n"] == cfg.confirm_seeds
