"""What a worker process does with one sweep run: claim it, run it, record the outcome.

A local executor's worker writes the index itself (one transaction per change,
:func:`execute_run`), so a finished run is recorded even if the sweep process that launched it is
killed a moment later. Ray tasks and SLURM jobs run :func:`compute_run`, which writes only the
run's folder: the sweep process records their outcomes (:func:`record`), so on a cluster the
index has a single writer. A worker of the local
executor (:func:`serve`) dies with its sweep process: a killed sweep leaves no process behind,
and its runs' claims become stale so that the next sweep takes them over.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import threading
import time
import traceback
from pathlib import Path
from collections.abc import Callable
from typing import Any

from granularity.sweeps.kinds import get_kind
from granularity.sweeps.locks import HEARTBEAT_S, _pid_alive, owner_id
from granularity.sweeps.spec import RunSpec
from granularity.sweeps.store import ResultsStore
from granularity.utils.io import read_json

# Test hook (fault injection): comma-separated run ids whose worker process SIGKILLs itself when
# it starts them, as the kernel's OOM killer would. Unset in normal use.
KILL_ENV = "GRANULARITY_TEST_KILL_WORKER"


class Heartbeat(threading.Thread):
    """Calls ``beat(store)`` every :data:`HEARTBEAT_S` until ``stop`` is set, on its own SQLite
    connection to the store at ``root`` (claims are refreshed this way while runs compute)."""

    def __init__(self, root: Path, beat: Callable[[ResultsStore], None], name: str):
        super().__init__(daemon=True, name=name)
        self.root, self.beat = root, beat
        self.stop = threading.Event()

    def run(self) -> None:
        store = None
        try:
            while not self.stop.wait(HEARTBEAT_S):
                store = store or ResultsStore(self.root, create=False)
                self.beat(store)
        except Exception:  # noqa: BLE001 - a missed heartbeat only makes the claims look stale later
            pass
        finally:
            if store is not None:
                store.close()


def set_threads(threads: int | None) -> None:
    """Intra-op threads of this worker (workers * threads <= the cores the sweep was given)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process (a reused worker)
            pass


def exit_with(pid: int) -> None:
    """SIGKILL this process as soon as process ``pid`` (the sweep that started it) exits.

    A watchdog thread, not ``PR_SET_PDEATHSIG``: workers are children of the fork server, not of
    the sweep process. The fork server (and multiprocessing's resource tracker) exit by themselves
    once no process holds their pipes, i.e. once the sweep and all its workers are gone. The
    thread waits on a pidfd (no polling) where Linux has them."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already
            fd = None
        except (AttributeError, OSError):  # no pidfds (not Linux >= 5.3): poll
            while _pid_alive(pid):
                time.sleep(1.0)
            fd = None
        else:
            select.select([fd], [], [])  # readable once the process has exited
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name=f"exit-with-{pid}").start()


def serve(conn: Any, threads: int | None, driver: int) -> None:
    """A local executor's worker process: run the runs the sweep sends over ``conn``, one at a time
    (``(store_root, run)``) or as a fused batch (``(store_root, [runs])``, :func:`execute_batch`;
    None to stop), answering each run with ``("ok", outcome)``, or a message with
    ``("error", exception)`` (an error of the store, not of a run: the sweep re-raises it)."""
    exit_with(driver)
    set_threads(threads)
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the sweep closed its end
                return
            if msg is None:
                return
            try:
                if isinstance(msg[1], list):  # a fused batch: one answer per run, each as it finishes
                    execute_batch(msg[0], msg[1], threads, lambda outcome: conn.send(("ok", outcome)))
                    continue
                reply: tuple[str, Any] = ("ok", execute_run(msg[0], msg[1], threads))
            except Exception as exc:  # noqa: BLE001 - handed to the sweep process
                reply = ("error", _picklable(exc))
            conn.send(reply)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the sweep reports it
        return


def _picklable(exc: BaseException) -> BaseException:
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - an exception that does not pickle
        return RuntimeError(one_line(exc))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def compute_run(store_root: str | Path, run: RunSpec, threads: int | None = None,
                on_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run (or adopt the finished folder of) one run, writing only its run folder, never the
    index; never raises for a failing run. What Ray tasks and SLURM jobs execute: the sweep
    process records the returned outcome (the only writer of the index; see docs/sweeps.md).

    Returns
    -------
    dict
        ``{"run_id", "status" ("ok"|"failed"), "error", "wall_time", "started" (the run function
        was called), "metrics", "hierarchy_hash", "versions"}``.
    """
    set_threads(threads)
    kind = get_kind(run.kind)
    out = Path(store_root) / "runs" / run.run_id
    t0 = time.perf_counter()
    started = False
    try:
        cfg = kind.build(run.config, where=f"run {run.run_id}")
        if kind.is_complete(out, cfg):
            # finished by a worker killed before it could record it: adopt, do not recompute
            result = read_json(out / "result.json")
        else:
            if on_start is not None:
                on_start()
            started = True
            if run.run_id in os.environ.get(KILL_ENV, "").split(","):
                os.kill(os.getpid(), signal.SIGKILL)  # the test hook: this worker dies as if OOM-killed
            result = kind.run(cfg, out)
        versions = read_json(out / "env.json") if (out / "env.json").exists() else None
        return {"run_id": run.run_id, "status": "ok", "error": None, "wall_time": time.perf_counter() - t0,
                "started": started, "metrics": kind.metrics(result), "hierarchy_hash": kind.hierarchy_hash(result),
                "versions": versions}
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded; the others go on
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass
        return {"run_id": run.run_id, "status": "failed", "error": one_line(exc), "wall_time": time.perf_counter() - t0,
                "started": started, "metrics": None, "hierarchy_hash": None, "versions": None}


def record(store: ResultsStore, outcome: dict[str, Any]) -> dict[str, Any]:
    """Write a :func:`compute_run` outcome into the index; returns the runner's short outcome."""
    store.finish(outcome["run_id"], outcome["status"], metrics=outcome["metrics"], error=outcome["error"],
                 hierarchy_hash=outcome["hierarchy_hash"], versions=outcome["versions"], wall_time=outcome["wall_time"])
    return {k: outcome[k] for k in ("run_id", "status", "error", "wall_time")}


def execute_run(store_root: str | Path, run: RunSpec, threads: int | None = None) -> dict[str, Any]:
    """Claim, run (or resume) and record one run (a local executor's worker writes the index
    itself); never raises for a failing run.

    Returns
    -------
    dict
        ``{"run_id", "status", "error", "wall_time"}`` with status ``ok``, ``failed``, ``done``
        (finished before, nothing done) or ``busy`` (another live worker holds it).
    """
    root = Path(store_root)
    store = ResultsStore(root, create=False)
    me = owner_id()
    try:
        state = store.claim(run, me)
        if state != "claimed":
            return {"run_id": run.run_id, "status": state, "error": None, "wall_time": None}
        beat = Heartbeat(root, lambda store: store.heartbeat(run.run_id, me), f"heartbeat-{run.run_id}")
        beat.start()
        try:
            outcome = compute_run(root, run, threads, on_start=lambda: store.mark_started(run.run_id))
        finally:
            beat.stop.set()
        return record(store, outcome)
    finally:
        store.close()


def execute_batch(store_root: str | Path, runs: list[RunSpec], threads: int | None,
                  send: Callable[[dict[str, Any]], None]) -> None:
    """Claim each of ``runs`` (a done or busy one is answered at once, as :func:`execute_run`
    does), keep every claim alive (one heartbeat thread), run the claimed ones as one fused group
    (:func:`~granularity.engine.fused_group.run_group`; one alone as :func:`execute_run` runs it)
    and ``send`` each run's outcome as soon as it is recorded, so a worker killed mid-batch loses
    no finished run. Each member thread records on its own connection to the index."""
    from granularity.engine.fused_group import run_group

    root = Path(store_root)
    me = owner_id()
    lock = threading.Lock()
    live: set[str] = set()
    claimed: list[RunSpec] = []
    with ResultsStore(root, create=False) as store:
        for run in runs:
            state = store.claim(run, me)
            if state == "claimed":
                claimed.append(run)
                live.add(run.run_id)
            else:
                send({"run_id": run.run_id, "status": state, "error": None, "wall_time": None})

    def answer(outcome: dict[str, Any]) -> None:
        with lock:
            live.discard(outcome["run_id"])
            send(outcome)

    def task(run: RunSpec) -> Callable[[], None]:
        def go() -> None:
            with ResultsStore(root, create=False) as own:
                outcome = compute_run(root, run, threads, on_start=lambda: own.mark_started(run.run_id))
                short = record(own, outcome)
            answer(short)
        return go

    def beat_all(st: ResultsStore) -> None:
        with lock:
            ids = sorted(live)
        for rid in ids:
            st.heartbeat(rid, me)

    if not claimed:
        return
    beat = Heartbeat(root, beat_all, f"heartbeat-{claimed[0].run_id}+{len(claimed) - 1}")
    beat.start()
    try:
        if len(claimed) == 1:
            task(claimed[0])()
            return
        errors = [e for _, e, _ in run_group([task(r) for r in claimed]) if e is not None]
    finally:
        beat.stop.set()
    if errors:  # an error of the store (a run's own failure is an outcome): the sweep re-raises it
        raise errors[0]
