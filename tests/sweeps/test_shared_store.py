"""The store on shared file systems: journal mode chosen from the file system (no WAL on NFS,
Lustre, GPFS...), a lock directory around every write, several writers consistent, and readers
(`granularity results`) reading a store while a sweep writes it."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from granularity.errors import GranularityError
from granularity.sweeps.locks import DirLock, filesystem_type, resolve_store_mode
from granularity.sweeps.spec import expand
from granularity.sweeps.store import LOCK, ResultsStore

from sweep_helpers import TINY_BASE, write_sweep

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
fileserver:/export/home /home nfs4 rw,vers=4.2 0 0
10.0.0.5@o2ib:/scratch /scratch lustre rw 0 0
/dev/sdb1 /scratch/local ext4 rw 0 0
gpfs0 /gpfs gpfs rw 0 0
"""


@pytest.mark.parametrize("path,fs", [("/home/u/runs", "nfs4"), ("/scratch/x", "lustre"), ("/scratch/local/y", "ext4"),
                                     ("/gpfs/p", "gpfs"), ("/tmp/z", "ext4"), ("/homework", "ext4")])
def test_filesystem_type_takes_the_longest_mount_point(path, fs):
    assert filesystem_type(path, MOUNTS) == fs


def test_auto_mode_is_shared_on_network_file_systems(monkeypatch, tmp_path):
    import granularity.sweeps.locks as locks_mod

    monkeypatch.setattr(locks_mod, "filesystem_type", lambda p: "nfs4")
    assert resolve_store_mode("auto", tmp_path) == "shared"
    monkeypatch.setattr(locks_mod, "filesystem_type", lambda p: "ext4")
    assert resolve_store_mode("auto", tmp_path) == "wal"
    assert resolve_store_mode("shared", tmp_path) == "shared"
    with pytest.raises(GranularityError, match="'--store-mode' option must be one of auto, wal, shared. Got 'nfs'"):
        resolve_store_mode("nfs", tmp_path)


def test_shared_mode_is_a_rollback_journal_and_sticks_with_the_file(tmp_path):
    with ResultsStore(tmp_path, store_mode="shared") as st:
        assert st.mode == "shared" and st._db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (tmp_path / "index.sqlite-wal").exists()
    with ResultsStore(tmp_path, create=False) as st:  # a worker or reader: the file's mode, the lock
        assert st.mode == "shared" and st._lock is not None
    with ResultsStore(tmp_path, store_mode="wal") as st:  # switched back by a sweep on a local disk
        assert st.mode == "wal" and st._lock is None


def test_stale_lock_is_broken_live_lock_waits(tmp_path):
    lock = tmp_path / LOCK
    lock.mkdir()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))  # its holder died long ago
    with DirLock(lock, wait_s=5):
        assert lock.is_dir()
    assert not lock.exists()
    lock.mkdir()  # fresh: held by a live process
    with pytest.raises(GranularityError, match="lock .* has been held for over 0 s"):
        with DirLock(lock, wait_s=0.2):
            pass


def _writer(root, runs, barrier):
    barrier.wait()
    st = ResultsStore(root, create=False)
    for _ in range(3):
        for run in runs:
            if st.claim(run) == "claimed":
                st.mark_started(run.run_id)
                st.finish(run.run_id, "ok", metrics={"pid": os.getpid()}, wall_time=0.0)
    st.close()


def test_concurrent_writers_in_shared_mode(tmp_path):
    sw = expand({"name": "a", "kind": "simulate", "base": TINY_BASE, "axes": {"data.k": [2, 3, 4]}, "seeds": 5})
    with ResultsStore(tmp_path, store_mode="shared") as st:
        st.register_sweep(sw)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_writer, args=(tmp_path, sw.runs, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with ResultsStore(tmp_path, create=False) as st:
        rows = st.rows()
    assert len(rows) == 15 and {r["status"] for r in rows} == {"ok"}
    assert all(r["attempts"] == 1 for r in rows)  # no run computed twice
    assert not (tmp_path / LOCK).exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["wal", "shared"])
def test_results_read_while_a_sweep_writes(tmp_path, mode, cli):
    """Read the index (ResultsStore.frame and `granularity results`) again and again while a
    sweep of 8 runs writes it: never an error, never a torn row (ok without metrics or finish
    time), and finished runs never go back."""
    file = write_sweep(tmp_path / "s.yaml", axes={"data.k": [2, 3, 4, 5]}, seeds=2)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "granularity.cli.main", "sweep", str(file), "--out", str(store),
                             "--workers", "2", "--store-mode", mode, "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    reads, ok_before, seen_states = 0, set(), set()
    try:
        while proc.poll() is None or reads == 0:
            if not (store / "index.sqlite").exists():
                time.sleep(0.05)
                continue
            try:
                with ResultsStore(store, create=False) as st:
                    df = st.frame()
            except GranularityError as exc:  # the index file exists but its tables are not created yet
                assert "unreadable" in str(exc) or "not a results store" in str(exc)
                continue
            reads += 1
            if df.empty:
                continue
            seen_states |= set(df["status"])
            ok = df[df.status == "ok"]
            if len(ok):
                assert ok["fine.map.hard"].notna().all() and ok["wall_time"].notna().all()
            assert ok_before <= set(ok.run_id)
            ok_before = set(ok.run_id)
            code, out, err = cli("results", store, "--columns", "run_id,status")
            assert code == 0 and err == "", err
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert reads >= 5 and len(ok_before) == 8 and "running" in seen_states, (reads, seen_states)
