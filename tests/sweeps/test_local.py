"""The local executor end to end, through `granularity sweep` subprocesses: a sweep killed
(SIGKILL of its process group) in the middle resumes without recomputing or losing finished
runs; two sweeps on one store at once; a diverging run is recorded as failed."""

import os
import signal
import sqlite3
import subprocess
import sys
import time


from granularity.sweeps.spec import load_sweep
from granularity.sweeps.store import ResultsStore

from sweep_helpers import write_sweep


def sweep_cmd(*args):
    return [sys.executable, "-m", "granularity.cli.main", "sweep", *map(str, args)]


def ok_count(store):
    path = store / "index.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        n = db.execute("SELECT COUNT(*) FROM runs WHERE status='ok'").fetchone()[0]
        db.close()
        return n
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def snapshot(store):
    with ResultsStore(store, create=False) as st:
        return {r["run_id"]: r for r in st.rows()}


def test_failure_is_recorded_and_the_others_finish(tmp_path, cli):
    # a trained second layer at lr=1e6 diverges: the simulator raises on a non-finite loss
    file = write_sweep(tmp_path / "fail.yaml", axes={"train.lr": [0.5, 1e6]}, seeds=1,
                       base={"name": "tiny", "data": {"d": 32, "P": 6, "k": 3}, "model": {"m": 4, "train_second_layer": True},
                             "train": {"n_train": 120, "steps": 40, "batch_size": 32, "log_points": 5},
                             "transfer": {"n_test": 100, "probe_steps": 20, "finetune_steps": 20}})
    store = tmp_path / "store"
    code, out, err = cli("sweep", file, "--out", store, "--workers", 2, "--quiet")
    assert code == 1, out + err
    assert err.strip().splitlines()[-1].startswith("granularity: 1 of 2 runs failed")
    rows = {r["params"]["train.lr"]: r for r in snapshot(store).values()}
    assert rows[0.5]["status"] == "ok" and rows[0.5]["metrics"]["fine.map.hard"] is not None
    assert rows[1e6]["status"] == "failed" and "non-finite training loss" in rows[1e6]["error"]
    assert (store / "runs" / rows[1e6]["run_id"] / "error.txt").exists()
    # --skip-failed leaves it alone; the finished run is not rerun either
    code, out, err = cli("sweep", file, "--out", store, "--skip-failed", "--quiet")
    assert code == 1 and "0 ran, 2 skipped" in out
    code, out, err = cli("results", store, "--filter", "status=failed", "--columns", "run_id,train.lr,error")
    assert code == 0 and "non-finite" in out and str(rows[0.5]["run_id"]) not in out


def test_killed_sweep_resumes_without_recomputing(tmp_path, cli):
    file = write_sweep(tmp_path / "grid.yaml", axes={"data.k": [2, 3]}, seeds=3)
    store = tmp_path / "store"
    expected = {r.run_id for r in load_sweep(file).runs}
    proc = subprocess.Popen(sweep_cmd(file, "--out", store, "--workers", 2), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while ok_count(store) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep process and its worker processes
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = snapshot(store)
    done = {rid: r for rid, r in before.items() if r["status"] == "ok"}
    assert 2 <= len(done) < len(expected), "the kill should land in the middle of the sweep"
    mtimes = {rid: (store / "runs" / rid / "result.json").stat().st_mtime_ns for rid in done}

    code, out, err = cli("sweep", file, "--out", store, "--workers", 2)  # the rerun, in this process
    assert code == 0, err[-2000:]
    assert f"{len(done)} skipped as finished" in out
    after = snapshot(store)
    assert set(after) == expected  # exactly the sweep's runs, none lost
    assert {r["status"] for r in after.values()} == {"ok"}
    for rid in done:  # finished runs were not recomputed
        assert (store / "runs" / rid / "result.json").stat().st_mtime_ns == mtimes[rid]
        assert after[rid]["attempts"] == before[rid]["attempts"] == 1
        assert after[rid]["metrics"] == before[rid]["metrics"]
    for rid in expected:
        assert (store / "runs" / rid / "result.json").exists()
        assert after[rid]["versions"]["torch"]  # versions recorded


def test_two_sweeps_at_once_on_one_store(tmp_path, cli):
    a = write_sweep(tmp_path / "a.yaml", axes={"data.k": [2, 3]}, seeds=1)
    b = write_sweep(tmp_path / "b.yaml", axes={"data.k": [3, 4]}, seeds=1)  # k=3 overlaps
    store = tmp_path / "store"
    # sweep b in another process, sweep a in this one, at the same time
    proc = subprocess.Popen(sweep_cmd(b, "--out", store, "--workers", 1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    code, _, err_a = cli("sweep", a, "--out", store, "--workers", 1)
    _, err_b = proc.communicate(timeout=300)
    assert code == 0 and proc.returncode == 0, err_a[-1000:] + err_b[-1000:]
    runs_a = {r.run_id for r in load_sweep(a).runs}
    runs_b = {r.run_id for r in load_sweep(b).runs}
    assert len(runs_a & runs_b) == 1
    rows = snapshot(store)
    assert set(rows) == runs_a | runs_b
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert {r["attempts"] for r in rows.values()} == {1}  # no run computed twice
    with ResultsStore(store, create=False) as st:
        assert {s["name"]: set(s["run_ids"]) for s in st.sweeps()} == {"a": runs_a, "b": runs_b}
    db = sqlite3.connect(store / "index.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
