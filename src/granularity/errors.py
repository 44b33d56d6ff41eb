"""User-facing errors.

Every error a user can cause (a config, a file, a CLI argument) is a :class:`GranularityError`
with a one-line, scikit-learn style message naming the parameter, the value and what is
allowed. The CLI prints it as one line on stderr and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GranularityError(ValueError):
    """An error caused by user input; its message is one line and says how to fix it."""


class RunFailedError(GranularityError):
    """A run that started but could not finish correctly (e.g. its loss went non-finite); the
    reason is recorded in the run folder and the CLI exits with code 1 (not 2: not bad input)."""

    exit_code = 1


class DataError(GranularityError):
    """A data file is missing, truncated, corrupt or inconsistent."""


class HierarchyError(GranularityError):
    """A label hierarchy is malformed (cycle, two parents, unknown node, ...)."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> GranularityError:
    """Error for an unknown registry name, listing the valid ones and the closest match."""
    choices = sorted(str(c) for c in choices)
    return GranularityError(
        f"Unknown {kind} {name!r}{suggest(name, choices)}; valid {kind}s are: {', '.join(choices)}."
    )


def param_error(param: str, allowed: str, got: object) -> GranularityError:
    """``The 'param' parameter must be <allowed>. Got <got> instead.``"""
    return GranularityError(f"The {param!r} parameter must be {allowed}. Got {got!r} instead.")
