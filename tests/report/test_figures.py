"""Figures: CI of error rates cut at [0, 1], no empty easy panel, legends outside the axes,
integer ticks on integer axes, PNG at 200 dpi with PDF and SVG beside it."""

import numpy as np
import pytest
from PIL import Image

from granularity.report.figures import plot_grouped_bars, plot_lines
from granularity.theory.plots import plot_errors
from granularity.utils.figures import clipped_band, clipped_yerr


@pytest.fixture
def figs(monkeypatch):
    """The figures each plot saved, looked at before they are closed."""
    import granularity.utils.figures as f

    seen = []
    real = f.save_figure

    def spy(fig, path):
        seen.append(fig)
        return real(fig, path)

    for mod in ("granularity.report.figures", "granularity.theory.plots"):
        monkeypatch.setattr(f"{mod}.save_figure", spy)
    return seen


def test_clipped_intervals_by_hand():
    yerr = clipped_yerr([0.02, 0.5, 0.97, np.nan], [0.05, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(yerr, [[0.02, 0.1, 0.1, 0.0], [0.05, 0.1, 0.03, 0.0]], atol=1e-12)
    lo, hi = clipped_band([0.02, 0.99], [0.05, np.nan])
    np.testing.assert_allclose(lo, [0.0, 0.99])
    np.testing.assert_allclose(hi, [0.07, 0.99])


def _result(easy):
    e = lambda m, c: {"mean": m, "ci": c, "n": 3}  # noqa: E731
    return {"name": "t", "seeds": [0, 1, 2], "errors": {
        src: {p: {"easy": e(easy, 0.0), "hard": e(h, 0.2)} for p in ("map", "probe")}
        for src, h in (("coarse", 0.4), ("fine", 0.05))}}


@pytest.mark.parametrize("easy, panels", [(0.0, 1), (0.01, 2)])
def test_errors_figure_has_an_easy_panel_only_when_easy_errors_exist(tmp_path, figs, easy, panels):
    path = plot_errors(_result(easy), tmp_path / "errors.png")
    (fig,) = figs
    axes = [ax for ax in fig.axes if ax.patches]
    assert len(axes) == panels
    for ax in axes:
        for line in ax.lines:  # error bar caps: never below 0
            assert np.nanmin(line.get_ydata()) >= 0.0
    # the legend sits right of the last axes, so it cannot cover a bar
    leg = axes[-1].get_legend()
    fig.canvas.draw()
    assert leg.get_window_extent().x0 >= axes[-1].get_window_extent().x1
    assert Image.open(path).info["dpi"] == pytest.approx((200, 200), abs=0.5)
    assert path.with_suffix(".pdf").stat().st_size > 0 and path.with_suffix(".svg").stat().st_size > 0


def test_lines_bands_clipped_and_integer_ticks(tmp_path, figs):
    plot_lines({"a": ([2, 3, 5], [0.01, 0.5, 0.98], [0.2, 0.1, 0.3])}, tmp_path / "l.png",
               xlabel="classes", ylabel="error", title="t")
    (fig,) = figs
    ax = fig.axes[0]
    band = next(c for c in ax.collections if hasattr(c, "get_paths") and c.get_paths()
                and len(c.get_paths()[0].vertices) > 4)
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() >= 0.0 and ys.max() <= 1.0
    ticks = ax.get_xticks()
    assert len(ticks) and np.all(ticks == np.round(ticks))


def test_grouped_bars_clip_and_write_three_formats(tmp_path, figs):
    path = plot_grouped_bars({"g": {"easy": (0.01, 0.05), "hard": (0.99, 0.05)}}, tmp_path / "b.png",
                             ylabel="error", title="t")
    (fig,) = figs
    caps = [y for line in fig.axes[0].lines for y in line.get_ydata()]
    assert min(caps) >= 0.0 and max(caps) <= 1.0
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".svg"}
