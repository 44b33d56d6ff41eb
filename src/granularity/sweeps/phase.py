"""A phase diagram's grid run as a two-axis sweep (:func:`granularity.sweeps.spec.grid`): every
cell a ``simulate`` run folder holding all the seeds, validated before any training starts; the
diagram itself is built from the stored cells by :mod:`granularity.theory.phase`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.sweeps.kinds import get_kind
from granularity.sweeps.spec import axis_values, check_axes, grid
from granularity.theory.experiment import simulate
from granularity.theory.phase import build_phase, cell_dir, cell_name
from granularity.utils.config import Config, parse_value
from granularity.utils.io import check_writable, write_json


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``"data.k=4,8,16"`` -> ``("data.k", [4, 8, 16])``; each value parsed once, like ``--set``
    values (``null`` -> None, ``1e-1`` -> 0.1)."""
    if "=" not in text:
        raise GranularityError(f"A phase axis must look like key=v1,v2,... (for example data.k=4,8,16). Got {text!r} instead.")
    key, values = text.split("=", 1)
    key = key.strip()
    items = [parse_value(v) for v in values.split(",") if v.strip()]
    if not key or not items:
        raise GranularityError(f"A phase axis needs a key and at least one value. Got {text!r} instead.")
    if any(not p for p in key.split(".")):
        raise GranularityError(f"A phase axis has an empty key part in {text!r}; use dotted names like data.k.")
    return key, items


def cell_configs(base: dict[str, Any], x: tuple[str, list], y: tuple[str, list]) -> list[tuple[str, Any, Any, Config]]:
    """The grid of a sweep with the two axes ``y`` (rows) and ``x`` (columns, fastest), expanded
    by the sweep machinery; every cell's config is validated before any training starts. A cell
    keeps all of the run's seeds (one ``simulate`` folder), unlike a sweep run (one seed)."""
    where = "the phase diagram"
    axes = [([key], [(v,) for v in axis_values(key, values, where)]) for key, values in (y, x)]
    check_axes(axes, where)
    kind = get_kind("simulate")
    cells = []
    for values, raw in grid(base, axes):
        xv, yv = values[x[0]], values[y[0]]
        cfg = kind.build(raw, where=f"phase cell {x[0]}={xv}, {y[0]}={yv}")
        cells.append((cell_name(x[0], xv, y[0], yv), xv, yv, cfg))
    return cells


def run_phase(base: dict[str, Any], x_axis: str, y_axis: str, out: str | Path, protocol: str = "map",
              progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    out = check_writable(out)
    x, y = parse_axis(x_axis), parse_axis(y_axis)
    cells = cell_configs(base, x, y)
    if protocol not in cells[0][3].transfer.protocols:
        raise GranularityError(
            f"The 'protocol' parameter must be one of the run's protocols {cells[0][3].transfer.protocols}. Got {protocol!r} instead."
        )
    write_json(out / "phase_spec.json", {"x": [x[0], x[1]], "y": [y[0], y[1]], "protocol": protocol, "base": base})
    for i, (_, xv, yv, cfg) in enumerate(cells):
        if log:
            log(f"[{i + 1}/{len(cells)}] {x[0]}={xv}, {y[0]}={yv}")
        simulate(cfg, cell_dir(out, x[0], xv, y[0], yv), progress=progress)
    return build_phase(out)
