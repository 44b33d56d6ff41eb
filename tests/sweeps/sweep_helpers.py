"""Tiny sweep files for the sweep tests (each run ~1 s once a worker is warm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# the TINY simulator config of tests/theory/test_experiment.py
TINY_BASE = {
    "name": "tiny",
    "data": {"d": 32, "P": 6, "k": 3},
    "model": {"m": 4},
    "train": {"n_train": 120, "steps": 40, "batch_size": 32, "log_points": 5},
    "transfer": {"n_test": 100, "probe_steps": 20, "finetune_steps": 20},
}


def write_sweep(path: Path, axes: dict[str, Any] | None = None, seeds: Any = 2, **extra: Any) -> Path:
    spec: dict[str, Any] = {"kind": "simulate", "base": TINY_BASE, "axes": axes or {}, "seeds": seeds}
    spec.update(extra)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
