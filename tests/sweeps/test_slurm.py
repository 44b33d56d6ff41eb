"""The SLURM executor through submitit, with submitit's local executor (jobs as processes on
this machine): one job array, failures recorded, a job that dies retried once then failed,
and a rerun that skips finished runs and resubmits the rest."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("submitit", reason="submitit is not installed (pip install 'granularity[slurm]')")

from granularity.errors import GranularityError  # noqa: E402
from granularity.sweeps.executors import make_executor  # noqa: E402
from granularity.sweeps.runner import run_sweep  # noqa: E402
from granularity.sweeps.spec import load_sweep  # noqa: E402
from granularity.sweeps.store import ResultsStore  # noqa: E402
from granularity.sweeps.worker import KILL_ENV  # noqa: E402

from sweep_helpers import write_sweep  # noqa: E402


def test_slurm_options_are_checked(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GranularityError, match="found no sbatch on this machine"):
        make_executor("slurm")
    with pytest.raises(GranularityError, match="'--partition' option is not for --executor ray; it is for slurm"):
        make_executor("ray", partition="gpu")
    with pytest.raises(GranularityError, match="'--gpus-per-run' option must be a whole number on SLURM. Got 0.5"):
        make_executor("slurm", cluster="local", gpus_per_run=0.5)
    with pytest.raises(GranularityError, match="'--address' option is for --executor ray. Got 'x' with --executor slurm"):
        make_executor("slurm", address="x", cluster="local")


@pytest.mark.slow
def test_slurm_local_sweep_fails_dead_jobs_and_resumes(tmp_path, monkeypatch):
    # two runs (every local job is a fresh Python importing torch: seconds each on a loaded machine)
    file = write_sweep(tmp_path / "s.yaml", axes={"data.k": [2, 3]}, seeds=1)
    runs = load_sweep(file).runs
    doomed = runs[1]
    monkeypatch.setenv(KILL_ENV, doomed.run_id)  # its job kills itself every time, as an OOM kill would
    store = tmp_path / "store"
    logs: list[str] = []
    opts = {"cluster": "local", "time_min": 5}
    summary = run_sweep(file, store, executor="slurm", workers=2, threads=1, executor_options=opts, log=logs.append)
    assert summary["counts"] == {"ok": 1, "failed": 1}, logs
    with ResultsStore(store, create=False) as st:
        rows = {r["run_id"]: r for r in st.rows()}
    assert rows[doomed.run_id]["error"].startswith("WorkerCrashed: SLURM job") and rows[doomed.run_id]["attempts"] == 2
    assert sum(line.startswith("submitted a job array") for line in logs) >= 2, logs
    assert any(line.startswith(f"retrying {doomed.run_id}") for line in logs)
    assert (store / "slurm").is_dir()

    # the rerun (no kill this time) skips the finished run and resubmits the failed one
    monkeypatch.delenv(KILL_ENV)
    logs.clear()
    again = run_sweep(file, store, executor="slurm", workers=2, threads=1, executor_options=opts, log=logs.append)
    assert again["skipped"] == 1 and again["ran"] == 1 and again["counts"] == {"ok": 2}, logs
    ok_before = {rid for rid, r in rows.items() if r["status"] == "ok"}
    with ResultsStore(store, create=False) as st:
        rows2 = {r["run_id"]: r for r in st.rows()}
    assert rows2[doomed.run_id]["status"] == "ok" and rows2[doomed.run_id]["metrics"]["fine.map.hard"] is not None
    assert all(rows2[rid]["attempts"] == rows[rid]["attempts"] for rid in ok_before)  # not recomputed

    # the sweep process died after its jobs finished, before recording them: the rerun adopts the
    # finished run folders without submitting any job
    with ResultsStore(store, create=False) as st:
        st._db.execute("UPDATE runs SET status='running', owner='gone:1', heartbeat=0 WHERE status='ok'")
    logs.clear()
    third = run_sweep(file, store, executor="slurm", workers=2, threads=1, executor_options=opts, log=logs.append,
                      retry_failed=False)
    assert third["counts"] == {"ok": 2} and third["ran"] == 2 and not any("submitted" in line for line in logs), logs
    place = json.loads((store / "runs" / doomed.run_id / "placement.json").read_text())
    assert place["pid"] > 0 and "SLURM_JOB_ID" not in place  # submitit's local jobs are no SLURM jobs
