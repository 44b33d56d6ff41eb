"""``granularity advise --metric hard`` on tiny Fashion-MNIST-layout files with a planted cue:
the race selects on the cue-free validation images, reports the cue-free test error, resumes
with a larger budget; bad metric choices are one line."""

from __future__ import annotations

import numpy as np
import pytest

from granularity.sweeps.store import ResultsStore
from granularity.utils.io import read_json, write_json

pytestmark = pytest.mark.slow

CUE = ["--data-option", "cue.rho=1", "--data-option", "cue.level=2", "--data-option", "download=false"]


def _args(root, out, *extra):
    return ["advise", "--data-root", root, "--train-size", 160, "--target", 2, "--epochs", 1, "--transfer-epochs", 1,
            "--set", "run.test_size=60", "--set", "run.device=cpu", "--set", "run.model.options.width=4",
            "--set", "run.pretrain.batch_size=32", "--set", "run.transfer.batch_size=32",
            "--set", "run.pretrain.augment=false", "--protocol", "probe",
            "--candidates", "target,level:3,random:10", "--min-seeds", 2, "--max-seeds", 3,
            "--confirm-seeds", 2, "--workers", 2, "--threads", 1, "--out", out, *extra]


def _runs(out):
    with ResultsStore(out / "store", create=False) as st:
        runs = {}
        for r in st.rows():
            if r["status"] == "ok":
                cfg = read_json(st.run_dir(r["run_id"]) / "config.json")
                runs[(cfg["source"], cfg["seed"])] = (cfg, read_json(st.run_dir(r["run_id"]) / "result.json"))
    return runs


def test_advise_metric_hard_selects_and_reports_cue_free_errors(tmp_path, cli, make_fmnist):
    from granularity.experiments.advise import AdviseConfig, replay

    root, out = make_fmnist(240, 60), tmp_path / "adv"
    code, _, err = cli(*_args(root, out, *CUE, "--metric", "hard", "--max-runs", 6))
    assert code == 0, err
    first = read_json(out / "advice.json")
    assert first["runs"] == 6 and not first["finished"] and first["metric"] == "hard"
    code, _, err = cli(*_args(root, out, *CUE, "--metric", "hard", "--max-runs", 30))  # the race continues
    assert code == 0, err
    adv = read_json(out / "advice.json")
    assert adv["finished"] and adv["runs"] > 6 and "cue-free" in adv["rule"]
    runs = _runs(out)
    assert len(runs) == adv["runs"]
    for cfg, res in runs.values():
        assert cfg["data_options"]["cue"]["rho"] == 1.0 and res["cue"]["counts"]["train"] == {"n": 160, "with_cue": 160, "own_cue": 160, "other_cue": 0}  # the subset, exactly
    # selection: the race replayed from the runs' cue-free validation errors gives the advice's rounds
    cfg = AdviseConfig.build(read_json(out / "advise.json")["config"])
    race = replay(cfg, adv["candidates"], {k: r["val"]["hard_error"] for k, (_, r) in runs.items()})
    assert race.rounds == adv["rounds"] and race.best == adv["decision"]["selected_on_validation"]
    # reported: the cue-free test error; the cued and plain ones beside it (exploratory)
    for row in adv["rows"]:
        c = row["candidate"]
        seeds = sorted(s for name, s in runs if name == c and s < 3)  # race seeds (3, 4: the confirmation's)
        hard = [runs[(c, s)][1]["hard_error"] for s in seeds]
        assert row["seeds"] == len(seeds)
        assert row["test_error"]["mean"] == pytest.approx(np.mean(hard))
        assert row["val_error"]["mean"] == pytest.approx(np.mean([runs[(c, s)][1]["val"]["hard_error"] for s in seeds]))
        assert row["test_by_metric"]["easy"]["test_error"]["mean"] == pytest.approx(np.mean([runs[(c, s)][1]["easy_error"] for s in seeds]))
        assert row["test_by_metric"]["error"]["test_error"]["mean"] == pytest.approx(np.mean([runs[(c, s)][1]["target_error"] for s in seeds]))
        if c != "target":
            d = [runs[(c, s)][1]["hard_error"] - runs[("target", s)][1]["hard_error"] for s in seeds]
            assert row["test_diff_vs_target"]["mean"] == pytest.approx(np.mean(d))
    assert "hard" in (out / "advice.md").read_text() and "cue-free" in (out / "index.html").read_text()


def test_advise_metric_hard_needs_data_that_defines_it(tmp_path, cli, make_fmnist):
    code, _, err = cli(*_args(make_fmnist(240, 60), tmp_path / "adv", "--metric", "hard", "--max-runs", 1))
    assert code == 2 and "'metric' parameter 'hard'" in err and "cue.rho" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_advise_metric_is_part_of_the_race(tmp_path, cli, make_fmnist):
    root, out = make_fmnist(240, 60), tmp_path / "adv"
    assert cli(*_args(root, out, *CUE, "--max-runs", 1))[0] == 0  # metric error (default), nothing run
    code, _, err = cli(*_args(root, out, *CUE, "--metric", "hard", "--max-runs", 1))
    assert code == 2 and "metric" in err and "another --out" in err
    # a folder written before the metric existed counts as metric 'error'
    saved = read_json(out / "advise.json")
    del saved["config"]["metric"]
    write_json(out / "advise.json", saved)
    assert cli(*_args(root, out, *CUE, "--max-runs", 1))[0] == 0
