"""Phase diagrams: hard-sample error of coarse vs fine pretraining over a grid of two config
fields. The grid is run by :func:`granularity.sweeps.phase.run_phase` (a two-axis sweep); each
cell is an ordinary ``simulate`` run folder under ``<out>/cells/`` holding all the seeds. This
module reads them: the diagram (``phase.json`` and ``phase.png``) is always rebuilt from those
stored results, so an interrupted grid resumes cell by cell and seed by seed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.theory.experiment import load_result
from granularity.theory.plots import plot_phase
from granularity.utils.io import read_json, write_json


def cell_name(xk: str, xv: Any, yk: str, yv: Any) -> str:
    safe = lambda s: re.sub(r"[^A-Za-z0-9.+-]", "_", str(s))  # noqa: E731
    return f"{safe(xk.split('.')[-1])}={safe(xv)}__{safe(yk.split('.')[-1])}={safe(yv)}"


def cell_dir(out: Path, xk: str, xv: Any, yk: str, yv: Any) -> Path:
    """A cell's folder, named by its axis keys."""
    return out / "cells" / cell_name(xk, xv, yk, yv)


def build_phase(out: str | Path) -> dict[str, Any]:
    """(Re)build ``phase.json`` and ``phase.png`` from the stored cell results."""
    out = Path(out)
    spec_path = out / "phase_spec.json"
    if not spec_path.exists():
        raise GranularityError(f"{str(out)!r} is not a phase-diagram folder (no phase_spec.json).")
    spec = read_json(spec_path)
    try:
        (xk, xs), (yk, ys), protocol = spec["x"], spec["y"], spec["protocol"]
        xk, yk, xs, ys, protocol = str(xk), str(yk), list(xs), list(ys), str(protocol)
    except (KeyError, TypeError, ValueError):
        raise GranularityError(
            f"{str(spec_path)!r} is malformed (needs x: [key, values], y: [key, values], protocol); "
            "it was not written by granularity phase or is corrupt."
        ) from None
    grids: dict[str, list[list[float]]] = {}
    cis: dict[str, list[list[float]]] = {}
    seeds = None
    for r, yv in enumerate(ys):
        for c, xv in enumerate(xs):
            cell = cell_dir(out, xk, xv, yk, yv)
            if not (cell / "result.json").exists():
                continue
            res = load_result(cell)
            seeds = len(res["seeds"])
            for src, protos in res["errors"].items():
                g = grids.setdefault(src, [[float("nan")] * len(xs) for _ in ys])
                e = cis.setdefault(src, [[float("nan")] * len(xs) for _ in ys])
                g[r][c] = protos[protocol]["hard"]["mean"]
                e[r][c] = protos[protocol]["hard"]["ci"]
    phase = {"x_key": xk, "x_values": xs, "y_key": yk, "y_values": ys, "protocol": protocol,
             "seeds": seeds, "grids": grids, "ci": cis}
    write_json(out / "phase.json", phase)
    if grids:
        plot_phase(phase, out / "phase.png")
    return phase


def is_phase_folder(path: str | Path) -> bool:
    return (Path(path) / "phase_spec.json").exists()


def summarise_phase(out: str | Path) -> dict[str, Any]:
    """What a report shows of a phase folder: ``{"phase", "spec", "cells", "missing"}``: the
    diagram (``phase.json``, rebuilt when absent), the spec, one entry per finished cell (its axis
    values, seeds and config) and the ``"key=v, key=v"`` labels of cells without a result."""
    out = Path(out)
    phase = read_json(out / "phase.json") if (out / "phase.json").exists() else build_phase(out)
    xk, yk = phase["x_key"], phase["y_key"]
    cells, missing = [], []
    for r, yv in enumerate(phase["y_values"]):
        for c, xv in enumerate(phase["x_values"]):
            cell = cell_dir(out, xk, xv, yk, yv)
            if (cell / "result.json").exists():
                cells.append({xk: xv, yk: yv, "seeds": load_result(cell).get("seeds"),
                              "config": read_json(cell / "config.json") if (cell / "config.json").exists() else None})
            if all(g[r][c] is None or g[r][c] != g[r][c] for g in phase["grids"].values()):
                missing.append(f"{xk}={xv}, {yk}={yv}")
    return {"phase": phase, "spec": read_json(out / "phase_spec.json"), "cells": cells, "missing": missing}


def format_phase(phase: dict[str, Any]) -> str:
    lines = [f"hard-sample error ({phase['protocol']}), rows {phase['y_key']}, columns {phase['x_key']}"]
    for src, grid in phase["grids"].items():
        lines.append(f"{src}:")
        lines.append("  " + " " * 10 + "".join(f"{str(v):>9}" for v in phase["x_values"]))
        for yv, row in zip(phase["y_values"], grid):
            # a cell without a result (failed or not run) is named, not printed as nan
            lines.append(f"  {str(yv):>10}" + "".join(f"{'missing':>9}" if v != v else f"{v:9.3f}" for v in row))
    return "\n".join(lines)
