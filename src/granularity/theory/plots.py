"""Figures of the simulator, drawn from stored results (never from in-memory state)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from granularity.theory.train import level_keys
from granularity.utils.stats import mean_ci


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: easy/hard target error per protocol, coarse vs fine (and other) sources."""
    plt = _plt()
    errors = result["errors"]
    sources = list(errors)
    order = ["map", "probe", "finetune"]
    protos = sorted(next(iter(errors.values())), key=lambda p: order.index(p) if p in order else 99)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    width = 0.8 / max(1, len(sources))
    for ax, kind in zip(axes, ("easy", "hard")):
        for i, src in enumerate(sources):
            means = [errors[src].get(p, {}).get(kind, {}).get("mean", np.nan) for p in protos]
            cis = [errors[src].get(p, {}).get(kind, {}).get("ci", np.nan) for p in protos]
            cis = [0 if c is None or np.isnan(c) else c for c in cis]
            x = np.arange(len(protos)) + (i - (len(sources) - 1) / 2) * width
            ax.bar(x, means, width, yerr=cis, capsize=3, label=f"pretrain: {src}")
        ax.set_xticks(np.arange(len(protos)), protos)
        ax.set_title(f"{kind} test samples")
        ax.set_xlabel("transfer protocol")
    axes[0].set_ylabel("target (coarse) test error")
    axes[1].legend(fontsize=8)
    n = len(result.get("seeds", []))
    fig.suptitle(f"{result.get('name', '')}: coarse vs fine pretraining ({n} seeds, 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alignment(records: list[dict[str, Any]], path: Path) -> Path:
    """max_r <w_r, v> over training: common (level 1) vs leaf features, per pretraining source."""
    plt = _plt()
    sources = list(records[0]["alignment"])
    fig, axes = plt.subplots(1, len(sources), figsize=(4.6 * len(sources), 3.6), sharey=True, squeeze=False)
    for ax, src in zip(axes[0], sources):
        steps = np.asarray(records[0]["alignment"][src]["steps"])
        keys = level_keys(records[0]["alignment"][src])
        for lvl, key in keys:
            vals = np.asarray([r["alignment"][src][key] for r in records])  # (seeds, T)
            summ = [mean_ci(vals[:, t]) for t in range(vals.shape[1])]
            mean = np.array([s["mean"] for s in summ])
            ci = np.nan_to_num(np.array([s["ci"] for s in summ]))
            label = "common (level 1)" if lvl == 1 else f"level {lvl}" + (" (fine)" if lvl == keys[-1][0] else "")
            x = steps + 1  # log axis: step 0 (the initialisation) sits at 1
            ax.plot(x, mean, label=label)
            ax.fill_between(x, mean - ci, mean + ci, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("SGD step + 1")
        ax.set_title(f"pretrained on: {src}")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("max over own-class neurons of <w, v>")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_simulation(out: str | Path) -> list[Path]:
    out = Path(out)
    result = json.loads((out / "result.json").read_text())
    records = [json.loads((out / "seeds" / f"seed_{s}.json").read_text()) for s in result["seeds"]]
    (out / "figures").mkdir(exist_ok=True)
    return [plot_errors(result, out / "figures" / "errors.png"), plot_alignment(records, out / "figures" / "alignment.png")]


def plot_phase(phase: dict[str, Any], path: Path) -> Path:
    """Heatmaps of hard-sample error (coarse, fine, coarse - fine) over a 2-parameter grid."""
    plt = _plt()
    xs, ys = phase["x_values"], phase["y_values"]
    grids = phase["grids"]
    panels = [k for k in ("coarse", "fine") if k in grids]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.4 * (len(panels) + 1), 3.8), squeeze=False)
    arrays = [np.asarray(grids[k], dtype=float) for k in panels]
    if len(arrays) == 2:
        arrays.append(arrays[0] - arrays[1])
        titles = [f"hard error, {panels[0]} pretraining", f"hard error, {panels[1]} pretraining", "coarse - fine"]
    else:
        titles = [f"hard error, {p} pretraining" for p in panels]
    for ax, arr, title in zip(axes[0], arrays, titles):
        diff = title == "coarse - fine"
        lim = max(1e-9, float(np.nanmax(np.abs(arr)))) if diff else 1.0
        im = ax.imshow(arr, origin="lower", aspect="auto", cmap="RdBu_r" if diff else "viridis",
                       vmin=-lim if diff else 0.0, vmax=lim)
        for (i, j), v in np.ndenumerate(arr):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if not diff else "k")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
        ax.set_xlabel(phase["x_key"])
        ax.set_ylabel(phase["y_key"])
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"phase diagram ({phase.get('protocol', 'map')}, {phase.get('seeds', '?')} seeds per cell)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
