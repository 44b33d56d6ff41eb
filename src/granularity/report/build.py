"""A self-contained HTML report from stored results.

Inputs (any mix): simulate run folders (``result.json`` + ``seeds/``), phase-diagram folders
(``phase_spec.json``), results stores of sweeps (``index.sqlite``), real-data study folders
(``study.json`` + ``results.json`` of :mod:`granularity.experiments.study`) and single real-data
transfer run folders. Every figure is drawn from the stored results, written as a PNG under
``<out>/figures/`` and embedded in ``<out>/index.html`` as a base64 data URI, with its numbers
(mean and 95% CI over seeds) and, in a collapsible block, the exact resolved configs and seeds.

From a store, a simulate sweep over two axes gives phase-diagram heatmaps (mean over seeds per
cell, one per protocol), one axis gives error curves, and small grids (<= 4 cells) also give
the easy/hard bars and alignment curves per cell. A transfer sweep gives the real-data U-curve
(target error against the number of pretraining classes, per label-function family) and
hard-sample bars (rare vs common subclasses) when the runs have rare classes. A study folder
gives the U-curve (target error against the number of pretraining classes per family), easy vs
hard test-sample bars and the rare-subclass bars, from its ``results.json``.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Sequence
from pathlib import Path

from granularity.errors import GranularityError
from granularity.report.simulate import section_phase, section_simulate
from granularity.report.store import section_store
from granularity.report.study import section_study, section_transfer_run
from granularity.utils.html import Names, Section, render
from granularity.utils.io import check_writable, read_json


# ---- inputs ---------------------------------------------------------------------------------
@contextmanager
def _reading(path: Path, kind: str):
    """Files of a results folder that do not have the structure granularity writes (edited by
    hand, written by another program, cut short) end in one line naming the folder."""
    import pickle
    import zipfile

    try:
        yield
    except GranularityError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, EOFError, OSError,
            pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise GranularityError(
            f"The RESULTS entry {str(path)!r} ({kind} folder) holds malformed files ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); it was not written by granularity or is corrupt."
        ) from None


def detect(path: Path) -> str:
    """``simulate`` | ``phase`` | ``store`` | ``study`` | ``transfer`` for a results folder."""
    if not path.is_dir():
        raise GranularityError(f"The RESULTS entry {str(path)!r} is not a folder; give run folders, phase folders or sweep stores.")
    from granularity.sweeps.store import is_store
    from granularity.theory.experiment import is_run_folder
    from granularity.theory.phase import is_phase_folder

    if is_store(path):
        return "store"
    if is_phase_folder(path):
        return "phase"
    if (path / "study.json").exists():
        if not (path / "results.json").exists():
            raise GranularityError(f"The study folder {str(path)!r} has no results.json yet; run the study to the end first.")
        return "study"
    if is_run_folder(path):
        return "simulate"
    if (path / "result.json").exists():
        res = read_json(path / "result.json")
        if isinstance(res, dict) and "target_error" in res:  # a foreign result.json: "not a results folder" below
            return "transfer"
    raise GranularityError(
        f"The RESULTS entry {str(path)!r} is not a simulate run folder (result.json), a phase folder "
        "(phase_spec.json), a study folder (study.json) or a results store (index.sqlite)."
    )


def collect_sections(results: Sequence[str | Path], out: str | Path, *, protocol: str | None = None) -> list[Section]:
    """The report's sections from result folders, figures drawn into ``<out>/figures``; each
    :class:`Figure` holds the PNG path, its table and ``data`` (what it draws)."""
    if not results:
        raise GranularityError("The 'RESULTS' argument needs at least one results folder.")
    paths = [Path(p) for p in results]
    kinds = [detect(p) for p in paths]  # every input checked before anything is drawn
    figdir = check_writable(out) / "figures"
    figdir.mkdir(exist_ok=True)
    names = Names()
    sections: list[Section] = []
    for path, kind in zip(paths, kinds):
        with _reading(path, kind):
            if kind == "simulate":
                sections.append(section_simulate(path, figdir, names))
            elif kind == "phase":
                sections.append(section_phase(path, figdir, names))
            elif kind == "store":
                sections += section_store(path, figdir, names, protocol)
            elif kind == "study":
                sections.append(section_study(path, figdir, names))
            else:
                sections.append(section_transfer_run(path))
    return sections


def build_report(results: Sequence[str | Path], out: str | Path, *, title: str = "granularity report",
                 protocol: str | None = None) -> Path:
    """Build ``<out>/index.html`` (self-contained) and ``<out>/figures/*.png`` from result folders.

    Parameters
    ----------
    results : paths
        Simulate run folders, phase folders, results stores (sweeps), study folders, transfer run folders.
    out : path
        Report folder.
    protocol : str, optional
        Only this transfer protocol in store heatmaps (default: every stored protocol).

    Returns
    -------
    Path
        The HTML file.

    Examples
    --------
    >>> build_report(["runs/sweeps/phase"], "runs/report")  # doctest: +SKIP
    """
    out = Path(out)
    sections = collect_sections(results, out, protocol=protocol)
    page = out / "index.html"
    from granularity.utils.io import write_bytes_atomic

    text = render(sections, out, title)
    write_bytes_atomic(page, lambda fh: fh.write(text.encode("utf-8")))
    return page
