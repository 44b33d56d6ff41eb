"""Experiments built on the engine: the paper's granularity study on real data."""

from granularity.experiments.study import QUICK, StudyConfig, run_study

__all__ = ["QUICK", "StudyConfig", "run_study"]
