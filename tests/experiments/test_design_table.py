"""The designs' tables: seed-level statistics first (paired t over seeds, the hierarchical
bootstrap), McNemar only as a secondary column conditional on the models, Holm over the
secondary rows; every committed design headline recomputed from its per-seed figures."""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from granularity.experiments.design_report import format_design_table, report_markdown, row_statistics, table_lines
from granularity.utils.io import read_json

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
DESIGNS = ("groupings", "bridge", "bridge-phase", "fewshot")


def _row(cell, primary, target, leaf, counts=None, metric="hard_error"):
    r = {"cell": cell, "grouping": "g", "rho": 1.0, "strength": 1.0, "transfer": "linear-n10", "protocol": "linear",
         "transfer_per_class": 10, "metric": metric, "n_seeds": len(target), "primary": primary,
         "per_seed": {"target": target, "leaf": leaf}}
    if counts is not None:
        r["per_seed_counts"] = counts
        a, b, n = np.sum(counts, axis=0)
        r["mcnemar"] = {"a_only": int(a), "b_only": int(b), "n": int(n), "p": 1e-30}
    return r


def test_design_table_rows_and_star():
    rows = row_statistics([_row("confusable", True, [0.5, 0.52, 0.49], [0.48, 0.5, 0.47]),
                           _row("natural4", False, [0.5, 0.52, 0.49], [0.5, 0.53, 0.47], metric="target_error")])
    lines = format_design_table({"table": rows}, "hard_error").splitlines()
    assert len(lines) == 2 and lines[0].startswith("cell") and "hard_error target" in lines[0]
    d = rows[0]["leaf_minus_target"]
    assert lines[1].startswith("* confusable") and f"{d['mean']:+.4f} [{d['t_lo']:+.4f}, {d['t_hi']:+.4f}]" in lines[1]


def test_row_statistics_against_scipy_and_holm_by_hand():
    rng = np.random.default_rng(0)
    t = [list(0.3 + rng.normal(0, 0.02, 3)) for _ in range(4)]
    leaf = [[v + delta + rng.normal(0, 0.01) for v in tt] for tt, delta in zip(t, (-0.05, 0.0, 0.02, -0.03))]
    counts = [[30, 10, 500], [25, 12, 500], [28, 9, 500]]
    rows = row_statistics([_row(f"c{i}", i == 0, t[i], leaf[i], counts if i == 1 else None) for i in range(4)])
    for r, tt, ll in zip(rows, t, leaf):
        ref = stats.ttest_rel(ll, tt)
        lo, hi = ref.confidence_interval(0.95)
        d = r["leaf_minus_target"]
        assert d["p_t"] == pytest.approx(ref.pvalue) and (d["t_lo"], d["t_hi"]) == pytest.approx((lo, hi))
        assert np.isnan(d["boot_lo"])  # no bootstrap over 3 seeds
    p = sorted((rows[i]["leaf_minus_target"]["p_t"], i) for i in (1, 2, 3))  # Holm by hand over the 3 secondary rows
    adj = np.minimum(1, np.maximum.accumulate([3 * p[0][0], 2 * p[1][0], p[2][0]]))
    for (_, i), a in zip(p, adj):
        assert rows[i]["p_holm"] == pytest.approx(a)
    assert rows[0]["p_holm"] is None  # the declared primary test is not adjusted
    hb = rows[1]["hierarchical_bootstrap"]
    assert hb["lo"] < hb["mean"] < hb["hi"] and "hierarchical_bootstrap" not in rows[2]
    text = "\n".join(table_lines(rows))
    assert "conditional on these models" in text and "] h |" in text and "- (3 seeds)" in text


def test_the_headline_is_the_seed_level_test():
    rows = row_statistics([_row("confusable", True, [0.5, 0.52, 0.49], [0.46, 0.5, 0.47], [[40, 10, 500]] * 3)])
    summary = {"design": "bridge", "config": {"seeds": [0, 1, 2]}, "primary": {"metric": "hard_error", "protocol": "linear",
               "transfer_per_class": 10, "cell": "confusable"}, "contrast": "leaf minus target", "table": rows,
               "compute_seconds": 1.0}
    md = report_markdown(summary)
    result = next(line for line in md.splitlines() if line.startswith("Result:"))
    d = rows[0]["leaf_minus_target"]
    assert "paired t over 3 seeds" in result and "McNemar" not in result and "1.0e-30" not in result
    assert f"[{d['t_lo']:+.4f}, {d['t_hi']:+.4f}]" in result


@pytest.mark.parametrize("design", DESIGNS)
def test_committed_design_headlines_recompute_from_their_per_seed_figures(design):
    """Every committed row's headline (paired t over seeds) and its Holm p from the per-seed
    figures in the folder's results.json, recomputed here with scipy alone."""
    s = read_json(RESULTS / design / "results.json")
    rows = s["table"]
    secondary = [r for r in rows if not r["primary"]]
    ps = []
    for r in rows:
        leaf, target = np.asarray(r["per_seed"]["leaf"]), np.asarray(r["per_seed"]["target"])
        assert len(leaf) == len(target) == r["n_seeds"] == len(s["config"]["seeds"])
        d = r["leaf_minus_target"]
        assert d["mean"] == pytest.approx(np.mean(leaf - target), abs=1e-12)
        ref = stats.ttest_rel(leaf, target)
        p = ref.pvalue
        if np.std(leaf - target) == 0:  # no spread: scipy gives nan, the tables 1 (equal) or 0 (a constant shift)
            p = 1.0 if np.all(leaf == target) else 0.0
            assert d["t_lo"] == d["t_hi"] == pytest.approx(d["mean"])
        else:
            assert (d["t_lo"], d["t_hi"]) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)
        assert d["p_t"] == pytest.approx(p, rel=1e-9)
        if r["n_seeds"] < 10 and "hierarchical_bootstrap" not in r:
            assert d["boot_lo"] is None or np.isnan(d["boot_lo"])  # no bootstrap over < 10 seeds
        if not r["primary"]:
            ps.append(p)
    order = np.argsort(ps, kind="stable")
    adj = np.minimum(1, np.maximum.accumulate((len(ps) - np.arange(len(ps))) * np.asarray(ps)[order]))
    for k, i in enumerate(order):
        assert secondary[i]["p_holm"] == pytest.approx(adj[k], rel=1e-9)
    page = (RESULTS / "where-fine-labels-help.md").read_text()
    assert "conditional on these models" in page and f"`{design}`" in page

