"""``granularity advise`` end to end on tiny Fashion-MNIST-layout files: a race within a run
budget, resumed with a larger budget, figures pinned to the run folders, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from granularity.sweeps.store import ResultsStore
from granularity.utils.io import read_json

pytestmark = pytest.mark.slow


def _args(root, out, *extra):
    return ["advise", "--data-root", root, "--train-size", 160, "--target", 2, "--epochs", 1, "--transfer-epochs", 1,
            "--set", "run.test_size=60", "--set", "run.device=cpu", "--set", "run.model.options.width=4",
            "--set", "run.pretrain.batch_size=32", "--set", "run.transfer.batch_size=32",
            "--candidates", "target,level:3,random:10", "--min-seeds", 2, "--max-seeds", 3,
            "--confirm-seeds", 2, "--workers", 2, "--threads", 1, "--out", out, *extra]


def test_advise_races_resumes_and_pins_its_figures(tmp_path, cli, make_fmnist):
    root, out = make_fmnist(240, 60), tmp_path / "adv"
    code, stdout, err = cli(*_args(root, out, "--max-runs", 4))
    assert code == 0, err
    first = read_json(out / "advice.json")
    assert not first["finished"] and "run budget" in first["stopped_because"] and first["runs"] == 0
    code, stdout, err = cli(*_args(root, out, "--max-runs", 30))  # a larger budget continues the race
    assert code == 0, err
    adv = read_json(out / "advice.json")
    assert adv["finished"] and adv["runs"] >= 6 and (out / "index.html").exists() and (out / "advice.md").exists()
    assert adv["answer"].startswith(("Pretrain on", "No candidate beats"))
    # every figure equals a recomputation from the run folders
    with ResultsStore(out / "store", create=False) as st:
        rows = [r for r in st.rows() if r["status"] == "ok"]
        runs = {}
        for r in rows:
            cfg = read_json(st.run_dir(r["run_id"]) / "config.json")
            res = read_json(st.run_dir(r["run_id"]) / "result.json")
            assert cfg["data_seed"] == cfg["seed"] and cfg["val_size"] == 16  # paired subsets, 10% held out
            runs[(cfg["source"], cfg["seed"])] = res
    assert len(runs) == adv["runs"]
    by_c = {row["candidate"]: row for row in adv["rows"]}
    for cand, row in by_c.items():
        seeds = sorted(s for c, s in runs if c == cand and s < 3)  # race seeds; 3, 4 are the confirmation's
        assert row["seeds"] == len(seeds) and seeds == list(range(len(seeds)))
        test = [runs[(cand, s)]["target_error"] for s in seeds]
        val = [runs[(cand, s)]["val"]["target_error"] for s in seeds]
        assert row["test_error"]["mean"] == pytest.approx(np.mean(test))
        assert row["val_error"]["mean"] == pytest.approx(np.mean(val))
        if cand != "target":
            d = [runs[(cand, s)]["target_error"] - runs[("target", s)]["target_error"] for s in seeds]
            assert row["test_diff_vs_target"]["mean"] == pytest.approx(np.mean(d))
    dec = adv["decision"]
    if dec["selected_on_validation"] != "target":  # the confirmation: fresh seeds 3 and 4 only
        sel = dec["selected_on_validation"]
        d = [runs[(sel, s)]["target_error"] - runs[("target", s)]["target_error"] for s in (3, 4)]
        assert dec["test_diff_vs_target"]["seeds"] == [3, 4] and dec["test_diff_vs_target"]["mean"] == pytest.approx(np.mean(d))
    else:
        assert not any(s >= 3 for _, s in runs)
    # the headline recomputes from the folder's per-run figures (runs.json)
    from granularity.experiments.advise import AdviseConfig, replay, results_from_runs, summarise

    cfg = AdviseConfig.build(read_json(out / "advise.json")["config"])
    res = results_from_runs(read_json(out / "runs.json"))
    race = replay(cfg, adv["candidates"], {k: v["val_error"] for k, v in res.items()})
    again = summarise(cfg, race, res, {r["candidate"]: r["classes"] for r in adv["rows"]})
    assert again["rows"] == adv["rows"] and again["decision"] == adv["decision"]
    # a third call has nothing to do and changes nothing
    code, _, err = cli(*_args(root, out, "--max-runs", 30))
    assert code == 0 and read_json(out / "advice.json")["rows"] == adv["rows"]


@pytest.mark.parametrize("extra,match", [
    (["--remove", "level:7"], "not in the list"),
    (["--add", "kmeans-within:x"], "kmeans-within"),
    (["--set", "run.source=leaf"], "set by the advisor"),
    (["--set", "alpha=2"], "alpha"),
    (["--min-seeds", 5, "--max-seeds", 3], "max_seeds"),
])
def test_advise_bad_input_is_one_line(tmp_path, cli, make_fmnist, extra, match):
    code, out, err = cli(*_args(make_fmnist(240, 60), tmp_path / "adv", *extra))
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_advise_refuses_another_race_in_the_same_folder(tmp_path, cli, make_fmnist):
    root, out = make_fmnist(240, 60), tmp_path / "adv"
    assert cli(*_args(root, out, "--max-runs", 1))[0] == 0
    code, _, err = cli(*_args(root, out, "--max-runs", 1, "--set", "alpha=0.1"))
    assert code == 2 and "alpha" in err and "another --out" in err


def test_advise_killed_then_rerun_gives_the_uninterrupted_answer(tmp_path, make_fmnist):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = make_fmnist(240, 60)

    def argv(out):
        args = _args(root, out, "--max-runs", 10)
        i = args.index("--candidates")
        args[i + 1] = "target,level:3"
        args[args.index("--max-seeds") + 1] = 2  # race 4 runs, confirmation (if level:3 leads) 4 more
        return [sys.executable, "-m", "granularity", *map(str, args)]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), "") if p)}
    ref = subprocess.run(argv(tmp_path / "ref"), capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(argv(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once the first run has finished
        if len(list((out / "store" / "runs").glob("*/result.json"))) >= 1:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(argv(out), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    a, b = read_json(tmp_path / "ref" / "advice.json"), read_json(out / "advice.json")
    assert a["rows"] == b["rows"] and a["answer"] == b["answer"]  # bit-identical on the CPU
    assert a["decision"] == b["decision"] and read_json(tmp_path / "ref" / "runs.json") == read_json(out / "runs.json")


def test_advise_on_a_table_with_its_own_hierarchy_file(tmp_path, cli):
    """A specimen table (species labels + measurements) and a separate family/genus/species
    paths file: the candidates come from the file's levels; figures pinned to the run folders."""
    from fakes import TAXA, survey_table

    survey_table(n=1200, family=False).drop(columns=["genus"]).to_csv(tmp_path / "birds.csv", index=False)
    (tmp_path / "taxonomy.paths").write_text("".join(f"Aves/{f}/{g}/{s}\n" for f, g, s in TAXA))
    out = tmp_path / "adv"
    code, stdout, err = cli(
        "advise", "--dataset", "table", "--data-root", tmp_path / "birds.csv", "--model", "mlp", "--target", 1,
        "--data-option", "label_columns=species_id", "--data-option", f"hierarchy_file={tmp_path / 'taxonomy.paths'}",
        "--train-size", 600, "--epochs", 2, "--transfer-epochs", 1, "--set", "run.test_size=200",
        "--set", "run.device=cpu", "--min-seeds", 2, "--max-seeds", 2, "--confirm-seeds", 2, "--remove", "kmeans-within:4",
        "--workers", 2, "--threads", 1, "--max-runs", 20, "--out", out)
    assert code == 0, err
    adv = read_json(out / "advice.json")
    assert adv["candidates"] == ["target", "level:2", "level:3", "kmeans-within:8", "random:8"]
    assert adv["finished"] and {r["candidate"] for r in adv["rows"]} == set(adv["candidates"])
    with ResultsStore(out / "store", create=False) as st:
        res = {(read_json(st.run_dir(r["run_id"]) / "config.json")["source"], r["params"]["seed"]):
               read_json(st.run_dir(r["run_id"]) / "result.json") for r in st.rows() if r["status"] == "ok"}
    for row in adv["rows"]:
        errs = [res[(row["candidate"], s)]["target_error"] for s in range(row["seeds"])]
        assert row["test_error"]["mean"] == pytest.approx(np.mean(errs))
    assert res[("level:3", 0)]["num_source_classes"] == 8 and res[("target", 0)]["num_target_classes"] == 2
