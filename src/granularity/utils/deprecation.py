"""Renamed config keys, values and options: old spellings accepted at the boundary, one line each.

A user's config file, ``--set`` override or sweep file may still say ``transfer.mode: linear``;
:func:`upgrade` rewrites such a raw mapping into the current spelling (``transfer.protocol:
probe``) before validation, so the code behind a config sees one spelling only. With
``warn=True`` each rename emits one :class:`GranularityDeprecationWarning` naming the new
spelling (the CLI prints it as one ``granularity: warning: ...`` line on stderr); readers of
files written before a rename (run folders, stores, results) call it with ``warn=False``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from granularity.errors import GranularityError
from granularity.utils.config import get_dotted, set_dotted


class GranularityDeprecationWarning(FutureWarning):
    """An old spelling was used; the message names the new one. A FutureWarning, so that Python
    shows it to the user by default (a DeprecationWarning is hidden outside ``__main__``)."""


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} is deprecated; use {new} (same meaning).", GranularityDeprecationWarning,
                  stacklevel=stacklevel)


@dataclass(frozen=True)
class Renamed:
    """``old`` dotted key now spelled ``new`` (None: same key), with renamed values ``{old: new}``."""

    old: str
    new: str | None = None
    values: Mapping[Any, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.new or self.old


def _delete(tree: dict, dotted: str, prune: bool = False) -> None:
    """Remove a dotted key; with ``prune`` also the mappings it leaves empty."""
    *parents, last = dotted.split(".")
    path, node = [], tree
    for p in parents:
        path.append((node, p))
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)
        while prune and path and node == {}:
            parent, key = path.pop()
            parent.pop(key)
            node = parent


def _has(tree: Mapping[str, Any], dotted: str) -> bool:
    *parents, last = dotted.split(".")
    node: Any = tree
    for p in parents:
        node = node.get(p) if isinstance(node, Mapping) else None
    return isinstance(node, Mapping) and last in node


def _value(value: Any, values: Mapping[Any, Any]) -> Any:
    if isinstance(value, list):
        return [values.get(v, v) if isinstance(v, str) else v for v in value]
    return values.get(value, value) if isinstance(value, str) else value


def upgrade(raw: Any, renames: Sequence[Renamed], *, warn: bool = True, prefix: str = "") -> Any:
    """``raw`` (a nested mapping, not changed) with every old key and value of ``renames`` in
    the new spelling; one warning per rename found when ``warn``. Both spellings of one key
    at once are an error. ``prefix`` is prepended to the keys named in the messages."""
    if not isinstance(raw, Mapping):
        return raw
    out = copy.deepcopy(dict(raw))
    for r in renames:
        moved = r.new is not None and _has(out, r.old)
        if moved and _has(out, r.new):
            raise GranularityError(f"Config keys {prefix + r.old!r} (deprecated) and {prefix + r.new!r} are both set; "
                                   f"keep only {prefix + r.new!r}.")
        if not (moved or _has(out, r.key)):
            continue
        old_value = get_dotted(out, r.old if moved else r.key)
        new_value = _value(old_value, r.values)
        if moved:
            _delete(out, r.old)
        set_dotted(out, r.key, new_value)
        if warn and (moved or new_value != old_value):
            shown = (f"{old_value}" if isinstance(old_value, str) else "")
            if new_value != old_value:
                warn_renamed(f"'{prefix}{r.old if moved else r.key}={shown}'", f"'{prefix}{r.key}={new_value}'",
                             stacklevel=4)
            else:
                warn_renamed(f"config key '{prefix}{r.old}'", f"'{prefix}{r.key}'", stacklevel=4)
    return out


def downgrade(canon: Mapping[str, Any], renames: Sequence[Renamed]) -> dict[str, Any]:
    """The inverse of :func:`upgrade` on a validated dump: the spelling of before the renames
    (what run ids hash, so that runs made before a rename keep their ids and folders)."""
    out = copy.deepcopy(dict(canon))
    for r in reversed(renames):
        if not _has(out, r.key):
            continue
        value = get_dotted(out, r.key)
        back = {v: k for k, v in r.values.items()}
        if r.new is not None:
            _delete(out, r.new, prune=True)
        set_dotted(out, r.old, _value(value, back))
    return out


def rename_key(key: str, renames: Sequence[Renamed]) -> tuple[str, dict[Any, Any]]:
    """A dotted key (or a key under a renamed prefix) in the new spelling, and the renamed
    values of the key it ends as (``{}`` when none)."""
    values: dict[Any, Any] = {}
    for r in renames:
        if r.new is not None and (key == r.old or key.startswith(r.old + ".")):
            key = r.new + key[len(r.old):]
        if key == r.key:
            values.update(r.values)
    return key, values


def warn_key_value(old_key: str, old_value: Any, key: str, value: Any, *, prefix: str = "", stacklevel: int = 4) -> None:
    """One deprecation line for a renamed key and/or value (nothing when neither changed)."""
    if value != old_value:
        warn_renamed(f"'{prefix}{old_key}={old_value}'", f"'{prefix}{key}={value}'", stacklevel=stacklevel)
    elif key != old_key:
        warn_renamed(f"config key '{prefix}{old_key}'", f"'{prefix}{key}'", stacklevel=stacklevel)


def upgrade_overrides(items: Sequence[str], renames: Sequence[Renamed], *, prefix: str = "") -> list[str]:
    """``--set key=value`` strings with old keys (or a key under an old prefix) and old values in
    the new spelling, one warning per rename found; each override keeps its own meaning (a
    mapping value still replaces, as ``--set`` does)."""
    out = []
    for item in items:
        old_key, eq, old_text = (part.strip() for part in item.partition("="))
        if not eq:
            out.append(item)  # malformed: apply_overrides says why
            continue
        key, values = rename_key(old_key, renames)
        text = str(values.get(old_text, old_text))
        warn_key_value(old_key, old_text, key, text, prefix=prefix)
        out.append(f"{key}={text}")
    return out
