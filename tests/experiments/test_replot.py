"""``granularity study --plot-only`` / ``experiments.registry.replot``: a finished study's figures are
redrawn from its ``results.json`` alone. What each figure draws is read back from the matplotlib
artists (the figure is caught at ``save_figure``) and compared with the numbers of tiny hand-made
results files; error bars of error rates are cut at [0, 1], a paired difference at [-1, 1]; the
results file stays byte-identical; PNG, PDF and SVG are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from granularity.errors import GranularityError
from granularity.experiments.registry import replot


def mci(mean, ci):
    return {"mean": mean, "ci": ci}


DESIGN = {"design": "bridge", "primary": {"metric": "hard_error"}, "figures": ["paired_difference.png"], "table": [
    {"metric": "hard_error", "cell": "c1", "transfer": "map", "n_seeds": 3,
     "leaf_minus_target": {"mean": -0.10, "t_lo": -0.25, "t_hi": 0.05}},
    {"metric": "hard_error", "cell": "c0", "transfer": "map", "n_seeds": 3,  # lower end beyond -1: cut there
     "leaf_minus_target": {"mean": -0.90, "t_lo": -1.30, "t_hi": -0.50}},
    {"metric": "easy_error", "cell": "c0", "transfer": "map", "n_seeds": 3,  # not the primary metric: not drawn
     "leaf_minus_target": {"mean": 0.30, "t_lo": 0.20, "t_hi": 0.40}},
]}


def levels_row(arm, family, classes, target, easy, hard):
    return {"arm": arm, "family": family, "num_source_classes": classes, "n_seeds": 3,
            "target_error": mci(*target), "easy_error": mci(*easy), "hard_error": mci(*hard)}


LEVELS = {"hard_samples": {"n": 7}, "table": [
    levels_row("target", "target", 4, (0.02, 0.05), (0.01, 0.03), (0.40, 0.10)),  # CI below 0: cut at 0
    levels_row("leaf", "hierarchy", 10, (0.10, 0.02), (0.05, 0.01), (0.95, 0.20)),  # CI above 1: cut at 1
    levels_row("random:10", "random", 10, (0.30, None), (0.20, 0.02), (0.70, 0.05)),  # no CI: no bar
]}

GLOSSES = {"table": [
    {"arm": "target", "family": "level", "level": 2, "num_source_classes": 11, "n_seeds": 5, "target_error": mci(0.43, 0.006)},
    {"arm": "level:1", "family": "level", "level": 1, "num_source_classes": 2, "n_seeds": 5, "target_error": mci(0.48, 0.007)},
    {"arm": "level:3", "family": "level", "level": 3, "num_source_classes": 53, "n_seeds": 5, "target_error": mci(0.01, 0.02)},
    {"arm": "random:53", "family": "random", "level": None, "num_source_classes": 53, "n_seeds": 5, "target_error": mci(0.51, 0.005)},
]}


@pytest.fixture
def caught(monkeypatch):
    """The figures handed to save_figure (kept open, not written), by file name."""
    import matplotlib.pyplot as plt

    figs = {}

    def fake_save(fig, path):
        figs[Path(path).name] = fig
        return Path(path)

    monkeypatch.setattr("granularity.utils.figures.save_figure", fake_save)
    yield figs
    for f in figs.values():
        plt.close(f)


def study_folder(tmp_path: Path, summary: dict) -> Path:
    (tmp_path / "results.json").write_text(json.dumps(summary, indent=2))
    return tmp_path


def bars(container):
    """(x, low, high) of each vertical error bar of an ErrorbarContainer."""
    segs = container.lines[2][0].get_segments()
    return [(s[0][0], min(s[0][1], s[1][1]), max(s[0][1], s[1][1])) for s in segs]


def test_design_draws_the_primary_rows_with_bars_cut_at_minus_one(tmp_path, caught):
    assert replot(study_folder(tmp_path, DESIGN)) == ["paired_difference.png"]
    ax = caught["paired_difference.png"].axes[0]
    line, _, (cols,) = ax.containers[0].lines
    # rows sorted by (cell, transfer): c0 then c1; the easy_error row is not drawn
    assert np.allclose(line.get_xdata(), [-0.90, -0.10]) and np.allclose(line.get_ydata(), [0, 1])
    segs = [sorted((s[0][0], s[1][0])) for s in cols.get_segments()]
    assert np.allclose(segs, [[-1.0, -0.50], [-0.25, 0.05]])


def test_levels_study_draws_the_results_with_rates_cut_at_0_and_1(tmp_path, caught):
    assert replot(study_folder(tmp_path, LEVELS)) == ["error_vs_classes.png", "easy_vs_hard.png"]
    ax = caught["easy_vs_hard.png"].axes[0]
    rows = LEVELS["table"]
    heights = {}
    for c in ax.containers:
        if hasattr(c, "patches"):
            heights[c.get_label()] = [p.get_height() for p in c.patches]
    assert heights == {"easy": [r["easy_error"]["mean"] for r in rows], "hard": [r["hard_error"]["mean"] for r in rows]}
    hard_bars = [b for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer" for b in bars(c)]
    lows_highs = sorted((round(lo, 9), round(hi, 9)) for _, lo, hi in hard_bars)
    want = []
    for r in rows:
        for key in ("easy_error", "hard_error"):
            m, c = r[key]["mean"], r[key]["ci"]
            want.append((round(max(m - c, 0.0), 9), round(min(m + c, 1.0), 9)))
    assert lows_highs == sorted(want)
    ax = caught["error_vs_classes.png"].axes[0]
    drawn = {c.get_label(): c for c in ax.containers}
    hier = drawn["hierarchy"]
    assert np.allclose(hier.lines[0].get_xdata(), [4, 10]) and np.allclose(hier.lines[0].get_ydata(), [0.02, 0.10])
    assert np.allclose([b[1:] for b in bars(hier)], [(0.0, 0.07), (0.08, 0.12)])  # 0.02 - 0.05 cut at 0
    assert np.allclose(drawn["random"].lines[0].get_ydata(), [0.30])


def test_glosses_study_draws_levels_and_families(tmp_path, caught):
    assert replot(study_folder(tmp_path, GLOSSES)) == ["u_curve.png"]
    ax = caught["u_curve.png"].axes[0]
    drawn = {c.get_label(): c for c in ax.containers}
    lv = drawn["WordNet level L"]
    assert np.allclose(lv.lines[0].get_xdata(), [2, 11, 53]) and np.allclose(lv.lines[0].get_ydata(), [0.48, 0.43, 0.01])
    assert np.allclose([b[1:] for b in bars(lv)], [(0.473, 0.487), (0.424, 0.436), (0.0, 0.03)])
    assert np.allclose(drawn["random labels"].lines[0].get_ydata(), [0.51])


def test_cli_plot_only_writes_figures_and_leaves_results_alone(tmp_path, cli):
    (tmp_path / "s").mkdir()
    folder = study_folder(tmp_path / "s", DESIGN)
    before = (folder / "results.json").read_bytes()
    code, out, err = cli("study", "--plot-only", "--out", folder)
    assert code == 0, err
    assert (folder / "results.json").read_bytes() == before
    for suffix in (".png", ".pdf", ".svg"):
        assert (folder / f"paired_difference{suffix}").stat().st_size > 0
    assert sorted(p.name for p in folder.iterdir()) == ["paired_difference.pdf", "paired_difference.png",
                                                         "paired_difference.svg", "results.json"]


def test_plot_only_errors_are_one_line_exit_2(tmp_path, cli):
    code, _, err = cli("study", "--plot-only")
    assert code == 2 and "--plot-only needs --out" in err
    code, _, err = cli("study", "--plot-only", "--out", tmp_path)
    assert code == 2 and err.strip().count("\n") == 0 and "results.json" in err and "does not exist" in err
    (tmp_path / "results.json").write_text(json.dumps({"table": [{"arm": "x"}]}))
    with pytest.raises(GranularityError, match="not the results file of a study"):
        replot(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"design": "bridge", "table": [{"metric": "hard_error"}]}))
    with pytest.raises(GranularityError, match="not a complete results file of a study .KeyError: 'primary'"):
        replot(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"table": [1, 2]}))
    with pytest.raises(GranularityError, match="no 'table' list of rows"):
        replot(tmp_path)
