"""Rename tables (granularity.utils.deprecation): old keys and values read in the new spelling,
one warning each, both spellings at once refused; downgrade inverts upgrade."""

from __future__ import annotations

import warnings

import pytest

from granularity.errors import GranularityError
from granularity.utils.deprecation import (
    GranularityDeprecationWarning,
    Renamed,
    downgrade,
    upgrade,
    upgrade_overrides,
)

R = (Renamed("a.mode", "a.protocol", {"linear": "probe"}), Renamed("size", "run.size"))


def test_upgrade_keys_values_and_prefixes():
    with pytest.warns(GranularityDeprecationWarning) as rec:
        out = upgrade({"a": {"mode": "linear", "x": 1}, "size": 3}, R)
    assert out == {"a": {"protocol": "probe", "x": 1}, "run": {"size": 3}}
    assert len(rec) == 2 and "'a.mode=linear' is deprecated; use 'a.protocol=probe'" in str(rec[0].message)
    with pytest.warns(GranularityDeprecationWarning, match="'a.protocol=linear'"):
        assert upgrade({"a": {"protocol": "linear"}}, R) == {"a": {"protocol": "probe"}}


def test_new_spelling_is_silent_and_unchanged():
    data = {"a": {"protocol": "map"}, "run": {"size": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert upgrade(data, R) == data
        assert upgrade({"a": {"mode": "linear"}}, R, warn=False) == {"a": {"protocol": "probe"}}


def test_both_spellings_refused():
    with pytest.raises(GranularityError, match="'a.mode' .deprecated. and 'a.protocol' are both set"):
        upgrade({"a": {"mode": "map", "protocol": "map"}}, R, warn=False)


def test_downgrade_inverts_upgrade():
    old = {"a": {"mode": "linear", "x": [1]}, "size": 2, "other": None}
    assert downgrade(upgrade(old, R, warn=False), R) == old


def test_overrides_keep_their_meaning():
    with pytest.warns(GranularityDeprecationWarning) as rec:
        out = upgrade_overrides(["a.mode=linear", "size.deep={b: 1}", "z=3", "bad"], R)
    assert out == ["a.protocol=probe", "run.size.deep={b: 1}", "z=3", "bad"] and len(rec) == 2
