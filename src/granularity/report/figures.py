"""Report figures not drawn by the simulator's own plots: curves with CI bands, grouped bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], path: Path, *,
               xlabel: str, ylabel: str, title: str, logx: bool = False) -> Path:
    """One line per series: ``label -> (x, mean, ci)``, with a 95% CI band and markers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for label, (x, mean, ci) in series.items():
        order = np.argsort(np.asarray(x, dtype=float))
        x = np.asarray(x, dtype=float)[order]
        mean = np.asarray(mean, dtype=float)[order]
        ci = np.nan_to_num(np.asarray(ci, dtype=float)[order])
        line = ax.errorbar(x, mean, yerr=ci, marker="o", capsize=3, label=label)  # bars: visible for lone points
        ax.fill_between(x, mean - ci, mean + ci, alpha=0.15, color=line[0].get_color())
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grouped_bars(groups: Mapping[str, Mapping[str, tuple[float, float]]], path: Path, *, ylabel: str,
                      title: str) -> Path:
    """Bars per group (x) and metric (colour): ``group -> {metric: (mean, ci)}``."""
    plt = _plt()
    names = list(groups)
    metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(names)), 3.8))
    width = 0.8 / max(1, len(metrics))
    for i, metric in enumerate(metrics):
        means = [groups[g].get(metric, (np.nan, np.nan))[0] for g in names]
        cis = [np.nan_to_num(groups[g].get(metric, (np.nan, np.nan))[1]) for g in names]
        x = np.arange(len(names)) + (i - (len(metrics) - 1) / 2) * width
        ax.bar(x, means, width, yerr=cis, capsize=3, label=metric)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
