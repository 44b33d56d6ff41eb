"""The study's run settings as the transfer sweep kind's presets ``study`` (its defaults) and
``study-quick`` (its QUICK sizes). Sweeps sit below experiments, so the presets are registered
from here (on importing :mod:`granularity.experiments`) into
:data:`granularity.sweeps.kinds.TRANSFER_PRESETS`.
"""

from __future__ import annotations

from typing import Any

from granularity.experiments.study import QUICK, StudyConfig, run_config
from granularity.sweeps.kinds import register_transfer_preset


def study_run_settings(quick: bool) -> dict[str, Any]:
    """The arm-independent settings of every study run (source, seed and rare are per arm)."""
    d = run_config(StudyConfig.build(QUICK if quick else {}), "target", 0, None).to_dict()
    for key in ("source", "seed", "rare"):
        d.pop(key)
    return d


register_transfer_preset("study", lambda: study_run_settings(False))
register_transfer_preset("study-quick", lambda: study_run_settings(True))
