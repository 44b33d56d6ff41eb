"""Where sweep runs execute: local worker processes or a Ray cluster. Both call the same
:func:`~granularity.sweeps.worker.execute_run`, so one sweep file runs on either."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.sweeps.spec import RunSpec
from granularity.sweeps.store import ResultsStore
from granularity.sweeps.worker import execute_run, set_threads

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


class LocalExecutor:
    """A pool of worker processes on this machine."""

    name = "local"
    log: Callable[[str], None] = staticmethod(lambda _m: None)  # set by the runner

    def __init__(self, workers: int | None = None, threads: int | None = None):
        self.workers, self.threads = plan_workers(workers, threads, available_cores())

    def describe(self) -> str:
        return f"local: {self.workers} worker processes x {self.threads} torch threads"

    def run(self, store: ResultsStore, runs: Sequence[RunSpec]) -> Iterator[dict[str, Any]]:
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        from granularity.sweeps.kinds import get_kind
        from concurrent.futures.process import BrokenProcessPool

        crashes = _Crashes(store)
        pending = list(runs)
        self.log(self.describe())
        while pending:
            preload = sorted({m for r in pending for m in get_kind(r.kind).preload})
            pool = ProcessPoolExecutor(max_workers=min(self.workers, len(pending)), mp_context=_worker_context(preload),
                                       initializer=set_threads, initargs=(self.threads,))
            try:
                futures = {pool.submit(execute_run, str(store.root), r, self.threads): r for r in pending}
                pending = []
                live = set(futures)
                while live:
                    done, live = wait(live, return_when=FIRST_COMPLETED)
                    for fut in done:
                        run = futures[fut]
                        try:
                            yield fut.result()
                        except BrokenProcessPool:
                            outcome = crashes.handle(run, "a worker process died (killed or out of memory)")
                            if outcome is None:
                                pending.append(run)
                            else:
                                yield outcome
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)


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
