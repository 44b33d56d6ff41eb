"""The registered study designs: ``granularity study --design NAME`` (see
:mod:`granularity.experiments.runner` for what a design is and how every one is run).

- ``levels`` (default): every label function of the hierarchy (:mod:`.study`).
- ``bridge``, ``bridge-phase``, ``groupings``, ``fewshot``: target and leaf pretraining paired
  by seed (:mod:`.designs`, reported by :mod:`.design_report`; the bridge phase diagram beside
  the simulator's, :mod:`.phase_bridge`).
- ``wordnet-glosses``: the granularity U-curve over WordNet levels on text (:mod:`.glosses`);
  the default design of the data set ``wordnet-glosses``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from granularity.experiments import design_report, designs, glosses, phase_bridge, study
from granularity.experiments.runner import Design, run_design


def _levels() -> Design:
    return Design(
        name="levels", help="every label function of the hierarchy (the original study), easy vs hard test images, rare subclasses",
        contrast="each arm minus the target arm (the baseline), paired by seed: target error, then hard-sample error",
        config=study.StudyConfig.build, presets={"quick": study.QUICK, "full": study.FULL},
        flags=study.FLAGS, data_name=lambda c: c.run.dataset,
        load=study.load, plan=study.plan, summarise=study.summarise, csv_columns=study.CSV_COLUMNS,
        figures=lambda s, out, simulate: study.plot_study(s, out), describe=study.describe, dry_run=study.dry_run,
        seconds_key="seconds")


PAIRED_HELP = {
    "bridge": "a planted cue per coarse class, easy (cued) vs hard (cue-free) test images",
    "bridge-phase": "the bridge over a rho x cue-strength grid, beside the simulator's phase diagram",
    "groupings": "natural4 / natural2 / random / confusable targets",
    "fewshot": "10 / 100 / 1000 transfer images per target class",
}
def paired_figures(summary: dict[str, Any], out: Path, simulate: bool) -> list[str]:
    """The paired difference per cell and transfer; for ``bridge-phase`` also the real phase
    diagram beside the simulator's (run on the matching axes when ``simulate``)."""
    files = design_report.plot_design(summary, out)
    if summary["design"] == "bridge-phase":
        files += phase_bridge.add_simulator(summary, out, simulate)
    return files


def paired_describe(summary: dict[str, Any], out: Path) -> str:
    return (f"{design_report.format_design_table(summary, summary['primary']['metric'])}\n* primary contrast; "
            f"{summary['seconds_this_invocation']:.0f} s; report {out}/report.md, results {out}/results.json")


def _paired(name: str) -> Design:
    return Design(
        name=name, help=PAIRED_HELP[name],
        contrast="leaf minus target pretraining, paired by seed, on the config's primary metric, protocol, size and cell",
        config=lambda raw: designs.design_config(name, raw), datasets=("fashion-mnist",),
        presets={"quick": designs.quick_preset(name), "full": {"seeds": list(range(10))}},
        flags=designs.FLAGS, extra=designs.cli_extra, data_name=lambda c: c.dataset,
        load=designs.load, plan=designs.plan, train=designs.trainer,
        summarise=lambda cfg, out, plan: design_report.summarise_design(cfg, out), csv_columns=design_report.CSV_COLUMNS,
        figures=paired_figures, describe=paired_describe, dry_run=designs.dry_run, report=design_report.report_markdown)


def _glosses() -> Design:
    return Design(
        name="wordnet-glosses", help="the U-curve over WordNet levels on noun glosses (text; WordNet 3.0 from "
                                     "GRANULARITY_WORDNET_DIR or /usr/share/wordnet)",
        contrast="each arm minus the target level (the baseline), paired by seed, on target error",
        config=glosses.study_config, datasets=("wordnet-glosses",),
        presets={"quick": glosses.QUICK, "full": {"train_size": None}},
        flags=glosses.FLAGS, data_name=lambda c: "wordnet-glosses",
        load=glosses.load, plan=glosses.plan, summarise=glosses.summarise, csv_columns=glosses.CSV_COLUMNS,
        figures=lambda s, out, simulate: glosses.plot_u_curve(s, out), describe=glosses.describe,
        dry_run=glosses.dry_run)


REGISTRY: dict[str, Design] = {d.name: d for d in (_levels(), *(_paired(n) for n in designs.DESIGNS), _glosses())}


def get_design(name: str) -> Design:
    """The registered design ``name`` (one-line error naming the registered ones otherwise)."""
    if name not in REGISTRY:
        from granularity.errors import unknown_name

        raise unknown_name("design", name, REGISTRY)
    return REGISTRY[name]


def default_design(dataset: str | None) -> str:
    """The design ``granularity study`` runs without ``--design``: the one made for the data
    set if there is one (``wordnet-glosses``), else ``levels``."""
    return dataset if dataset in REGISTRY and REGISTRY[dataset].datasets == (dataset,) else "levels"


def run_study(config: Any, out: str | Path, *, design: str = "levels", **kwargs: Any) -> dict[str, Any] | None:
    """Run (or resume) the registered ``design`` (a config or a mapping of overrides of its
    defaults) in folder ``out``; see :func:`granularity.experiments.runner.run_design`.

    Examples
    --------
    >>> run_study({"seeds": [0, 1, 2, 3, 4]}, "runs/study")  # doctest: +SKIP
    >>> run_study({"seeds": list(range(10))}, "runs/bridge", design="bridge")  # doctest: +SKIP
    """
    return run_design(get_design(design), config, out, **kwargs)


def replot(out: Path | str) -> list[str]:
    """Redraw the figures of the finished study in ``out`` from its ``results.json`` alone (no
    run, no simulator, no result file rewritten: ``granularity study --plot-only``); the design
    is told apart by what the file holds. Returns the PNG names (each with its PDF and SVG).

    Examples
    --------
    >>> replot("docs/results/bridge")  # doctest: +SKIP
    ['paired_difference.png']
    """
    from granularity.errors import GranularityError
    from granularity.sweeps.migrate import current  # the one reader of files in an older spelling
    from granularity.utils.io import read_json

    path = Path(out) / "results.json"
    summary = current(read_json(path))
    if not isinstance(summary, dict) or not isinstance(summary.get("table"), list) \
            or not all(isinstance(r, dict) for r in summary["table"]):
        raise GranularityError(f"{str(path)!r} is not the results file of a study (no 'table' list of rows).")
    if (name := design_of(summary)) is None:
        raise GranularityError(f"{str(path)!r} is not the results file of a study (expected one written by a registered "
                               f"design: {', '.join(REGISTRY)}).")
    try:
        return REGISTRY[name].figures(summary, Path(out), False)
    except (KeyError, TypeError, StopIteration) as exc:  # a hand-edited or truncated file: one line, no traceback
        raise GranularityError(f"{str(path)!r} is not a complete results file of a study ({type(exc).__name__}: {exc}); "
                               "rerun the study to rewrite it.") from None


def design_of(summary: dict[str, Any]) -> str | None:
    """The design that wrote a ``results.json`` (told apart by what it holds), or None."""
    if "design" in summary:
        return summary["design"] if summary["design"] in REGISTRY else None
    if "hard_samples" in summary:
        return "levels"
    if summary["table"] and all("level" in r for r in summary["table"]):
        return "wordnet-glosses"
    return None
