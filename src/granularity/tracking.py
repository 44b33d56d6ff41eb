"""Optional experiment tracking: TensorBoard event files and an MLflow file store.

Off by default; each backend needs its extra (``pip install 'granularity[tensorboard]'``,
``'granularity[mlflow]'``). One :class:`Tracker` is one tracked run; it logs

* the same scalars as the run's ``metrics.jsonl`` (:func:`log_record`, one record at a time:
  tags ``<source or stage>/<name>``, step ``step`` or ``epoch``),
* the run's resolved config as params (flattened dotted keys) and ``config.json`` /
  ``result.json`` as artifacts (TensorBoard: text summaries).

Two ways in:

* **Replay** (what sweeps use): after a run is recorded, :func:`replay_run_folder` reads its
  folder (``metrics.jsonl``, ``config.json``, ``result.json``) and logs it. Nothing in the run
  itself changes, and runs on Ray or SLURM need no tracking package on the workers.
* **Live** (for the engine/simulator to call while a run trains): ``tracker =
  open_tracker(backends, track_dir, run_name)``, then :func:`log_record` for every record
  appended to ``metrics.jsonl``, then :func:`finish_run` with the run folder. Live and replay use
  the same conversion, so both log the same scalars.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.utils.config import flatten

BACKENDS = ("tensorboard", "mlflow")
STEP_KEYS = ("step", "epoch")


def parse_backends(spec: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    for n in names:
        if n not in BACKENDS:
            raise GranularityError(f"The '--track' option must list backends among {', '.join(BACKENDS)}. Got {n!r}.")
    if not names:
        raise GranularityError(f"The '--track' option must name at least one of {', '.join(BACKENDS)}.")
    return list(dict.fromkeys(names))


def record_scalars(rec: Mapping[str, Any], group_seed: bool = False) -> tuple[int | None, dict[str, float]]:
    """One ``metrics.jsonl`` record -> ``(step, {tag: value})``: numbers become scalars, string
    fields (``source``, ``stage``) and, with ``group_seed``, the seed prefix the tags."""
    step = next((int(rec[k]) for k in STEP_KEYS if isinstance(rec.get(k), (int, float))), None)
    prefix = [str(v) for k, v in rec.items() if isinstance(v, str)]
    if group_seed and "seed" in rec:
        prefix.insert(0, f"seed_{rec['seed']}")
    skip = set(STEP_KEYS) | {"seed"}
    scalars = {}
    for key, value in flatten({k: v for k, v in rec.items() if k not in skip}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        scalars["/".join([*prefix, key])] = float(value)
    return step, scalars


class _TensorBoard:
    def __init__(self, root: Path, experiment: str, run_name: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GranularityError(
                "Tracking with tensorboard needs the tensorboard package; pip install 'granularity[tensorboard]'."
            ) from None
        self.dir = root / "tensorboard" / experiment / run_name
        if self.dir.exists():  # a run logged again (a failed run retried): replace, do not append twice
            shutil.rmtree(self.dir)
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.writer.add_text("params", "\n".join(f"    {k} = {v!r}" for k, v in params.items()))

    def log_artifact(self, path: Path) -> None:
        self.writer.add_text(f"artifacts/{path.name}", "    " + path.read_text().replace("\n", "\n    "))

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class _MLflow:
    def __init__(self, root: Path, experiment: str, run_name: str, tags: Mapping[str, str]):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise GranularityError(
                "Tracking with mlflow needs the mlflow package; pip install 'granularity[mlflow]'."
            ) from None
        store = root / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        # MLflow >= 3.x refuses its file store unless opted in (it is in maintenance mode there but
        # the one backend that needs no database package and no server); a user's own setting wins
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=store.resolve().as_uri())
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        # a run logged again (a failed run retried): replace the earlier tracked run
        for old in self.client.search_runs([exp_id], filter_string=f"tags.`granularity.run` = '{run_name}'"):
            self.client.delete_run(old.info.run_id)
        self.run = self.client.create_run(exp_id, run_name=run_name, tags={"granularity.run": run_name, **tags})
        self.id = self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.id, metrics=batch[i:i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
        for i in range(0, len(batch), 100):  # MLflow's limit of params per batch
            self.client.log_batch(self.id, params=batch[i:i + 100])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.id, status="FINISHED" if status == "ok" else "FAILED")


class Tracker:
    """One tracked run on one or more backends (all calls go to each)."""

    def __init__(self, backends: str | Sequence[str], track_dir: str | Path, run_name: str,
                 experiment: str = "granularity", tags: Mapping[str, str] | None = None):
        root = Path(track_dir)
        self.backends: list[Any] = []
        for name in parse_backends(backends):
            if name == "tensorboard":
                self.backends.append(_TensorBoard(root, experiment, run_name))
            else:
                self.backends.append(_MLflow(root, experiment, run_name, dict(tags or {})))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if metrics:
            for b in self.backends:
                b.log_metrics(metrics, step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for b in self.backends:
            b.log_params(params)

    def log_artifact(self, path: str | Path) -> None:
        for b in self.backends:
            b.log_artifact(Path(path))

    def close(self, status: str = "ok") -> None:
        for b in self.backends:
            b.close(status)


def open_tracker(backends: str | Sequence[str] | None, track_dir: str | Path, run_name: str,
                 experiment: str = "granularity", tags: Mapping[str, str] | None = None) -> Tracker | None:
    """The engine's hook, part 1: a tracker, or None when tracking is off (``backends`` empty)."""
    if not backends:
        return None
    return Tracker(backends, track_dir, run_name, experiment, tags)


def log_record(tracker: Tracker | None, rec: Mapping[str, Any], group_seed: bool = False) -> None:
    """The engine's hook, part 2: log one record as appended to ``metrics.jsonl`` (no-op when
    tracking is off)."""
    if tracker is not None:
        step, scalars = record_scalars(rec, group_seed)
        tracker.log_metrics(scalars, step)


def finish_run(tracker: Tracker | None, folder: str | Path, status: str = "ok") -> None:
    """The engine's hook, part 3: the config as params, config/result as artifacts, then close."""
    if tracker is None:
        return
    folder = Path(folder)
    if (folder / "config.json").exists():
        from granularity.utils.io import read_json

        tracker.log_params(flatten(read_json(folder / "config.json")))
    for name in ("config.json", "result.json", "error.txt"):
        if (folder / name).exists():
            tracker.log_artifact(folder / name)
    tracker.close(status)


def replay_run_folder(tracker: Tracker, folder: str | Path, status: str = "ok") -> int:
    """Log a finished run folder (``metrics.jsonl`` lines, then :func:`finish_run`). Returns the
    number of records logged."""
    from granularity.utils.io import read_jsonl

    folder = Path(folder)
    records = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").exists() else []
    many_seeds = len({r.get("seed") for r in records}) > 1
    for rec in records:
        log_record(tracker, rec, group_seed=many_seeds)
    finish_run(tracker, folder, status)
    return len(records)


class SweepTracker:
    """One tracked run per sweep run (named by its run id, in an experiment named after the
    sweep), logged by the sweep process from the run folder once the run is recorded."""

    def __init__(self, backends: str | Sequence[str], track_dir: str | Path, sweep: str):
        self.backends, self.dir, self.sweep = parse_backends(backends), Path(track_dir), sweep
        # fail now (missing package) rather than after the first run
        for name in self.backends:
            module = "torch.utils.tensorboard" if name == "tensorboard" else "mlflow"
            try:
                __import__(module)
            except ImportError:
                raise GranularityError(
                    f"Tracking with {name} needs the {name} package; pip install 'granularity[{name}]'."
                ) from None

    def log_run(self, folder: Path, run: Any, status: str, error: str | None = None) -> None:
        tags = {"granularity.sweep": self.sweep, "granularity.kind": run.kind, "granularity.status": status,
                **{f"param.{k}": str(v) for k, v in run.params.items()}}
        if error:
            tags["granularity.error"] = error[:5000]
        tracker = Tracker(self.backends, self.dir, run.run_id, experiment=self.sweep, tags=tags)
        replay_run_folder(tracker, folder, status)

    def close(self) -> None:  # every tracked run is closed when logged
        pass


__all__ = ["Tracker", "SweepTracker", "open_tracker", "log_record", "finish_run", "replay_run_folder",
           "record_scalars", "parse_backends"]
