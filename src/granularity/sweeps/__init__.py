"""Declarative sweeps: a sweep file expands into validated runs with stable ids, executed by
local processes or Ray into a results store (run folders + a SQLite index)."""

from granularity.sweeps.kinds import KINDS, ExperimentKind, get_kind, register
from granularity.sweeps.runner import run_sweep
from granularity.sweeps.spec import RunSpec, Sweep, expand, load_sweep, run_id
from granularity.sweeps.store import ResultsStore

__all__ = ["KINDS", "ExperimentKind", "ResultsStore", "RunSpec", "Sweep", "expand", "get_kind", "load_sweep",
           "register", "run_id", "run_sweep"]
