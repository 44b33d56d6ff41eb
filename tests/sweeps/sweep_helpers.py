"""Tiny sweep files for the sweep tests (each run ~1 s once a worker is warm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fakes import TINY_SIM as TINY_BASE  # tests/ is on sys.path


def write_sweep(path: Path, axes: dict[str, Any] | None = None, seeds: Any = 2, **extra: Any) -> Path:
    spec: dict[str, Any] = {"kind": "simulate", "base": TINY_BASE, "axes": axes or {}, "seeds": seeds}
    spec.update(extra)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
