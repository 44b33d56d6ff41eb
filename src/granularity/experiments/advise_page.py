"""The advice's HTML page: the answer, the granularity curve, the table and the rule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from granularity.utils.io import write_bytes_atomic


def plot_curve(advice: dict[str, Any], path: Path) -> dict[str, Any]:
    """Target test error (mean ± 95% CI over paired seeds) vs pretraining classes, log x; the
    baseline as a band, eliminated candidates hollow. Returns the plotted data (for tests)."""
    from granularity.utils.figures import clipped_yerr, legend_outside, pyplot, save_figure

    plt = pyplot()
    rows = [r for r in advice["rows"] if r["classes"] > 0]
    base = next(r for r in advice["rows"] if r["candidate"] == "target")
    drawn = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    b, bci = base["test_error"]["mean"], _ci(base["test_error"])
    ax.axhspan(max(b - bci, 0.0), b + bci, color="0.85", zorder=0, label="target labels (95% CI)")
    ax.axhline(b, color="0.4", lw=1)
    for r in rows:
        m, ci = r["test_error"]["mean"], _ci(r["test_error"])
        out = r["status"] == "eliminated"
        ax.errorbar([r["classes"]], [m], yerr=clipped_yerr([m], [ci]), fmt="o", mfc="white" if out else None,
                    color="0.55" if out else ("C3" if r["candidate"] == advice["decision"]["selected_on_validation"] else "C0"),
                    capsize=3)
        ax.annotate(r["candidate"], (r["classes"], m), textcoords="offset points", xytext=(4, 4), fontsize=7)
        drawn.append({"candidate": r["candidate"], "x": r["classes"], "y": m, "ci": ci})
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(sorted({p["x"] for p in drawn}))  # the candidates' class counts, as plain numbers
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pretraining classes (log scale)")
    ax.set_ylabel("target test error" if advice.get("metric", "error") == "error" else f"test {advice['metric_description']}")
    ax.set_title("Granularity curve (hollow: dropped by the race)", fontsize=10)
    legend_outside(ax)
    save_figure(fig, path)  # PNG at 200 dpi, PDF and SVG beside it
    return {"points": drawn, "baseline": {"y": b, "ci": bci}}


def _ci(s: dict[str, float]) -> float:
    return 0.0 if s.get("ci") is None or math.isnan(s["ci"]) else float(s["ci"])


def write_page(advice: dict[str, Any], out: Path) -> Path:
    from granularity.report.build import Figure, Section, render

    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    curve = figdir / "granularity_curve.png"
    has_runs = any(r["candidate"] == "target" for r in advice["rows"])
    if has_runs:
        plot_curve(advice, curve)
    header = ["candidate", "classes", "seeds", "status", "validation error", "test error",
              "test diff vs target [95% CI]", "worst-subclass error"]
    table = [header]
    for r in advice["rows"]:
        d = r.get("test_diff_vs_target")
        w = r.get("worst_subclass_error")
        table.append([r["candidate"], str(r["classes"]), str(r["seeds"]), r["status"], _fmt(r["val_error"]),
                      _fmt(r["test_error"]), f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "(baseline)",
                      _fmt(w) if w else "-"])
    sec = Section(title="Should I pretrain on finer labels?", source=str(out / "advice.json"))
    metric = advice.get("metric", "error")
    sec.notes += [advice["answer"], f"Metric (selected on the validation split, reported on the test split): {metric} "
                  f"= {advice.get('metric_description', 'target error')}.", f"Stopped: {advice['stopped_because']}. Runs: {advice['runs']}. "
                  f"Comparisons: {advice['comparisons_on_validation']} paired tests on the validation split "
                  "(racing), 1 confirmatory test on the test split (the selected candidate vs the target labels); "
                  "the other candidates' test figures are exploratory.", f"Decision rule: {advice['rule']}"]
    sec.tables.append(("Candidates", table))
    from granularity.experiments.advise import metric_table

    if metric_table(advice["rows"]):
        sec.tables.append(("Test error under every metric (exploratory)", metric_table(advice["rows"])))
    if has_runs:
        sec.figures.append(Figure(title="Granularity curve", path=curve,
                                  caption="Target test error vs number of pretraining classes; grey band: target labels.",
                                  details={"rounds": advice["rounds"], "eliminated": advice["eliminated"]}))
    page = out / "index.html"
    text = render([sec], out, "granularity advise")
    write_bytes_atomic(page, lambda fh: fh.write(text.encode("utf-8")))
    return page


def _fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f}" + ("" if math.isnan(s["ci"]) else f" ± {s['ci']:.4f}")
