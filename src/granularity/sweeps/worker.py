"""What a worker process does with one sweep run: claim it, run it, record the outcome.

The worker writes the index itself (one transaction per change), so a finished run is recorded
even if the sweep process that launched it is killed a moment later.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any

from granularity.sweeps.kinds import get_kind
from granularity.sweeps.spec import RunSpec
from granularity.sweeps.store import HEARTBEAT_S, ResultsStore, owner_id


class _Heartbeat(threading.Thread):
    """Refreshes the run's claim while it runs, on its own SQLite connection."""

    def __init__(self, root: Path, run_id: str, owner: str):
        super().__init__(daemon=True, name=f"heartbeat-{run_id}")
        self.root, self.run_id, self.owner = root, run_id, owner
        self.stop = threading.Event()

    def run(self) -> None:
        store = None
        try:
            while not self.stop.wait(HEARTBEAT_S):
                store = store or ResultsStore(self.root, create=False)
                store.heartbeat(self.run_id, self.owner)
        except Exception:  # noqa: BLE001 - a missed heartbeat only makes the claim look stale later
            pass
        finally:
            if store is not None:
                store.close()


def set_threads(threads: int | None) -> None:
    """Intra-op threads of this worker (workers * threads <= the cores the sweep was given)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process (a reused worker)
            pass


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def execute_run(store_root: str | Path, run: RunSpec, threads: int | None = None) -> dict[str, Any]:
    """Claim, run (or resume) and record one run; never raises for a failing run.

    Returns
    -------
    dict
        ``{"run_id", "status", "error", "wall_time"}`` with status ``ok``, ``failed``, ``done``
        (finished before, nothing done) or ``busy`` (another live worker holds it).
    """
    set_threads(threads)
    root = Path(store_root)
    kind = get_kind(run.kind)
    store = ResultsStore(root, create=False)
    me = owner_id()
    try:
        state = store.claim(run, me)
        if state != "claimed":
            return {"run_id": run.run_id, "status": state, "error": None, "wall_time": None}
        beat = _Heartbeat(root, run.run_id, me)
        beat.start()
        out = store.run_dir(run.run_id)
        t0 = time.perf_counter()
        try:
            cfg = kind.build(run.config, where=f"run {run.run_id}")
            if kind.is_complete(out, cfg):
                # finished by a worker killed before it could record it: adopt, do not recompute
                from granularity.utils.io import read_json

                result = read_json(out / "result.json")
            else:
                store.mark_started(run.run_id)
                result = kind.run(cfg, out)
            wall = time.perf_counter() - t0
            versions = None
            if (out / "env.json").exists():
                from granularity.utils.io import read_json

                versions = read_json(out / "env.json")
            store.finish(run.run_id, "ok", metrics=kind.metrics(result), hierarchy_hash=kind.hierarchy_hash(result),
                         versions=versions, wall_time=wall)
            return {"run_id": run.run_id, "status": "ok", "error": None, "wall_time": wall}
        except Exception as exc:  # noqa: BLE001 - a failing run is recorded; the others go on
            wall = time.perf_counter() - t0
            error = one_line(exc)
            try:
                out.mkdir(parents=True, exist_ok=True)
                (out / "error.txt").write_text(traceback.format_exc())
            except OSError:
                pass
            store.finish(run.run_id, "failed", error=error, wall_time=wall)
            return {"run_id": run.run_id, "status": "failed", "error": error, "wall_time": wall}
        finally:
            beat.stop.set()
    finally:
        store.close()
