"""Report figures not drawn by the simulator's own plots: curves with CI bands, grouped bars.
Both show error rates: intervals are cut at [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from granularity.utils.figures import clipped_band, clipped_yerr, integer_ticks, legend_outside, pyplot, save_figure


def plot_lines(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], path: Path, *,
               xlabel: str, ylabel: str, title: str, logx: bool = False) -> Path:
    """One line per series: ``label -> (x, mean, ci)``, with a 95% CI band and markers."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    all_x: list[float] = []
    for label, (x, mean, ci) in series.items():
        order = np.argsort(np.asarray(x, dtype=float))
        x = np.asarray(x, dtype=float)[order]
        mean = np.asarray(mean, dtype=float)[order]
        ci = np.asarray(ci, dtype=float)[order]
        all_x += list(x)
        # bars: visible for lone points
        line = ax.errorbar(x, mean, yerr=clipped_yerr(mean, ci), marker="o", capsize=3, label=label)
        ax.fill_between(x, *clipped_band(mean, ci), alpha=0.15, color=line[0].get_color())
    if logx:
        ax.set_xscale("log")
    else:
        integer_ticks(ax.xaxis, all_x)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    legend_outside(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_grouped_bars(groups: Mapping[str, Mapping[str, tuple[float, float]]], path: Path, *, ylabel: str,
                      title: str) -> Path:
    """Bars per group (x) and metric (colour): ``group -> {metric: (mean, ci)}``."""
    plt = pyplot()
    names = list(groups)
    metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(names)), 3.8))
    width = 0.8 / max(1, len(metrics))
    for i, metric in enumerate(metrics):
        means = [groups[g].get(metric, (np.nan, np.nan))[0] for g in names]
        cis = [groups[g].get(metric, (np.nan, np.nan))[1] for g in names]
        x = np.arange(len(names)) + (i - (len(metrics) - 1) / 2) * width
        ax.bar(x, means, width, yerr=clipped_yerr(means, cis), capsize=3, label=metric)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    legend_outside(ax)
    fig.tight_layout()
    return save_figure(fig, path)
