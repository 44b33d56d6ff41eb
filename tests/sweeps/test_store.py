"""The SQLite index: claims, takeover of dead workers' runs, concurrent writers, queries."""

import multiprocessing as mp
import os
import sqlite3
import time

from granularity.sweeps.locks import owner_alive
from granularity.sweeps.spec import expand
from granularity.sweeps.store import ResultsStore

from sweep_helpers import TINY_BASE


def _sweep(name, ks, seeds=2):
    return expand({"name": name, "kind": "simulate", "base": TINY_BASE, "axes": {"data.k": ks}, "seeds": seeds})


def test_claim_finish_and_takeover(tmp_path):
    sw = _sweep("a", [2, 3])
    with ResultsStore(tmp_path) as st:
        st.register_sweep(sw)
        run = sw.runs[0]
        assert st.status_counts() == {"pending": 4}
        assert st.claim(run, "otherhost:1") == "claimed"
        assert st.claim(run) == "busy"  # a live claim (fresh heartbeat on another host)
        st._db.execute("UPDATE runs SET heartbeat=? WHERE run_id=?", (time.time() - 3600, run.run_id))
        assert st.claim(run) == "claimed"  # stale heartbeat: taken over
        st.mark_started(run.run_id)
        st.finish(run.run_id, "ok", metrics={"fine.map.hard": 0.25}, wall_time=1.5)
        assert st.claim(run) == "done"
        row = st.rows([run.run_id])[0]
        assert (row["status"], row["attempts"], row["metrics"], row["owner"]) == ("ok", 1, {"fine.map.hard": 0.25}, None)
        df = st.frame(sweep="a")
        assert list(df["data.k"]) == [2, 2, 3, 3] and df.loc[df.run_id == run.run_id, "fine.map.hard"].item() == 0.25
        assert st.sweeps()[0]["run_ids"] == [r.run_id for r in sw.runs]


def test_owner_alive():
    import socket

    me = f"{socket.gethostname()}:{os.getpid()}"
    assert owner_alive(me, time.time())
    assert not owner_alive(me, time.time() - 3600)  # stale
    assert not owner_alive(f"{socket.gethostname()}:999999999", time.time())  # no such process
    assert not owner_alive(None, time.time())


def _writer(root, runs, n_rounds, barrier):
    barrier.wait()
    st = ResultsStore(root)  # every process opens (and would create) the store at the same time
    for _ in range(n_rounds):
        for run in runs:
            if st.claim(run) == "claimed":
                st.mark_started(run.run_id)
                st.finish(run.run_id, "ok", metrics={"pid": os.getpid()}, wall_time=0.0)
    st.close()


def test_concurrent_writers_stay_consistent(tmp_path):
    a, b = _sweep("a", [2, 3, 4], seeds=4), _sweep("b", [3, 4, 5], seeds=4)  # overlapping grids
    ctx = mp.get_context("fork")  # the children touch only SQLite, no torch
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(tmp_path, sw.runs, 3, barrier)) for sw in (a, b, a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with ResultsStore(tmp_path) as st:
        st.register_sweep(a)
        st.register_sweep(b)
        rows = st.rows()
        assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
        # a finished run is never claimed again: exactly one start each
        assert {r["attempts"] for r in rows} == {1}
        assert {s["name"]: len(s["run_ids"]) for s in st.sweeps()} == {"a": 12, "b": 12}
    db = sqlite3.connect(tmp_path / "index.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_run_of_another_live_sweep_is_waited_for(tmp_path):
    import socket
    import threading

    from granularity.sweeps import runner

    sw = _sweep("a", [2], seeds=2)
    with ResultsStore(tmp_path) as st:
        st.register_sweep(sw)
        live, dead = sw.runs
        st.claim(live, "otherhost:1")  # another sweep on another machine, heartbeat fresh
        st.claim(dead, f"{socket.gethostname()}:999999999")  # a killed worker on this machine

        def other_sweep_finishes():
            with ResultsStore(tmp_path) as other:
                other.finish(live.run_id, "ok", metrics={}, wall_time=0.0)

        timer = threading.Timer(1.0, other_sweep_finishes)
        timer.start()
        t0 = time.time()
        # the dead worker's run comes back at once, to be rerun here; the live one is still awaited
        assert runner._wait_for_others(st, [live, dead]) == ([dead], [live])
        assert runner._wait_for_others(st, [live]) == ([], [])
        timer.join()
        assert time.time() - t0 >= 1.0 and st.rows([live.run_id])[0]["status"] == "ok"


def test_a_shared_run_has_each_sweeps_own_params(tmp_path):
    """A run registered first by sweep a (axis data.k only) keeps, for sweep b, b's axis values:
    from b's membership row, or (a store written before memberships had params) from the run's
    resolved config; never a's params."""
    a = expand({"name": "a", "kind": "simulate", "base": {**TINY_BASE, "data": {**TINY_BASE["data"], "sigma": 0.1}},
                "axes": {"data.k": [2, 3]}, "seeds": 1})
    b = expand({"name": "b", "kind": "simulate", "base": TINY_BASE, "axes": {"data.k": [2, 3], "data.sigma": [0.1, 0.2]},
                "seeds": 1})
    assert {r.run_id for r in a.runs} < {r.run_id for r in b.runs}
    with ResultsStore(tmp_path) as st:
        st.register_sweep(a)
        st.register_sweep(b)
        assert [r["params"] for r in st.rows(sweep="b")] == [r.params for r in b.runs]
        assert [r["params"] for r in st.rows(sweep="a")] == [r.params for r in a.runs]
        assert list(st.frame(sweep="b")["data.sigma"]) == [0.1, 0.2, 0.1, 0.2]
        st._db.execute("ALTER TABLE sweep_runs DROP COLUMN params")  # an older store
    with ResultsStore(tmp_path, create=False) as st:
        assert [r["params"] for r in st.rows(sweep="b")] == [r.params for r in b.runs]
    with ResultsStore(tmp_path) as st:  # opened for writing: the column is added back
        st.register_sweep(b)
        assert [r["params"] for r in st.rows(sweep="b")] == [r.params for r in b.runs]
