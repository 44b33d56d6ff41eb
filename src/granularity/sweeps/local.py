"""The local executor: a pool of worker processes on this machine, each running
:func:`~granularity.sweeps.worker.execute_run` (claim, run, record) for one run at a time; a
worker that dies costs a crash only to the run it was computing. Also the defaults every
executor plans with (:func:`available_cores`, :func:`plan_workers`) and the crash rule
(:class:`_Crashes`)."""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from granularity.errors import GranularityError
from granularity.sweeps.locks import owner_id
from granularity.sweeps.spec import RunSpec
from granularity.sweeps.store import ResultsStore
from granularity.sweeps.worker import serve

MAX_CRASHES = 2  # a run whose worker process dies this often is recorded as failed


def available_cores() -> int:
    """Cores this process may use (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def plan_workers(workers: int | None, threads: int | None, cores: int) -> tuple[int, int]:
    """Default: one worker per core; threads per worker so that workers * threads <= cores."""
    if workers is not None and workers < 1:
        raise GranularityError(f"The '--workers' option must be an int >= 1. Got {workers} instead.")
    if threads is not None and threads < 1:
        raise GranularityError(f"The '--threads' option must be an int >= 1. Got {threads} instead.")
    workers = workers or max(1, cores // (threads or 1))
    threads = threads or max(1, cores // workers)
    return workers, threads


class _Crashes:
    """Runs whose worker died: retried once (the crash may have been a neighbour's), then failed."""

    def __init__(self, store: ResultsStore, owned: bool = False):
        self.store = store
        self.owned = owned  # the sweep process holds the claims (Ray, SLURM): it fails the run itself
        self.count: dict[str, int] = {}

    def handle(self, run: RunSpec, why: str) -> dict[str, Any] | None:
        """Returns a failed outcome, or None if the run should be submitted again."""
        self.count[run.run_id] = self.count.get(run.run_id, 0) + 1
        if self.count[run.run_id] >= MAX_CRASHES:
            error = f"WorkerCrashed: {why}"
            if self.owned:
                self.store.finish(run.run_id, "failed", error=error)
            else:
                self.store.fail_if_orphaned(run.run_id, error)
            return {"run_id": run.run_id, "status": "failed", "error": error, "wall_time": None}
        return None


def _worker_context(preload: Sequence[str]):
    """Workers are forked from a fork server that imported torch and the experiment's modules
    once: a fresh interpreter (no inherited torch thread pools, unlike a plain fork of this
    process) without paying the imports (~5-10 s) in every worker."""
    import multiprocessing as mp

    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # pragma: no cover - no fork server on this platform
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(["granularity.sweeps.worker", *preload])
    return ctx


class _Worker:
    """One worker process (:func:`~granularity.sweeps.worker.serve`) and the run it is computing:
    when the process dies, exactly that run lost its worker."""

    def __init__(self, ctx: Any, threads: int):
        self.conn, child = ctx.Pipe()
        # not daemonic: a transfer run may start DataLoader worker processes of its own
        self.proc = ctx.Process(target=serve, args=(child, threads, os.getpid()), name="granularity-sweep-worker")
        self.proc.start()
        child.close()
        self.run: RunSpec | None = None

    def submit(self, root: str, run: RunSpec) -> None:
        self.run = run
        try:
            self.conn.send((root, run))
        except OSError:  # it died idle: its sentinel tells, and the run goes back unclaimed
            pass

    def receive(self) -> dict[str, Any] | None:
        """The outcome of its run, or None if the process died before answering."""
        try:
            tag, value = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            return None
        self.run = None
        if tag == "error":
            raise value
        return value

    def death(self) -> str:
        code = self.proc.exitcode
        if code is not None and code < 0:
            how = f"signal {signal.Signals(-code).name} (killed, or out of memory)"
        else:
            how = f"exit code {code}"
        return f"its worker process (pid {self.proc.pid}) died with {how}"

    def stop(self, wait: bool) -> None:
        try:
            if wait:
                self.conn.send(None)
                self.proc.join(10)
        except OSError:  # it is gone already
            pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class LocalExecutor:
    """A pool of worker processes on this machine, each computing one run at a time. A worker
    that dies (killed, out of memory) costs a crash only to the run it was computing; a fresh
    worker replaces it and the queued runs are unaffected."""

    name = "local"
    log: Callable[[str], None] = staticmethod(lambda _m: None)  # set by the runner

    def __init__(self, workers: int | None = None, threads: int | None = None):
        self.workers, self.threads = plan_workers(workers, threads, available_cores())

    def describe(self) -> str:
        return f"local: {self.workers} worker processes x {self.threads} torch threads"

    def run(self, store: ResultsStore, runs: Sequence[RunSpec]) -> Iterator[dict[str, Any]]:
        from multiprocessing.connection import wait

        from granularity.sweeps.kinds import get_kind

        self.log(self.describe())
        crashes = _Crashes(store)
        queue = deque(runs)
        ctx = _worker_context(sorted({m for r in runs for m in get_kind(r.kind).preload}))
        pool: list[_Worker] = []
        finished = False
        self._idle_deaths = 0
        try:
            while queue or any(w.run for w in pool):
                for w in pool:
                    if queue and w.run is None:
                        w.submit(str(store.root), queue.popleft())
                while queue and len(pool) < self.workers:
                    pool.append(_Worker(ctx, self.threads))
                    pool[-1].submit(str(store.root), queue.popleft())
                busy = {w.conn: w for w in pool if w.run} | {w.proc.sentinel: w for w in pool if w.run}
                for w in {busy[r] for r in wait(list(busy))}:
                    run = w.run
                    outcome = w.receive()
                    if outcome is not None:
                        self._idle_deaths = 0
                        yield outcome
                        continue
                    pool.remove(w)  # a fresh worker takes its place at the next submission
                    w.stop(wait=False)
                    outcome = self._lost(store, w, run, crashes)
                    if outcome is None:
                        queue.appendleft(run)
                    else:
                        yield outcome
            finished = True
        finally:
            for w in pool:
                w.stop(wait=finished)

    def _lost(self, store: ResultsStore, w: _Worker, run: RunSpec, crashes: _Crashes) -> dict[str, Any] | None:
        """A dead worker's run: a crash of that run if the worker died computing it (its claim row
        names the worker), else (it died before claiming it, or after recording it) resubmitted
        without counting. Returns a failed outcome, or None to submit the run again."""
        rows = store.rows([run.run_id])
        if rows and rows[0]["status"] == "running" and rows[0]["owner"] == owner_id(w.proc.pid):
            self._idle_deaths = 0
            return crashes.handle(run, w.death())
        self._idle_deaths += 1  # a worker that cannot even take a run must not be replaced forever
        if self._idle_deaths > 2 * self.workers + 2:
            raise RuntimeError(f"Worker processes keep dying before they start a run; the last one: {w.death()}.")
        return None


__all__ = ["LocalExecutor", "available_cores", "plan_workers"]
