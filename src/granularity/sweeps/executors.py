"""Where sweep runs execute: local worker processes, a Ray cluster, or SLURM job arrays
(submitit). Local workers run :func:`~granularity.sweeps.worker.execute_run` (claim, run, record);
Ray tasks and SLURM jobs run :func:`~granularity.sweeps.worker.compute_run` (run only) and the
sweep process claims and records (:class:`DriverRecords`), so on a cluster the index has one
writer. One sweep file runs on any of them, with the same run ids."""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.sweeps.spec import RunSpec
from granularity.sweeps.store import HEARTBEAT_S, ResultsStore, owner_id
from granularity.sweeps.worker import Heartbeat, compute_run, record, serve

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


class DriverRecords:
    """The sweep process as the index's only writer for remote runs: it claims each run before
    sending it out (owner: this process), keeps the claims fresh from a thread with its own
    connection (one transaction per :data:`HEARTBEAT_S` for all of them), and records the
    outcomes the remote :func:`compute_run` returns. Remote workers write only their run folder."""

    def __init__(self, store: ResultsStore):
        self.store, self.owner = store, owner_id()
        self.crashes = _Crashes(store, owned=True)  # the sweep process fails a twice-crashed run itself
        self._beat = Heartbeat(store.root, lambda s: s.heartbeat_owner(self.owner), "sweep-claims-heartbeat")
        self._beat.start()

    def claim(self, run: RunSpec) -> dict[str, Any] | None:
        """None if claimed (send it out), else the runner's outcome: ``done`` or ``busy``, or
        ``ok`` for a run folder finished after an earlier sweep process died (a SLURM job that
        outlived it), adopted here without sending a job."""
        from granularity.sweeps.kinds import get_kind

        state = self.store.claim(run, self.owner)
        if state != "claimed":
            return {"run_id": run.run_id, "status": state, "error": None, "wall_time": None}
        kind = get_kind(run.kind)
        try:
            finished = kind.is_complete(self.store.run_dir(run.run_id), kind.build(run.config))
        except GranularityError:
            finished = False
        if finished:
            return self.record(compute_run(self.store.root, run))
        self.store.mark_started(run.run_id)  # counted when sent: a task lost with its node never reports back
        return None

    def record(self, outcome: dict[str, Any]) -> dict[str, Any]:
        return record(self.store, outcome)

    def settle(self, run: RunSpec, fetch: Callable[[], dict[str, Any]], died: type[BaseException],
               queue: list[RunSpec], log: Callable[[str], None], who: str, prefix: str = "") -> dict[str, Any] | None:
        """The outcome of a remote ``run`` that ended: recorded when ``fetch()`` returns it. When
        ``fetch`` raises ``died`` (``who``, the worker, node or job that ran it, died), a crash:
        the run goes back to the head of ``queue`` for one more try (returns None), or, when it
        crashed before, its failed outcome."""
        try:
            outcome = fetch()
        except died as exc:
            failed = self.crashes.handle(run, prefix + " ".join(str(exc).split())[:300])
            if failed is None:
                log(f"retrying {run.run_id}: {who} died")
                queue.insert(0, run)
            return failed
        return self.record(outcome)

    def close(self) -> None:
        self._beat.stop.set()
        self._beat.join(HEARTBEAT_S + 5)


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


def placement() -> dict[str, Any]:
    """Where this process runs: host, and under Ray its node and the GPU ids Ray gave it
    (Ray sets ``CUDA_VISIBLE_DEVICES`` to them, so a run's ``cuda`` device is its own GPU)."""
    import socket

    place: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                             "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME"):
        if key in os.environ:
            place[key] = os.environ[key]
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            place["ray_node_id"] = ctx.get_node_id()
            place["ray_gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    except ImportError:  # pragma: no cover - SLURM jobs without Ray
        pass
    return place


def remote_run(store_root: str, run: RunSpec, threads: int | None) -> dict[str, Any]:
    """What a Ray task or SLURM job executes: note where it ran (``placement.json`` in the run
    folder), then :func:`compute_run`. Writes only the run folder."""
    from pathlib import Path

    from granularity.utils.io import write_json

    out = Path(store_root) / "runs" / run.run_id
    out.mkdir(parents=True, exist_ok=True)
    place = placement()
    write_json(out / "placement.json", place)
    return {**compute_run(store_root, run, threads), "placement": place}


def _resources(cpus_per_run: float | None, gpus_per_run: float | None) -> None:
    for name, v in (("cpus-per-run", cpus_per_run), ("gpus-per-run", gpus_per_run)):
        if v is not None and not (v >= 0 and (name == "gpus-per-run" or v > 0)):
            raise GranularityError(f"The '--{name}' option must be a number > 0 (gpus: >= 0). Got {v} instead.")


def ray_address(address: str | None) -> str | None:
    """``--address``, else ``RAY_ADDRESS`` (as ``ray.init`` and ``ray submit`` read it), else None
    (start a local Ray instance)."""
    return address if address is not None else (os.environ.get("RAY_ADDRESS") or None)


class RayExecutor:
    """Ray tasks, one per run, each reserving ``cpus_per_run`` CPUs (default: ``threads``) and
    ``gpus_per_run`` GPUs (Ray sets each task's ``CUDA_VISIBLE_DEVICES`` to its own GPUs), so runs
    spread over the GPUs and nodes of the cluster. ``address`` None (and no ``RAY_ADDRESS``) or
    ``"local"`` starts a local Ray instance (stopped at the end); otherwise it joins that
    cluster. The store must be on a file system every node sees; the tasks write only their run
    folders and this process writes the index."""

    name = "ray"
    log: Callable[[str], None] = staticmethod(lambda _m: None)  # set by the runner

    def __init__(self, workers: int | None = None, threads: int | None = None, address: str | None = None,
                 cpus_per_run: float | None = None, gpus_per_run: float | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise GranularityError(
                "The 'ray' executor needs Ray; install it with pip install 'granularity[ray]' or use --executor local."
            ) from None
        self.address = ray_address(address)
        self.req_workers, self.req_threads = workers, threads
        plan_workers(workers, threads, 1)  # validates
        _resources(cpus_per_run, gpus_per_run)
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.workers, self.threads = workers, threads

    def describe(self) -> str:
        where = "local Ray instance" if self.address in (None, "local") else f"Ray cluster at {self.address}"
        gpus = f", {self.gpus_per_run:g} GPUs" if self.gpus_per_run else ""
        return (f"ray: {where}, {self.workers} runs at a time x {self.threads} torch threads "
                f"(each reserving {self._cpus():g} CPUs{gpus})")

    def _cpus(self) -> float:
        return self.cpus_per_run if self.cpus_per_run is not None else float(self.threads or 1)

    def _init(self) -> bool:
        """Connect to (or start) Ray; True if this call started it (and must stop it)."""
        import ray

        if ray.is_initialized():
            return False
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
        if self.address in (None, "local"):
            workers, threads = plan_workers(self.req_workers, self.req_threads, available_cores())
            kw["num_cpus"] = workers * threads
            ray.init(address="local", **kw)
            return True
        try:
            ray.init(address=self.address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise GranularityError(
                f"The '--address' option (or RAY_ADDRESS) must name a running Ray cluster (or 'local'). "
                f"Got {self.address!r} ({exc})."
            ) from None
        return True

    def _plan(self) -> None:
        """Runs at a time: --workers, else as many as the cluster's CPUs (and GPUs) hold."""
        import ray

        res = ray.cluster_resources()
        cpus = max(1, int(res.get("CPU", 1)))
        if self.cpus_per_run is None:
            self.workers, self.threads = plan_workers(self.req_workers, self.req_threads, cpus)
        else:
            self.threads = self.req_threads or max(1, int(self.cpus_per_run))
            self.workers = self.req_workers or max(1, int(cpus // self.cpus_per_run))
        if self.gpus_per_run and not self.req_workers:
            self.workers = max(1, min(self.workers, int(res.get("GPU", 0) // self.gpus_per_run)))

    def run(self, store: ResultsStore, runs: Sequence[RunSpec]) -> Iterator[dict[str, Any]]:
        import ray

        started = self._init()
        driver = DriverRecords(store)
        try:
            self._plan()
            res = ray.cluster_resources()
            self.log(self.describe() + f" ({int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs, "
                     f"{len(ray.nodes())} nodes in the cluster)")
            if self.gpus_per_run and res.get("GPU", 0) < self.gpus_per_run:
                raise GranularityError(
                    f"The '--gpus-per-run' option asks {self.gpus_per_run:g} GPUs per run; the Ray cluster has "
                    f"{res.get('GPU', 0):g}."
                )
            remote = ray.remote(remote_run).options(num_cpus=self._cpus(), num_gpus=self.gpus_per_run or 0,
                                                     max_retries=0)
            queue = list(runs)
            refs: dict[Any, RunSpec] = {}
            while queue or refs:
                while queue and len(refs) < self.workers:
                    run = queue.pop(0)
                    skip = driver.claim(run)
                    if skip is not None:
                        yield skip
                        continue
                    refs[remote.remote(str(store.root), run, self.threads)] = run
                if not refs:
                    continue
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    run = refs.pop(ref)
                    outcome = driver.settle(run, functools.partial(ray.get, ref), ray.exceptions.RayError, queue, self.log,
                                            "its Ray worker or node")
                    if outcome is not None:
                        yield outcome
        finally:
            driver.close()
            if started:
                ray.shutdown()


class SlurmExecutor:
    """SLURM job arrays through submitit: one array per sweep (at most ``workers`` tasks at a
    time, ``slurm_array_parallelism``), each task one run with ``cpus_per_run`` CPUs and
    ``gpus_per_run`` GPUs, ``time_min`` minutes, on ``partition``. The sweep process waits for
    the jobs and records their outcomes (the jobs write only their run folders); a job that dies
    (node failure, time limit, preemption) costs its run a crash, and the run is sent again once.
    Killed, the sweep resumes on the next ``granularity sweep``: finished runs are skipped, run
    folders finished after the sweep died are adopted without a job, the rest are resubmitted.
    ``cluster="local"`` runs the jobs as processes on this machine (submitit's local executor),
    for tests. submitit's files (pickles, logs) go under ``<store>/slurm/``."""

    name = "slurm"
    log: Callable[[str], None] = staticmethod(lambda _m: None)  # set by the runner
    CLUSTERS = ("slurm", "local")

    def __init__(self, workers: int | None = None, threads: int | None = None, *, partition: str | None = None,
                 time_min: int | None = None, cpus_per_run: float | None = None, gpus_per_run: float | None = None,
                 cluster: str = "slurm", slurm_params: dict[str, Any] | None = None):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise GranularityError(
                "The 'slurm' executor needs submitit; install it with pip install 'granularity[slurm]'."
            ) from None
        if cluster not in self.CLUSTERS:
            raise unknown_name("SLURM cluster", cluster, self.CLUSTERS)
        if cluster == "slurm":
            import shutil

            if shutil.which("sbatch") is None:
                raise GranularityError(
                    "The 'slurm' executor found no sbatch on this machine; run the sweep on a SLURM login node "
                    "(or use --slurm-cluster local to run its jobs here)."
                )
        plan_workers(workers, threads, 1)  # validates
        _resources(cpus_per_run, gpus_per_run)
        if gpus_per_run is not None and gpus_per_run != int(gpus_per_run):
            raise GranularityError(f"The '--gpus-per-run' option must be a whole number on SLURM. Got {gpus_per_run} instead.")
        if time_min is not None and time_min < 1:
            raise GranularityError(f"The '--time-min' option must be an int >= 1. Got {time_min} instead.")
        self.cluster, self.partition, self.time_min = cluster, partition, time_min or 60
        self.cpus = max(1, int(cpus_per_run or threads or 1))
        self.gpus = int(gpus_per_run or 0)
        self.threads = threads or self.cpus
        self.workers = workers or (available_cores() // self.cpus or 1 if cluster == "local" else 256)
        self.slurm_params = dict(slurm_params or {})

    def describe(self) -> str:
        where = "submitit local processes" if self.cluster == "local" else f"SLURM partition {self.partition or '(default)'}"
        return (f"slurm: {where}, job arrays of one run per task, {self.workers} at a time, {self.cpus} CPUs, "
                f"{self.gpus} GPUs, {self.time_min} min each")

    def _executor(self, store: ResultsStore, name: str):
        import submitit

        ex = submitit.AutoExecutor(folder=str(store.root / "slurm" / "%j"), cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.time_min, "cpus_per_task": self.cpus, "name": name,
                                  "slurm_array_parallelism": self.workers}
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.partition:
            params["slurm_partition"] = self.partition
        params.update({f"slurm_{k}": v for k, v in self.slurm_params.items()})
        try:
            ex.update_parameters(**params)
        except (ValueError, TypeError) as exc:
            raise GranularityError(f"The SLURM options were refused by submitit: {exc}") from None
        return ex

    def run(self, store: ResultsStore, runs: Sequence[RunSpec]) -> Iterator[dict[str, Any]]:
        import time

        self.log(self.describe())
        driver = DriverRecords(store)
        ex = self._executor(store, f"granularity-{store.root.name}")
        # submitit's local executor has no array throttle: it gets at most `workers` jobs at once
        slots = self.workers if self.cluster == "local" else len(runs)
        queue, jobs = list(runs), {}
        poll = 0.2 if self.cluster == "local" else 15.0
        try:
            while queue or jobs:
                batch: list[RunSpec] = []
                while queue and len(jobs) + len(batch) < slots:
                    run = queue.pop(0)
                    skip = driver.claim(run)
                    if skip is None:
                        batch.append(run)
                    else:
                        yield skip
                if batch:
                    root = str(store.root)
                    submitted = ex.map_array(remote_run, [root] * len(batch), batch, [self.threads] * len(batch))
                    self.log(f"submitted a job array of {len(batch)} runs ({submitted[0].job_id.split('_')[0]})")
                    jobs.update({job: run for job, run in zip(submitted, batch)})
                done = [job for job in jobs if job.done()]
                if not done:
                    time.sleep(poll)
                    continue
                for job in done:
                    run = jobs.pop(job)
                    # any exception: the job died (killed, time limit, node failure)
                    outcome = driver.settle(run, job.result, Exception, queue, self.log, f"its job {job.job_id}",
                                            prefix=f"SLURM job {job.job_id}: ")
                    if outcome is not None:
                        yield outcome
        finally:
            for job in jobs:  # interrupted: do not leave jobs computing runs nobody records
                try:
                    job.cancel(check=False)
                except Exception:  # noqa: BLE001
                    pass
            driver.close()


EXECUTORS: dict[str, Callable[..., Any]] = {"local": LocalExecutor, "ray": RayExecutor, "slurm": SlurmExecutor}


def make_executor(name: str, workers: int | None = None, threads: int | None = None, address: str | None = None,
                  **options: Any):
    """``options``: ``cpus_per_run``, ``gpus_per_run`` (ray, slurm); ``partition``, ``time_min``,
    ``cluster``, ``slurm_params`` (slurm). Options another executor takes are errors."""
    if name not in EXECUTORS:
        raise unknown_name("executor", name, EXECUTORS)
    given = {k: v for k, v in options.items() if v is not None and v != {}}
    allowed = EXECUTOR_OPTIONS.get(name, set())
    if address is not None and name != "ray":
        raise GranularityError(f"The '--address' option is for --executor ray. Got {address!r} with --executor {name}.")
    for key in given:
        if key not in allowed:
            opt = "--" + key.replace("_", "-").replace("cluster", "slurm-cluster").replace("slurm-params", "slurm-param")
            raise GranularityError(f"The '{opt}' option is not for --executor {name}; it is for "
                                   f"{' or '.join(n for n, a in (('ray', 'ray'), ('slurm', 'slurm')) if key in EXECUTOR_OPTIONS[a])}.")
    if name == "local":
        return LocalExecutor(workers, threads)
    if name == "ray":
        return RayExecutor(workers, threads, address, **given)
    return SlurmExecutor(workers, threads, **given)


EXECUTOR_OPTIONS = {"ray": {"cpus_per_run", "gpus_per_run"},
                    "slurm": {"cpus_per_run", "gpus_per_run", "partition", "time_min", "cluster", "slurm_params"}}


__all__ = ["LocalExecutor", "RayExecutor", "SlurmExecutor", "DriverRecords", "make_executor", "available_cores",
           "plan_workers"]
