"""Dead processes in a local sweep: a killed worker costs a retry only to the run it was
computing (runs that never started are resubmitted, uncounted); a run that kills its worker every
time fails alone; a killed sweep process leaves no worker or fork server behind.

The sweeps run in `granularity sweep` subprocesses, so their fork server (and its environment,
which carries the kill hook) is their own."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from granularity.sweeps.locks import owner_id
from granularity.sweeps.runner import LOST, _reconcile
from granularity.sweeps.spec import expand, load_sweep
from granularity.sweeps.store import ResultsStore
from granularity.sweeps.worker import KILL_ENV

from sweep_helpers import TINY_BASE, write_sweep


def sweep_proc(file: Path, store: Path, *args, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "granularity.cli.main", "sweep", str(file), "--out", str(store), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The sweep process's (stdout, stderr) once it exits; its whole process group is killed if it
    is still running after ``timeout`` seconds (or the wait fails)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None


def query(store: Path, sql: str) -> list[tuple]:
    path = store / "index.sqlite"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:  # the tables are not created yet
        return []


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid``; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")  # a zombie has exited


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier and c not in out}
        out |= frontier
    return {p for p in out if alive(p)}


def running_workers(store: Path, driver: int) -> dict[str, int]:
    """run id -> pid of the live worker of this sweep computing it (from the claim rows)."""
    rows = query(store, "SELECT run_id, owner FROM runs WHERE status='running' AND owner IS NOT NULL")
    mine = descendants(driver)
    out = {}
    for rid, owner in rows:
        pid = owner.rpartition(":")[2]
        if pid.isdigit() and int(pid) in mine:
            out[rid] = int(pid)
    return out


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"timed out waiting for {what}; sweep exited {proc.returncode}: {err[-2000:]}")


def summary(store: Path) -> dict[str, object]:
    """The counts the issue reports: status counts, failed runs never started, rows left running."""
    with ResultsStore(store, create=False) as st:
        rows = st.rows()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"counts": counts, "failed_never_started": sum(r["status"] == "failed" and r["attempts"] == 0 for r in rows),
            "running": sum(r["status"] == "running" for r in rows)}


@pytest.mark.slow
def test_killed_workers_cost_only_their_own_runs(tmp_path):
    # the reproduction: 24 runs, 2 workers; once 2 runs are ok, SIGKILL the worker of a
    # running run, 1.5 s later the worker of another one
    # runs long enough (~1 s each on a quiet machine) that a running one can be caught and killed
    slow = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 1500}}
    file = write_sweep(tmp_path / "grid.yaml", axes={"data.k": [2, 3, 4]}, seeds=8, base=slow)
    store = tmp_path / "store"
    proc = sweep_proc(file, store, "--workers", 2, "--threads", 1)
    try:
        wait_for(lambda: len(query(store, "SELECT 1 FROM runs WHERE status='ok'")) >= 2, 300, "2 runs ok", proc)
        first, pid = next(iter(wait_for(lambda: running_workers(store, proc.pid), 60, "a running run", proc).items()))
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.5)
        others = wait_for(lambda: {r: p for r, p in running_workers(store, proc.pid).items() if r != first and p != pid},
                          60, "another running run", proc)
        second, pid2 = next(iter(others.items()))
        os.kill(pid2, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    got = summary(store)
    assert (proc.returncode, got) == (0, {"counts": {"ok": 24}, "failed_never_started": 0, "running": 0}), err[-3000:]
    with ResultsStore(store, create=False) as st:
        attempts = {r["run_id"]: r["attempts"] for r in st.rows()}
    assert set(attempts) == {r.run_id for r in load_sweep(file).runs}
    assert min(attempts.values()) >= 1 and attempts[first] >= 1 and attempts[second] >= 1


@pytest.mark.slow
def test_a_run_that_always_kills_its_worker_fails_alone(tmp_path):
    file = write_sweep(tmp_path / "grid.yaml", axes={"data.k": [2, 3]}, seeds=8)
    runs = load_sweep(file).runs
    killer = runs[3].run_id
    store = tmp_path / "store"
    proc = sweep_proc(file, store, "--workers", 2, "--threads", 1, env={KILL_ENV: killer})
    out, err = finish(proc, 600)
    got = summary(store)
    assert (proc.returncode, got) == (1, {"counts": {"ok": 15, "failed": 1}, "failed_never_started": 0, "running": 0}), \
        err[-3000:]
    assert err.strip().splitlines()[-1].startswith("granularity: 1 of 16 runs failed"), err[-2000:]
    with ResultsStore(store, create=False) as st:
        rows = {r["run_id"]: r for r in st.rows()}
    assert rows[killer]["status"] == "failed" and rows[killer]["error"].startswith("WorkerCrashed")
    assert rows[killer]["attempts"] == 2  # retried once (the crash might have been a neighbour's), then failed
    assert f"failed {killer}" in out
    assert {r["attempts"] for rid, r in rows.items() if rid != killer} == {1}  # nothing else restarted


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_worker_or_fork_server(tmp_path):
    file = write_sweep(tmp_path / "grid.yaml", axes={"data.k": [2, 3]}, seeds=8)
    store = tmp_path / "store"
    proc = sweep_proc(file, store, "--workers", 2, "--threads", 1)
    try:
        workers = wait_for(lambda: set(running_workers(store, proc.pid).values()), 300, "a running run", proc)
        below = descendants(proc.pid)  # the fork server, its workers, the resource tracker
        assert workers < below and len(below) >= 2
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process alone, not its process group
        proc.wait(30)
        deadline = time.time() + 20
        while time.time() < deadline and any(alive(p) for p in below):
            time.sleep(0.1)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in below if alive(p)}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, so a failure leaks nothing
        except ProcessLookupError:
            pass
    assert not left, f"processes left 20 s after the sweep was killed: {left}"


def test_rows_left_running_under_dead_owners_are_failed_and_listed(tmp_path):
    sweep = expand({"kind": "simulate", "base": TINY_BASE, "seeds": 3})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with ResultsStore(tmp_path / "store") as st:
        st.register_sweep(sweep)
        lost, mine, pending = sweep.runs
        assert st.claim(lost, owner_id(gone.pid)) == "claimed" and st.claim(mine, owner_id()) == "claimed"
        assert _reconcile(st, {r.run_id: r for r in sweep.runs}) == [lost.run_id]
        rows = {r["run_id"]: r for r in st.rows()}
    assert (rows[lost.run_id]["status"], rows[lost.run_id]["error"]) == ("failed", LOST)
    assert rows[mine.run_id]["status"] == "running"  # a live owner keeps its claim
    assert rows[pending.run_id]["status"] == "pending"
