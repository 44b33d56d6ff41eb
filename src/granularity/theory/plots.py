"""Figures of the simulator, drawn from stored results (never from in-memory state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from granularity.theory.train import level_keys
from granularity.utils.figures import clipped_yerr, legend_outside, pyplot, save_figure
from granularity.utils.io import read_json
from granularity.utils.stats import mean_ci


def _protocols(errors: dict[str, Any]) -> list[str]:
    order = ["map", "probe", "finetune"]
    return sorted(next(iter(errors.values())), key=lambda p: order.index(p) if p in order else 99)


def _has_easy_errors(errors: dict[str, Any]) -> bool:
    """Whether any source and protocol has a non-zero mean error on easy samples (the model's
    easy samples are usually solved exactly, and then an easy panel would be empty)."""
    means = [e.get("easy", {}).get("mean") for protos in errors.values() for e in protos.values()]
    return any(m is not None and np.isfinite(m) and m != 0 for m in means)


def plot_errors(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: target error per protocol, coarse vs fine (and other) sources, on hard test
    samples, and on easy ones beside them when any easy error is non-zero; CI bars cut at [0, 1]."""
    plt = pyplot()
    errors = result["errors"]
    sources = list(errors)
    protos = _protocols(errors)
    kinds = ("easy", "hard") if _has_easy_errors(errors) else ("hard",)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.0 * len(kinds) + 1.6, 3.8), sharey=True, squeeze=False)
    width = 0.8 / max(1, len(sources))
    for ax, kind in zip(axes[0], kinds):
        for i, src in enumerate(sources):
            means = [errors[src].get(p, {}).get(kind, {}).get("mean", np.nan) for p in protos]
            cis = [errors[src].get(p, {}).get(kind, {}).get("ci", np.nan) for p in protos]
            cis = [np.nan if c is None else c for c in cis]
            means = [np.nan if m is None else m for m in means]
            x = np.arange(len(protos)) + (i - (len(sources) - 1) / 2) * width
            ax.bar(x, means, width, yerr=clipped_yerr(means, cis), capsize=3, label=f"pretrain: {src}")
        ax.set_xticks(np.arange(len(protos)), protos)
        ax.set_title(f"{kind} test samples" + ("" if len(kinds) == 2 else " (easy-sample error is 0 throughout)"))
        ax.set_xlabel("transfer protocol")
    axes[0][0].set_ylabel("target (coarse) test error")
    legend_outside(axes[0][-1])
    n = len(result.get("seeds", []))
    fig.suptitle(f"{result.get('name', '')}: coarse vs fine pretraining ({n} seeds, 95% CI)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_alignment(records: list[dict[str, Any]], path: Path) -> Path:
    """max_r <w_r, v> over training: common (level 1) vs leaf features, per pretraining source."""
    plt = pyplot()
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
    legend_outside(axes[0][-1])
    axes[0][0].set_ylabel("max over own-class neurons of <w, v>")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_simulation(out: str | Path) -> list[Path]:
    out = Path(out)
    result = read_json(out / "result.json")
    records = [read_json(out / "seeds" / f"seed_{s}.json") for s in result["seeds"]]
    (out / "figures").mkdir(exist_ok=True)
    return [plot_errors(result, out / "figures" / "errors.png"), plot_alignment(records, out / "figures" / "alignment.png")]


def source_label(src: str) -> str:
    """``coarse``/``fine`` as they are; a level number as ``level 2``."""
    return f"level {src}" if str(src).lstrip("-").isdigit() else str(src)


def phase_panels(phase: dict[str, Any]) -> list[dict[str, Any]]:
    """The heatmaps of a phase diagram, exactly as :func:`plot_phase` draws them: one per source
    (any naming: ``coarse``/``fine`` or level numbers), in stored order, then the difference of
    the coarsest and finest (``coarse - fine``, or the first minus the last source). NaN = a cell
    with no value (no finished run), drawn hatched grey."""
    grids = {str(k): np.asarray(v, dtype=float) for k, v in phase["grids"].items()}
    names = list(grids)
    panels = [{"title": f"hard error, {source_label(n)} pretraining", "source": n, "values": grids[n], "diff": False}
              for n in names]
    if len(names) >= 2:
        a, b = ("coarse", "fine") if {"coarse", "fine"} <= set(names) else (names[0], names[-1])
        panels.append({"title": f"{source_label(a)} - {source_label(b)}", "source": f"{a}-{b}",
                       "values": grids[a] - grids[b], "diff": True})
    return panels


def plot_phase(phase: dict[str, Any], path: Path) -> Path:
    """Heatmaps of hard-sample error per source and their difference (:func:`phase_panels`)
    over a 2-parameter grid; cells without a value are hatched grey and marked 'missing'."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    xs, ys = phase["x_values"], phase["y_values"]
    panels = phase_panels(phase)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.4 * max(1, len(panels)), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        arr, diff = panel["values"], panel["diff"]
        finite = np.abs(arr[np.isfinite(arr)])
        lim = max(1e-9, float(finite.max())) if diff and finite.size else 1.0
        cmap = plt.get_cmap("RdBu_r" if diff else "viridis").with_extremes(bad="#d9d9d9")
        im = ax.imshow(np.ma.masked_invalid(arr), origin="lower", aspect="auto", cmap=cmap,
                       vmin=-lim if diff else 0.0, vmax=lim)
        for (i, j), v in np.ndenumerate(arr):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="k" if diff else "w")
            else:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#808080", lw=0))
                ax.text(j, i, "missing", ha="center", va="center", fontsize=7, color="#404040")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
        ax.set_xlabel(phase["x_key"])
        ax.set_ylabel(phase["y_key"])
        ax.set_title(panel["title"], fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no finished cell", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.suptitle(f"phase diagram ({phase.get('protocol', 'map')}, {phase.get('seeds', '?')} seeds per cell)")
    fig.tight_layout()
    return save_figure(fig, path)
