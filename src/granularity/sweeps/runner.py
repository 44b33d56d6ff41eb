"""Run a sweep into a results store: validate everything, skip finished runs, resume the rest."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.sweeps.executors import make_executor
from granularity.sweeps.local import LocalExecutor
from granularity.sweeps.locks import owner_alive
from granularity.sweeps.spec import RunSpec, Sweep, load_sweep
from granularity.sweeps.store import ResultsStore

POLL_S = 1.0  # how often to look at runs another sweep is computing
LOST = "WorkerCrashed: its worker process died and the sweep ended before the run was recorded"


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def run_sweep(
    sweep: Sweep | str | Path,
    out: str | Path | None = None,
    *,
    executor: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    retry_failed: bool = True,
    log: Callable[[str], None] | None = None,
    store_mode: str = "auto",
    executor_options: dict[str, Any] | None = None,
    tracker: Any = None,
    fuse: bool = False,
    fuse_memory: int | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of ``sweep`` into the store ``out``.

    Parameters
    ----------
    sweep : Sweep or path
        An expanded sweep or a sweep file; every run's config is validated before any starts.
    out : path, optional
        The results store (default ``runs/sweeps/<sweep name>``); several sweeps may share one.
    executor : {"local", "ray", "slurm"}
        Local worker processes, Ray tasks (``address``: None/"local" starts a local Ray unless
        ``RAY_ADDRESS`` is set) or SLURM job arrays (submitit).
    workers, threads : int, optional
        Runs at a time and torch threads per run; by default one run per core, 1 thread each.
    retry_failed : bool
        Run again runs recorded as failed (default); finished (``ok``) runs are never rerun.
    store_mode : {"auto", "wal", "shared"}
        The index's journal mode (``auto``: ``shared`` on a network file system); see
        :mod:`granularity.sweeps.store`.
    executor_options : dict, optional
        ``cpus_per_run``, ``gpus_per_run`` (ray, slurm; default: the sweep file's ``resources``),
        ``partition``, ``time_min``, ``cluster``, ``slurm_params`` (slurm).
    tracker : granularity.tracking.SweepTracker, optional
        Logs every recorded run (its folder's metrics, config and result) to TensorBoard/MLflow.
    fuse : bool
        Local executor only: transfer runs that share a model and data go to a worker as a fused
        batch (:func:`~granularity.sweeps.local.fused_batches`), each with its own folder, run id,
        ``result.json`` (``fused_with``) and checkpoints; other runs one at a time. With Ray or
        SLURM it is an error (one run per task there).
    fuse_memory : int, optional
        Bytes the fused batches of all workers may use together (default: a quarter of the free
        memory, at most 4 GiB on a CPU).

    Returns
    -------
    dict
        ``{"name", "store", "total", "counts", "ran", "skipped", "failures", "wall_time"}``.

    Examples
    --------
    >>> run_sweep("sweeps/phase.yaml", "runs/sweeps/phase", executor="ray")  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    ex = _executor(sw, executor, workers, threads, address, executor_options, fuse, fuse_memory)  # checks before the store
    ex.log = say
    out = Path(out) if out is not None else Path("runs") / "sweeps" / sw.name
    store = ResultsStore(out, store_mode=store_mode)
    try:
        store.register_sweep(sw)
        by_id = {r.run_id: r for r in sw.runs}
        rows = {r["run_id"]: r for r in store.rows(by_id)}
        skip = {"ok"} | (set() if retry_failed else {"failed"})
        todo = [r for r in sw.runs if rows[r.run_id]["status"] not in skip]
        skipped = len(sw.runs) - len(todo)
        say(f"sweep {sw.name!r}: {len(sw.runs)} runs, {skipped} already finished, {len(todo)} to run; store {out} ({store.mode} mode)")
        ran = _run_todo(ex, store, by_id, todo, skipped, len(sw.runs), say, tracker)
        for rid in _reconcile(store, by_id):
            say(f"failed {rid} {_fmt_params(by_id[rid].params)}: {LOST}")
        return {"name": sw.name, "store": str(out), "total": len(sw.runs), **_outcome(store, by_id), "ran": ran,
                "skipped": skipped, "wall_time": time.perf_counter() - t0}
    finally:
        store.close()


def _executor(sw: Sweep, executor: str, workers: int | None, threads: int | None, address: str | None,
              executor_options: dict[str, Any] | None, fuse: bool, fuse_memory: int | None) -> Any:
    """The executor, its options checked (ray/slurm: the sweep file's ``resources`` fill the
    unset ones); ``fuse`` is for the local executor only (``fuse_memory`` is ignored without it)."""
    options = dict(executor_options or {})
    if executor != "local":
        for key, value in sw.resources.items():
            if options.get(key) is None:
                options[key] = value
    if fuse and executor != "local":
        raise GranularityError(f"The '--fuse' option is for --executor local (Ray tasks and SLURM jobs run one run "
                               f"each). Got --executor {executor}; use --no-fuse.")
    ex = make_executor(executor, workers, threads, address, **options)
    return LocalExecutor(workers, threads, fuse=True, fuse_memory=fuse_memory) if fuse else ex


def _run_todo(ex: Any, store: ResultsStore, by_id: dict[str, RunSpec], todo: list[RunSpec], skipped: int,
              total: int, say: Callable[[str], None], tracker: Any) -> int:
    """Send ``todo`` to the executor ``ex``, logging each outcome (``[done/total]``); runs another
    sweep is computing (``busy``) are waited for and sent again if it did not finish them.
    Returns how many runs this sweep ran (``ok`` or ``failed``)."""
    ran = 0
    n_done = skipped
    waiting: list[RunSpec] = []  # runs another sweep is computing
    while todo or waiting:
        for outcome in ex.run(store, todo) if todo else ():
            status = outcome["status"]
            run = by_id[outcome["run_id"]]
            if status == "busy":
                waiting.append(run)
                continue
            n_done += 1
            ran += status in ("ok", "failed")
            wall = f" ({outcome['wall_time']:.1f} s)" if outcome.get("wall_time") is not None else ""
            err = f": {outcome['error']}" if outcome.get("error") else ""
            say(f"[{n_done}/{total}] {status} {run.run_id} {_fmt_params(run.params)}{wall}{err}")
            if tracker is not None and status in ("ok", "failed"):
                _track(tracker, store, run, outcome, say)
        todo = []
        if waiting:
            say(f"{len(waiting)} runs are being computed by another sweep; waiting for them")
            todo, waiting = _wait_for_others(store, waiting)
    return ran


def _track(tracker: Any, store: ResultsStore, run: RunSpec, outcome: dict[str, Any], say: Callable[[str], None]) -> None:
    """Log a recorded run; a tracking failure is reported, not raised: the run is recorded
    already and the sweep goes on (``--track`` again on a rerun does not relog finished runs)."""
    try:
        tracker.log_run(store.run_dir(run.run_id), run, outcome["status"], outcome.get("error"))
    except Exception as exc:  # noqa: BLE001
        from granularity.sweeps.worker import one_line

        say(f"tracking {run.run_id} failed: {one_line(exc)}")


def _outcome(store: ResultsStore, by_id: dict[str, RunSpec]) -> dict[str, Any]:
    """``{"counts": {status: n}, "failures": [{run_id, params, error}]}`` of the sweep's runs."""
    rows = {r["run_id"]: r for r in store.rows(by_id)}
    counts: dict[str, int] = {}
    for r in rows.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    failures = [
        {"run_id": rid, "params": by_id[rid].params, "error": rows[rid]["error"]}
        for rid in by_id if rows[rid]["status"] == "failed"
    ]
    return {"counts": counts, "failures": failures}


def _reconcile(store: ResultsStore, by_id: dict[str, RunSpec]) -> list[str]:
    """Record as failed the runs still ``running`` under a dead owner when the sweep ends (a
    worker killed after the executor gave up on it), so that no run is left looking busy and
    each is listed among the failures. Returns their ids."""
    lost = [r["run_id"] for r in store.rows(by_id)
            if r["status"] == "running" and not owner_alive(r["owner"], r["heartbeat"])]
    return [rid for rid in lost if store.fail_if_orphaned(rid, LOST)]


def _wait_for_others(store: ResultsStore, waiting: list[RunSpec]) -> tuple[list[RunSpec], list[RunSpec]]:
    """Wait for runs another sweep is computing. Returns ``(orphans, still_waiting)`` as soon as
    one of them lost its worker (to be run here), or ``([], [])`` when all have finished."""
    left = {r.run_id: r for r in waiting}
    while True:
        orphans = []
        for row in store.rows(left):
            if row["status"] in ("ok", "failed"):
                left.pop(row["run_id"])
            elif row["status"] == "pending" or not owner_alive(row["owner"], row["heartbeat"]):
                orphans.append(left.pop(row["run_id"]))
        if orphans or not left:
            return orphans, list(left.values())
        time.sleep(POLL_S)
