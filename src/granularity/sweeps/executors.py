"""Where sweep runs execute: local worker processes or a Ray cluster. Both call the same
:func:`~granularity.sweeps.worker.execute_run`, so one sweep file runs on either."""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.sweeps.spec import RunSpec
from granularity.sweeps.store import ResultsStore, owner_id
from granularity.sweeps.worker import execute_run, serve

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

    def __init__(self, store: ResultsStore):
        self.store = store
        self.count: dict[str, int] = {}

    def handle(self, run: RunSpec, why: str) -> dict[str, Any] | None:
        """Returns a failed outcome, or None if the run should be submitted again."""
        self.count[run.run_id] = self.count.get(run.run_id, 0) + 1
        if self.count[run.run_id] >= MAX_CRASHES:
            error = f"WorkerCrashed: {why}"
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


class RayExecutor:
    """Ray tasks, one per run, each reserving ``threads`` CPUs. ``address`` None or ``"local"``
    starts a local Ray instance (stopped at the end); otherwise it joins that cluster. The store
    must be on a file system every node sees."""

    name = "ray"
    log: Callable[[str], None] = staticmethod(lambda _m: None)  # set by the runner

    def __init__(self, workers: int | None = None, threads: int | None = None, address: str | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise GranularityError(
                "The 'ray' executor needs Ray; install it with pip install 'granularity[ray]' or use --executor local."
            ) from None
        self.address = address
        self.req_workers, self.req_threads = workers, threads
        plan_workers(workers, threads, 1)  # validates
        self.workers, self.threads = workers, threads

    def describe(self) -> str:
        where = "local Ray instance" if self.address in (None, "local") else f"Ray cluster at {self.address}"
        return f"ray: {where}, {self.workers} runs at a time x {self.threads} torch threads"

    def run(self, store: ResultsStore, runs: Sequence[RunSpec]) -> Iterator[dict[str, Any]]:
        import ray

        started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
            if self.address in (None, "local"):
                cores = available_cores()
                workers, threads = plan_workers(self.req_workers, self.req_threads, cores)
                kw["num_cpus"] = workers * threads
                ray.init(address="local", **kw)
            else:
                try:
                    ray.init(address=self.address, **kw)
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    raise GranularityError(
                        f"The '--address' option must name a running Ray cluster (or 'local'). Got {self.address!r} ({exc})."
                    ) from None
            started = True
        try:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.workers, self.threads = plan_workers(self.req_workers, self.req_threads, cpus)
            self.log(self.describe() + f" ({cpus} CPUs in the cluster)")
            remote = ray.remote(num_cpus=self.threads, max_retries=0)(execute_run)
            crashes = _Crashes(store)
            queue = list(runs)
            refs: dict[Any, RunSpec] = {}
            while queue or refs:
                while queue and len(refs) < self.workers:
                    run = queue.pop(0)
                    refs[remote.remote(str(store.root), run, self.threads)] = run
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    run = refs.pop(ref)
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcome = crashes.handle(run, " ".join(str(exc).split())[:300])
                        if outcome is None:
                            queue.append(run)
                        else:
                            yield outcome
        finally:
            if started:
                ray.shutdown()


EXECUTORS: dict[str, Callable[..., Any]] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, workers: int | None = None, threads: int | None = None, address: str | None = None):
    if name not in EXECUTORS:
        raise unknown_name("executor", name, EXECUTORS)
    if name == "local":
        if address is not None:
            raise GranularityError(
                f"The '--address' option is for --executor ray. Got {address!r} with --executor local."
            )
        return LocalExecutor(workers, threads)
    return RayExecutor(workers, threads, address)


__all__ = ["LocalExecutor", "RayExecutor", "make_executor", "available_cores", "plan_workers"]
