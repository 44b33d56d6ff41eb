"""The run's inputs are prepared once: the source is checked once per run (by check_plan),
not a second time when its labels are built."""

import granularity.engine.inputs as engine_inputs
import granularity.engine.labels as engine_labels
from granularity.engine import run_transfer

from .conftest import tiny_config


def test_the_source_is_checked_once_per_run(tiny, tmp_path, monkeypatch):
    calls = []
    real = engine_labels.check_source
    spy = lambda *a, **k: calls.append(str(a[0])) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(engine_inputs, "check_source", spy)
    monkeypatch.setattr(engine_labels, "check_source", spy)
    run_transfer(tiny_config(source="kmeans-within:4", pretrain={"epochs": 1}, transfer={"epochs": 0}), tmp_path / "r",
                 dataset=tiny)
    assert calls == ["kmeans-within:4"]
