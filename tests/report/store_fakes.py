"""Results stores written without training: each run's folder gets the files a finished run
leaves (``config.json``, ``result.json`` in the kind's own format) and the index row is recorded
the way a worker records it (``kind.metrics(result)``), so reports and queries read exactly what a
real sweep would leave. Tests recompute their expected numbers from these run folders."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from granularity.sweeps.kinds import get_kind
from granularity.sweeps.spec import RunSpec, Sweep, expand
from granularity.sweeps.store import ResultsStore
from granularity.utils.io import write_json

from fakes import TINY_SIM  # tests/ is on sys.path

SIM_BASE = TINY_SIM  # the tiny simulator config of the sweep tests (never trained here)
TRANSFER_BASE = {"dataset": "fashion-mnist", "train_size": 600}


def sim_result(errors: Mapping[str, Mapping[str, Mapping[str, float]]], seed: int) -> dict[str, Any]:
    """A one-seed simulate result.json: ``errors[src][proto][easy|hard]`` -> value."""
    return {"name": "tiny", "seeds": [seed], "errors": {
        src: {proto: {kind: {"mean": v, "ci": 0.0, "n": 1, "values": [v]} for kind, v in kinds.items()}
              for proto, kinds in protos.items()} for src, protos in errors.items()}}


def transfer_result(run: RunSpec, target_error: float, num_source_classes: int, family: str) -> dict[str, Any]:
    return {"source": run.config["source"], "seed": run.seed, "target_error": target_error,
            "num_source_classes": num_source_classes, "source_family": family}


def record(store: Path, sweep: Sweep, outcome: Callable[[RunSpec], dict[str, Any] | None]) -> None:
    """Register ``sweep`` and finish each of its runs not finished yet: ``outcome(run)`` gives the
    run's result.json, or None for a failed run."""
    kind = get_kind(sweep.kind)
    with ResultsStore(store) as st:
        st.register_sweep(sweep)
        done = {r["run_id"] for r in st.rows([r.run_id for r in sweep.runs]) if r["status"] == "ok"}
        for run in sweep.runs:
            if run.run_id in done:
                continue
            st.claim(run)
            folder = st.run_dir(run.run_id)
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "config.json", run.config)
            result = outcome(run)
            if result is None:
                (folder / "error.txt").write_text("RuntimeError: injected failure\n")
                st.finish(run.run_id, "failed", error="RuntimeError: injected failure")
            else:
                write_json(folder / "result.json", result)
                st.finish(run.run_id, "ok", metrics=kind.metrics(result), hierarchy_hash=kind.hierarchy_hash(result))


def sim_sweep(name: str, axes: Mapping[str, Any], seeds: Any = 2, base: Mapping[str, Any] | None = None,
              **extra: Any) -> Sweep:
    b = json.loads(json.dumps(SIM_BASE))
    for key, value in (base or {}).items():
        b[key] = {**b.get(key, {}), **value} if isinstance(value, Mapping) else value
    return expand({"name": name, "kind": "simulate", "base": b, "axes": dict(axes), "seeds": seeds, **extra})
