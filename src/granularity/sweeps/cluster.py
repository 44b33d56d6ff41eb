"""The cluster executors: Ray tasks and SLURM job arrays (submitit). Their tasks and jobs run
:func:`remote_run` (:func:`~granularity.sweeps.worker.compute_run`, run only, writing only the
run folder) and the sweep process claims and records (:class:`DriverRecords`), so on a cluster
the index has one writer."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.sweeps.local import _Crashes, available_cores, plan_workers
from granularity.sweeps.locks import HEARTBEAT_S, owner_id
from granularity.sweeps.spec import RunSpec
from granularity.sweeps.store import ResultsStore
from granularity.sweeps.worker import Heartbeat, compute_run, record


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


__all__ = ["DriverRecords", "RayExecutor", "SlurmExecutor", "ray_address", "remote_run"]
