"""The local executor: a pool of worker processes on this machine, each running
:func:`~granularity.sweeps.worker.execute_run` (claim, run, record) for one run at a time, or with
``fuse`` a batch of transfer runs that share a model and data as one fused group
(:func:`~granularity.sweeps.worker.execute_batch`); a worker that dies costs a crash only to the
runs it was computing. Also the defaults every executor plans with (:func:`available_cores`,
:func:`plan_workers`) and the crash rule (:class:`_Crashes`)."""

from __future__ import annotations

import json
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
from granularity.utils.io import read_json

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
    """One worker process (:func:`~granularity.sweeps.worker.serve`) and the runs it was sent and
    has not answered yet (one, or a fused batch): when the process dies, exactly those runs lost
    their worker."""

    def __init__(self, ctx: Any, threads: int):
        self.conn, child = ctx.Pipe()
        # not daemonic: a transfer run may start DataLoader worker processes of its own
        self.proc = ctx.Process(target=serve, args=(child, threads, os.getpid()), name="granularity-sweep-worker")
        self.proc.start()
        child.close()
        self.runs: dict[str, RunSpec] = {}

    def submit(self, root: str, batch: list[RunSpec]) -> None:
        """Send one run (``(root, run)``, as without fusion) or a batch (``(root, [runs])``)."""
        self.runs = {r.run_id: r for r in batch}
        try:
            self.conn.send((root, batch[0] if len(batch) == 1 else list(batch)))
        except OSError:  # it died idle: its sentinel tells, and the runs go back unclaimed
            pass

    def receive(self) -> dict[str, Any] | None:
        """The outcome of one of its runs, or None if the process died before answering."""
        try:
            tag, value = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            return None
        if tag == "error":
            self.runs = {}
            raise value
        self.runs.pop(value["run_id"], None)
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


def fuse_key(run: RunSpec) -> str | None:
    """What transfer runs must share to go to one worker as a fused batch (None: run alone): the
    data (set, root, options, subset sizes, rare classes), the model and the arithmetic (device,
    precision), and per stage what lockstep training needs (batch size, augmentation, label
    smoothing; the protocol). Seeds, label functions, learning rates and epochs may differ: the
    fused group trains each epoch of the compatible members as one and the others alone."""
    if run.kind != "transfer":
        return None
    c = run.config

    def stage(name: str, *extra: str) -> list[Any]:
        return [(c.get(name) or {}).get(k) for k in ("batch_size", "augment", "label_smoothing", *extra)]

    keys = ("dataset", "data_root", "data_options", "model", "train_size", "test_size", "val_size", "rare", "device",
            "bf16", "tf32", "deterministic", "eval_batch_size")
    return json.dumps([[c.get(k) for k in keys], stage("pretrain"), stage("transfer", "protocol")], sort_keys=True,
                      default=str)


def recorded_shapes(store: ResultsStore, keys: set[str]) -> dict[str, tuple[int, ...]]:
    """The input shape (``result.json``'s ``data.input_shape``) of a finished transfer run of the
    store for each of the fuse ``keys`` that has one: the data's shape without loading the data."""
    out: dict[str, tuple[int, ...]] = {}
    for row in store.rows():
        if len(out) == len(keys):
            break
        if row["status"] != "ok" or row["kind"] != "transfer":
            continue
        key = fuse_key(RunSpec(row["run_id"], "transfer", row["config"] or {}, {}))
        if key in keys and key not in out:
            try:
                out[key] = tuple(int(n) for n in read_json(store.run_dir(row["run_id"]) / "result.json")["data"]["input_shape"])
            except (GranularityError, KeyError, TypeError, ValueError):  # a folder of another version: no shape
                pass
    return out


def fused_batches(runs: Sequence[RunSpec], workers: int, budget: int | None,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> list[list[RunSpec]]:
    """``runs`` as the batches the workers take: runs of one :func:`fuse_key` in groups of up to K
    (:func:`~granularity.engine.fused_group.group_sizes`: K runs of a run's memory estimate fit in
    the budget's share of one worker, at most 16 on a CPU and 64 on a GPU, and no more than keeps
    every worker busy), the other runs one by one; runs of one key in a row, the keys in the order
    of their first run. The
    estimate is :func:`~granularity.engine.fused_group.run_bytes` at the input shape in ``shapes``
    (by fuse key, from :func:`recorded_shapes`), else its 256 MiB a run (the shape is known only
    once a worker has loaded the data)."""
    import torch

    from granularity.engine.fused_group import default_budget, group_sizes, run_bytes
    from granularity.sweeps.kinds import get_kind

    buckets: dict[Any, list[RunSpec]] = {}
    for r in runs:
        key = fuse_key(r)
        buckets.setdefault(key if key is not None else ("alone", r.run_id), []).append(r)
    share = (budget or default_budget()) // workers
    cap = 64 if torch.cuda.is_available() else 16
    batches: list[list[RunSpec]] = []
    for key, rs in buckets.items():
        if isinstance(key, tuple):
            batches.append(rs)
            continue
        per_run = run_bytes(get_kind("transfer").build(rs[0].config), (shapes or {}).get(key))
        for n in group_sizes(len(rs), per_run, share, max(1, min(cap, -(-len(rs) // workers)))):
            batches.append(rs[:n])
            rs = rs[n:]
    return batches


class LocalExecutor:
    """A pool of worker processes on this machine, each computing one run at a time (or, with
    ``fuse``, a batch of runs of one model as a fused group). A worker that dies (killed, out of
    memory) costs a crash to each run it had claimed and not finished; those are tried again one by
    one (so a run that kills its worker takes its batch down once at most), a fresh worker replaces
    it and the queued runs are unaffected.

    ``fuse_memory``: bytes all the workers' fused batches may use together (default
    :func:`~granularity.engine.fused_group.default_budget`)."""

    name = "local"
    log: Callable[[str], None] = staticmethod(lambda _m: None)  # set by the runner

    def __init__(self, workers: int | None = None, threads: int | None = None, fuse: bool = False,
                 fuse_memory: int | None = None):
        self.workers, self.threads = plan_workers(workers, threads, available_cores())
        if fuse_memory is not None and (isinstance(fuse_memory, bool) or not isinstance(fuse_memory, int) or fuse_memory < 1):
            from granularity.errors import param_error

            raise param_error("fuse_memory", "a number of bytes >= 1 (or None: the default)", fuse_memory)
        self.fuse, self.fuse_memory = bool(fuse), fuse_memory

    def describe(self) -> str:
        fused = ", runs of one model as fused batches" if self.fuse else ""
        return f"local: {self.workers} worker processes x {self.threads} torch threads{fused}"

    def run(self, store: ResultsStore, runs: Sequence[RunSpec]) -> Iterator[dict[str, Any]]:
        from multiprocessing.connection import wait

        from granularity.sweeps.kinds import get_kind

        self.log(self.describe())
        crashes = _Crashes(store)
        if self.fuse:
            shapes = recorded_shapes(store, {k for k in map(fuse_key, runs) if k is not None})
            queue = deque(fused_batches(runs, self.workers, self.fuse_memory, shapes))
        else:
            queue = deque([r] for r in runs)
        ctx = _worker_context(sorted({m for r in runs for m in get_kind(r.kind).preload}))
        pool: list[_Worker] = []
        finished = False
        self._idle_deaths = 0
        try:
            while queue or any(w.runs for w in pool):
                for w in pool:
                    if queue and not w.runs:
                        w.submit(str(store.root), queue.popleft())
                while queue and len(pool) < self.workers:
                    pool.append(_Worker(ctx, self.threads))
                    pool[-1].submit(str(store.root), queue.popleft())
                busy = {w.conn: w for w in pool if w.runs} | {w.proc.sentinel: w for w in pool if w.runs}
                for w in {busy[r] for r in wait(list(busy))}:
                    outcome = w.receive()
                    if outcome is not None:
                        self._idle_deaths = 0
                        yield outcome
                        continue
                    pool.remove(w)  # a fresh worker takes its place at the next submission
                    w.stop(wait=False)
                    again, failed = self._lost(store, w, crashes)
                    queue.extendleft([r] for r in reversed(again))  # tried again first, one by one
                    yield from failed
            finished = True
        finally:
            for w in pool:
                w.stop(wait=finished)

    def _lost(self, store: ResultsStore, w: _Worker, crashes: _Crashes) -> tuple[list[RunSpec], list[dict[str, Any]]]:
        """A dead worker's unanswered runs: a crash of each run it had claimed (its claim row names
        the worker and it is still running); the others (not claimed yet, or recorded before the
        answer went out) are submitted again without counting. Returns ``(runs to submit again,
        failed outcomes)``."""
        runs = list(w.runs.values())
        rows = {r["run_id"]: r for r in store.rows([r.run_id for r in runs])}
        mine = {rid for rid, row in rows.items() if row["status"] == "running" and row["owner"] == owner_id(w.proc.pid)}
        if not mine:
            self._idle_deaths += 1  # a worker that cannot even take a run must not be replaced forever
            if self._idle_deaths > 2 * self.workers + 2:
                raise RuntimeError(f"Worker processes keep dying before they start a run; the last one: {w.death()}.")
            return runs, []
        self._idle_deaths = 0
        again, failed = [], []
        for r in runs:
            outcome = crashes.handle(r, w.death()) if r.run_id in mine else None
            (again if outcome is None else failed).append(r if outcome is None else outcome)
        return again, failed


__all__ = ["LocalExecutor", "available_cores", "fuse_key", "fused_batches", "plan_workers", "recorded_shapes"]
