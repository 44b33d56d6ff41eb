"""What every figure of the project shares: a headless pyplot, error bars and bands of rates
clipped to [0, 1], integer ticks on integer axes, and print-ready files (PNG at 200 dpi with a
PDF and an SVG of the same figure next to it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

PNG_DPI = 200  # print resolution; the vector PDF/SVG beside it scale without loss
FORMATS = (".pdf", ".svg")  # written next to every PNG


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 200 dpi) and to the same name with .pdf and .svg; close it.
    ``bbox_inches="tight"`` keeps a legend placed outside the axes inside the file."""
    plt = pyplot()
    path = Path(path)
    try:
        fig.savefig(path, dpi=PNG_DPI, bbox_inches="tight")
        for suffix in FORMATS:
            fig.savefig(path.with_suffix(suffix), bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def clipped_yerr(mean: Sequence[float], ci: Sequence[float], lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Asymmetric error bars ``(2, n)`` of ``mean ± ci`` cut at ``[lo, hi]`` (an error rate's
    interval never leaves [0, 1]); NaN half-widths draw no bar."""
    mean = np.asarray(mean, dtype=float)
    ci = np.nan_to_num(np.asarray(ci, dtype=float))
    low = np.clip(mean - ci, lo, hi)
    high = np.clip(mean + ci, lo, hi)
    return np.maximum(np.nan_to_num(np.stack([mean - low, high - mean])), 0.0)


def clipped_band(mean: Sequence[float], ci: Sequence[float], lo: float | None = 0.0,
                 hi: float | None = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper edges of a ``mean ± ci`` band, cut at ``[lo, hi]`` (None: no cut)."""
    mean = np.asarray(mean, dtype=float)
    ci = np.nan_to_num(np.asarray(ci, dtype=float))
    return np.clip(mean - ci, lo, hi), np.clip(mean + ci, lo, hi)


def integer_ticks(axis, values: Sequence[float]) -> None:
    """Integer ticks only on an axis whose data are all integers (no 2.5 classes)."""
    from matplotlib.ticker import MaxNLocator

    vals = np.asarray(values, dtype=float)
    if vals.size and np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)):
        axis.set_major_locator(MaxNLocator(integer=True))


def legend_outside(ax, **kw) -> None:
    """The legend to the right of the axes, where it cannot cover a bar or a line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, **kw)
