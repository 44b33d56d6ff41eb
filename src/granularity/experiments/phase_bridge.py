"""The bridge-phase design beside the simulator's phase diagram on matching axes.

Real data: the paired difference in hard (cue-free) test error, leaf minus target pretraining,
over the cue's ``rho`` (fraction of training images with the cue) x ``strength`` grid. The
simulator (:mod:`granularity.theory.phase`, preset ``quick``): fine minus coarse pretraining
hard-sample error over ``data.train_hard_fraction`` = 1 - rho (training samples without the
common feature) x ``data.common_strength`` = the cue strength (relative to the fine features'
strength 1). The axes match in meaning and order, not in units: the simulator's strengths are
feature norms, the real cue's strength a pixel blend weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from granularity.utils.io import write_json

def real_grid(summary: dict[str, Any], protocol: str) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """(rhos, strengths, mean, p) of the leaf - target hard-error difference for ``protocol``."""
    rows = [r for r in summary["table"] if r["metric"] == "hard_error" and r["protocol"] == protocol]
    rhos = sorted({r["rho"] for r in rows})
    sts = sorted({r["strength"] for r in rows})
    mean = np.full((len(sts), len(rhos)), np.nan)
    p = np.full_like(mean, np.nan)
    for r in rows:
        i, j = sts.index(r["strength"]), rhos.index(r["rho"])
        mean[i, j] = r["leaf_minus_target"]["mean"]
        p[i, j] = r["leaf_minus_target"]["p_t"]
    return rhos, sts, mean, p


def simulator_configs(rhos: list[float], strengths: list[float], seeds: int = 3) -> list[tuple[str, float, float, Any]]:
    """``(cell folder, rho, strength, SimConfig)`` of the simulator grid: preset ``quick`` with
    ``train_hard_fraction = 1 - rho`` and ``common_strength = (strength, strength)``."""
    from granularity.theory.config import SimConfig
    from granularity.theory.presets import get_preset
    from granularity.utils.config import deep_merge

    base = get_preset("quick").config().to_dict()
    out = []
    for st in strengths:
        for rho in rhos:
            raw = deep_merge(base, {"seeds": seeds, "device": "cpu",
                                    "data": {"train_hard_fraction": round(1 - rho, 6), "common_strength": [st, st]}})
            out.append((f"rho{rho:g}-s{st:g}", rho, st, SimConfig.build(raw, where=f"simulator cell rho={rho:g}, strength={st:g}")))
    return out


def simulator_phase(rhos: list[float], strengths: list[float], out: Path, seeds: int = 3) -> dict[str, Any]:
    """The simulator's hard-sample errors on the matching grid (one ``simulate`` run folder per
    cell under ``out/cells``, resumable), per protocol: ``{protocol: {x_values (1 -
    train_hard_fraction), y_values (common_strength), grids: {coarse, fine}}}``."""
    from granularity.theory.experiment import load_result, simulate

    cells = simulator_configs(rhos, strengths, seeds)
    res = {}
    for name, _, _, cfg in cells:
        if not (out / "cells" / name / "result.json").exists():
            simulate(cfg, out / "cells" / name, progress=False)
        res[name] = load_result(out / "cells" / name)
    phases = {}
    for proto in ("map", "probe"):
        grids = {src: [[res[f"rho{r:g}-s{st:g}"]["errors"][src][proto]["hard"]["mean"] for r in rhos] for st in strengths]
                 for src in ("coarse", "fine")}
        phases[proto] = {"x_key": "1 - data.train_hard_fraction", "x_values": list(rhos), "y_key": "data.common_strength",
                         "y_values": list(strengths), "protocol": proto, "seeds": seeds, "grids": grids}
    return phases


def plot_bridge_phase(summary: dict[str, Any], out: Path, sim: dict[str, Any] | None) -> list[str]:
    """Heatmaps: real leaf - target hard error per protocol, and the simulator's fine - coarse."""
    from granularity.utils.figures import pyplot, save_figure

    plt = pyplot()

    protocols = [m for m in ("map", "probe") if any(r["protocol"] == m for r in summary["table"])]
    panels = []
    for m in protocols:
        rhos, sts, mean, p = real_grid(summary, m)
        panels.append((f"real: leaf - target, {m}", [f"{r:g}" for r in rhos], [f"{s:g}" for s in sts], mean, p, "rho", "cue strength"))
        if sim is not None and m in sim:
            ph = sim[m]
            g = ph["grids"]
            diff = np.asarray(g["fine"], dtype=float) - np.asarray(g["coarse"], dtype=float)
            panels.append((f"simulator: fine - coarse, {m}", [f"{float(v):g}" for v in ph["x_values"]],
                           [f"{float(v):g}" for v in ph["y_values"]], diff, None, "1 - train_hard_fraction", "common_strength"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, xs, ys, arr, p, xl, yl) in zip(axes[0], panels, strict=True):
        lim = max(1e-9, float(np.nanmax(np.abs(arr)))) if np.isfinite(arr).any() else 1.0
        im = ax.imshow(arr, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        for (i, j), v in np.ndenumerate(arr):
            star = "" if p is None or not np.isfinite(p[i, j]) else ("*" if p[i, j] < 0.05 else "")
            ax.text(j, i, f"{v:+.3f}{star}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("hard-sample error difference (< 0: fine pretraining better; * p < 0.05, paired t)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out / "phase_real_vs_simulator.png")
    return ["phase_real_vs_simulator.png"]


def add_simulator(summary: dict[str, Any], out: Path, run_simulator: bool) -> list[str]:
    """Run (or reload) the simulator grid and draw the side-by-side figure; records the
    simulator's grids in ``summary['simulator']``. Without ``run_simulator``, the grids the
    summary holds already (none in a run without the simulator; a finished run's in a replot)."""
    sim = summary.get("simulator")
    if run_simulator:
        rows = [r for r in summary["table"] if r["metric"] == "hard_error"]
        rhos, sts = sorted({r["rho"] for r in rows}), sorted({r["strength"] for r in rows})
        sim = simulator_phase(rhos, sts, out / "simulator")
        summary["simulator"] = sim
        write_json(out / "simulator" / "summary.json", summary["simulator"])
    return plot_bridge_phase(summary, out, sim)
