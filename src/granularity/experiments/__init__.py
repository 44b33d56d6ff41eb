"""Real-data studies: every study is a registered design (:mod:`.registry`) run by one runner (:mod:`.runner`)."""

from granularity.experiments.registry import REGISTRY, run_study
from granularity.experiments.study import QUICK, StudyConfig
from granularity.experiments import sweep_presets  # noqa: F401 (registers the transfer sweep presets)

__all__ = ["QUICK", "REGISTRY", "StudyConfig", "run_study"]
