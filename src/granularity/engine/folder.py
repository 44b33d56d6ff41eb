"""The run folder of one transfer run: open (finished / resume / fresh), checkpoints, metrics,
the final files; every file written atomically. Only rank 0 (``is_main``) touches the disk.

``config.json`` (resolved config), ``env.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (model, optimiser, scheduler, epoch, metrics; every epoch), ``result.json``,
``predictions.npz``, and ``failed.json`` for a run that stopped with an error.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granularity.errors import GranularityError
from granularity.utils.io import (
    append_jsonl,
    check_writable,
    environment,
    read_json,
    write_bytes_atomic,
    write_json,
    write_npz,
)


# How often a run checkpoints, reports and evaluates on the way: a resume may change them (they change no number).
CADENCE_FIELDS = ("checkpoint_every_steps", "progress_every_s", "eval_every_epoch")


class RunFolder:
    """Files of one run in ``out`` for the config ``cfg_d`` (its ``to_dict()``)."""

    def __init__(self, out: Path, cfg_d: dict[str, Any], is_main: bool = True) -> None:
        self.out, self.cfg_d, self.is_main = Path(out), cfg_d, is_main
        self.ckpt_path = self.out / "checkpoint.pt"
        self.data: dict[str, Any] | None = None  # the data fingerprint, set by open()
        self.tracker: Any = None  # granularity.tracking.Tracker (TensorBoard/MLflow), or None

    def open(self, device: torch.device, world_size: int = 1, map_location: Any = None,
             data: dict[str, Any] | None = None) -> tuple[str, Any]:
        """Rank 0 only: ``("done", result)`` for a finished run, else ``("run", checkpoint or
        None)``. A folder holding another config's run, or a run on other data (``data``: the
        fingerprint, see :mod:`granularity.data.fingerprint`), is an error; a folder that failed
        before its first checkpoint is reused."""
        out = self.out
        self.data = data
        check_writable(out)
        started = self.ckpt_path.exists() or (out / "result.json").exists()
        if started and (out / "config.json").exists():
            old = read_json(out / "config.json")
            diff = sorted(k for k in set(old) | set(self.cfg_d) if old.get(k) != self.cfg_d.get(k))
            if set(diff) - set(CADENCE_FIELDS):  # a new cadence resumes the run (config.json updated)
                raise GranularityError(
                    f"Run folder {str(out)!r} holds a run with another config (differs in {', '.join(diff)}); "
                    "choose another --out or delete the folder."
                )
            if (out / "result.json").exists():
                result = read_json(out / "result.json")
                self._check_data(result.get("data"), "result.json")
                return "done", result
        write_json(out / "config.json", self.cfg_d)
        write_json(out / "env.json", {**environment(str(device)), "world_size": world_size})
        if not self.ckpt_path.exists():
            if (out / "metrics.jsonl").exists():
                (out / "metrics.jsonl").unlink()
            return "run", None
        ckpt = torch.load(self.ckpt_path, map_location=map_location or device, weights_only=False)
        self._check_data(ckpt.get("data"), "checkpoint.pt")
        # metrics.jsonl may hold a line of the epoch that was cut; rewrite it from the checkpoint
        write_bytes_atomic(out / "metrics.jsonl", lambda fh: None)
        for rec in ckpt.get("history", []):
            append_jsonl(out / "metrics.jsonl", rec)
        return "run", ckpt

    def _check_data(self, old: dict[str, Any] | None, where: str) -> None:
        """Refuse a folder whose run used other data (folders from before fingerprints pass)."""
        new = self.data
        if not old or not new or old.get("fingerprint") == new.get("fingerprint"):
            return
        from granularity.data.fingerprint import fingerprint_diff

        raise GranularityError(
            f"Run folder {str(self.out)!r} holds a run on other data ({where}: data set {old.get('name')!r}, "
            f"fingerprint {str(old.get('fingerprint'))[:12]}; now {new.get('name')!r}, {str(new.get('fingerprint'))[:12]}; "
            f"differs in {', '.join(fingerprint_diff(old, new))}); choose another --out or delete the folder."
        )

    def checkpoint(self, state: dict[str, Any]) -> None:
        """``checkpoint.pt`` (rank 0), written atomically, with the data fingerprint."""
        if not self.is_main:
            return
        buf = io.BytesIO()
        torch.save({**state, "data": self.data}, buf)
        write_bytes_atomic(self.ckpt_path, lambda fh: fh.write(buf.getvalue()))

    def log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            append_jsonl(self.out / "metrics.jsonl", record)
            if self.tracker is not None:
                from granularity.tracking import log_record

                log_record(self.tracker, record)

    def finish(self, result: dict[str, Any], predictions: dict[str, np.ndarray], keep_checkpoint: bool) -> None:
        """``predictions.npz`` then ``result.json`` (written last: marks the run done)."""
        if not self.is_main:
            return
        write_npz(self.out / "predictions.npz", **predictions)
        write_json(self.out / "result.json", result)
        (self.out / "failed.json").unlink(missing_ok=True)  # an earlier failure of this folder is superseded
        if self.ckpt_path.exists() and not keep_checkpoint:
            self.ckpt_path.unlink()
        self._close_tracker("ok")

    def _close_tracker(self, status: str) -> None:
        if self.tracker is not None:
            from granularity.tracking import finish_run

            finish_run(self.tracker, self.out, status)
            self.tracker = None

    def fail(self, reason: str) -> Path:
        """Record why the run stopped (``failed.json``); returns its path."""
        path = self.out / "failed.json"
        if self.is_main:
            write_json(path, {"error": reason, "config": self.cfg_d})
            self._close_tracker("failed")
        return path
