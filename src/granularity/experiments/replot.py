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
    from granularity.sweeps.migrate import current  # the one reader of files in an older spelling

    out = Path(out)
    summary = current(read_json(out / "results.json"))
    if not isinstance(summary, dict) or not isinstance(summary.get("table"), list) \
            or not all(isinstance(r, dict) for r in summary["table"]):
        raise GranularityError(f"{str(out / 'results.json')!r} is not the results file of a study (no 'table' list of rows).")
    try:
        return _draw(summary, out)
    except (KeyError, TypeError, StopIteration) as exc:  # a hand-edited or truncated file: one line, no traceback
        raise GranularityError(f"{str(out / 'results.json')!r} is not a complete results file of a study "
                               f"({type(exc).__name__}: {exc}); rerun the study to rewrite it.") from None


def _draw(summary: dict, out: Path) -> list[str]:
    """The producer's own figures on the summary it wrote (no simulator run)."""
    from granularity.experiments.registry import design_of, get_design

    name = design_of(summary)
    if name is None:
        raise GranularityError(f"{str(out / 'results.json')!r} is not the results file of a study "
                               "(expected one written by a registered design: levels, a paired design or wordnet-glosses).")
    return get_design(name).figures(summary, out, False)
