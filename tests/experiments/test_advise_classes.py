"""The advice's classes column comes from the runs' recorded ``num_source_classes`` (a
``per-sample`` candidate has as many classes as training images, not 0), and the figure's
caption and axis follow ``--metric`` (no training: a fake store of result files)."""

from __future__ import annotations

from types import SimpleNamespace

from granularity.experiments.advise import AdviseConfig, _num_classes, _read_results, replay, summarise
from granularity.experiments.advise_page import plot_curve, write_page
from granularity.hierarchy import fashion_mnist_hierarchy
from granularity.utils.io import write_json


class FakeStore:
    def __init__(self, root, results):
        self.root = root
        self.results = results  # run_id -> result.json

    def rows(self, ids=None):
        return [{"run_id": i, "status": "ok"} for i in self.results if ids is None or i in ids]

    def run_dir(self, run_id):
        d = self.root / run_id
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "result.json", self.results[run_id])
        return d


def _result(err, classes):
    return {"target_error": err, "val": {"target_error": err}, "num_source_classes": classes, "seconds": 1.0}


def test_per_sample_shows_its_recorded_classes_and_stays_on_the_curve(tmp_path):
    seeds = range(3)
    grid = {(c, s): SimpleNamespace(run_id=f"{c}-{s}") for c in ("target", "per-sample") for s in seeds}
    res = {f"target-{s}": _result(0.2 + 0.01 * s, 4) for s in seeds}
    res.update({f"per-sample-{s}": _result(0.21 + 0.01 * s, 540) for s in seeds})
    results = _read_results(FakeStore(tmp_path, res), grid)
    assert results[("per-sample", 0)]["num_source_classes"] == 540
    h = fashion_mnist_hierarchy()
    assert _num_classes("per-sample", h, 2, results) == 540  # the old code read 0 from the name
    cfg = AdviseConfig(min_seeds=2, max_seeds=3, candidates=["target", "per-sample"])
    race = replay(cfg, ["target", "per-sample"], {k: v["val_error"] for k, v in results.items()})
    summ = summarise(cfg, race, results, {c: _num_classes(c, h, 2, results) for c in race.candidates})
    rows = {r["candidate"]: r for r in summ["rows"]}
    assert rows["per-sample"]["classes"] == 540 and rows["target"]["classes"] == 4
    advice = {"rows": summ["rows"], "decision": summ["decision"], "metric": "hard",
              "metric_description": "target error on the cue-free (hard) images"}
    drawn = plot_curve(advice, tmp_path / "curve.png")
    assert {p["candidate"]: p["x"] for p in drawn["points"]} == {"target": 4, "per-sample": 540}


def test_caption_follows_the_metric(tmp_path):
    ci = {"mean": 0.2, "ci": 0.01, "std": 0.01, "n": 3}
    rows = [{"candidate": "target", "classes": 4, "seeds": 3, "status": "in contention", "val_error": ci, "test_error": ci}]
    advice = {"rows": rows, "decision": {"selected_on_validation": "target"}, "metric": "hard",
              "metric_description": "target error on the cue-free (hard) images", "answer": "x", "stopped_because": "y",
              "runs": 3, "comparisons_on_validation": 0, "rule": "r", "rounds": [], "eliminated": {}}
    page = write_page(advice, tmp_path).read_text()
    assert "Test target error on the cue-free (hard) images (race seeds) vs number of pretraining classes" in page
    assert "Target test error vs number" not in page
