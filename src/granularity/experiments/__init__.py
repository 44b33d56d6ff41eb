"""Experiments built on the engine: the paper's granularity study on real data."""

from granularity.experiments.study import QUICK, StudyConfig, run_study
from granularity.experiments import sweep_presets  # noqa: F401 (registers the transfer sweep presets)

__all__ = ["QUICK", "StudyConfig", "run_study"]
