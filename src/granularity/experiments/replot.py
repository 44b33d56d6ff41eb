"""Redraw a finished study's figures from its ``results.json`` alone: no run is recomputed and
no result file is rewritten (figures only), so a change of figure style reaches committed
results without touching their numbers (``granularity study --plot-only --out DIR``)."""

from __future__ import annotations

from pathlib import Path

from granularity.errors import GranularityError
from granularity.utils.io import read_json


def replot(out: Path | str) -> list[str]:
    """Redraw the figures of the study in ``out`` (a design, the levels study or the WordNet-gloss
    study, told apart by what its ``results.json`` holds); returns the PNG names written (each
    with its PDF and SVG).

    Examples
    --------
    >>> replot("docs/results/bridge")  # doctest: +SKIP
    ['paired_difference.png']
    """
    out = Path(out)
    summary = read_json(out / "results.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("table"), list) \
            or not all(isinstance(r, dict) for r in summary["table"]):
        raise GranularityError(f"{str(out / 'results.json')!r} is not the results file of a study (no 'table' list of rows).")
    try:
        return _draw(summary, out)
    except (KeyError, TypeError, StopIteration) as exc:  # a hand-edited or truncated file: one line, no traceback
        raise GranularityError(f"{str(out / 'results.json')!r} is not a complete results file of a study "
                               f"({type(exc).__name__}: {exc}); rerun the study to rewrite it.") from None


def _draw(summary: dict, out: Path) -> list[str]:
    """The producer's own plotting function(s) on the summary it wrote."""
    if "design" in summary:  # a design (bridge, bridge-phase, groupings, fewshot)
        from granularity.experiments.design_report import plot_design

        files = plot_design(summary, out)
        if summary["design"] == "bridge-phase":
            from granularity.experiments.phase_bridge import plot_bridge_phase

            files += plot_bridge_phase(summary, out, summary.get("simulator"))  # the grids the run stored
        return files
    if "hard_samples" in summary:  # the levels study
        from granularity.experiments.study import plot_study

        return plot_study(summary, out)
    if summary["table"] and all("level" in r for r in summary["table"]):  # the WordNet-gloss study
        from granularity.experiments.glosses import plot_u_curve

        return plot_u_curve(summary, out)
    raise GranularityError(f"{str(out / 'results.json')!r} is not the results file of a study "
                           "(expected a design, the levels study or the WordNet-gloss study).")
