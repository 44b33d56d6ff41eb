"""Preset descriptions say what the presets change."""

import pytest

from granularity.theory.presets import PRESETS


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("name", list(PRESETS))
def test_summary_names_every_setting_the_preset_changes(name):
    preset = PRESETS[name]
    summary = preset.summary()
    assert summary.startswith(preset.description)
    for key, value in _leaves(preset.overrides):
        short = key.split(".")[-1]
        assert f"{short}={value}".replace(" ", "").lower() in summary.replace(" ", "").lower(), (name, key)


def test_descriptions_say_what_the_setting_does():
    assert "rarer gap" not in PRESETS["k4"].description
    assert "smaller gap" in PRESETS["k4"].description
