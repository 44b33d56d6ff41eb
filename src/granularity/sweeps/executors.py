"""Where sweep runs execute: local worker processes, a Ray cluster, or SLURM job arrays
(submitit). Local workers run :func:`~granularity.sweeps.worker.execute_run` (claim, run, record);
Ray tasks and SLURM jobs run :func:`~granularity.sweeps.worker.compute_run` (run only) and the
sweep process claims and records (:class:`DriverRecords`), so on a cluster the index has one
writer. One sweep file runs on any of them, with the same run ids.

This module picks one by name (:func:`make_executor`); the local executor lives in
:mod:`granularity.sweeps.local`, the Ray and SLURM executors in :mod:`granularity.sweeps.cluster`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.sweeps.cluster import RayExecutor, SlurmExecutor
from granularity.sweeps.local import LocalExecutor

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


__all__ = ["EXECUTORS", "make_executor"]
