"""Build label hierarchies from what a data set's files say (levels, parent maps, taxa).

The trees are built lazily (a data set calls these when ``ds.hierarchy`` is first read), so
loading pixels never waits on hierarchy code. Leaf ``i`` is always label ``i``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from granularity.errors import DataError, HierarchyError

ROOT = "root"


def tree(
    parent: dict[str, str],
    root: str,
    leaves: Sequence[str],
    name: str,
    titles: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    level_names: Sequence[str] | None = None,
):
    """A ``LabelHierarchy`` from a ``{child: parent}`` map with leaves in label order."""
    from granularity.hierarchy import LabelHierarchy

    return LabelHierarchy.from_parent_map(
        dict(parent), root=root, leaves=list(leaves), name=name, titles=titles, meta=meta,
        level_names=level_names,
    )


def flat_factory(leaf_names: Sequence[str], name: str) -> Callable[[], Any]:
    """Factory of a one-level tree: every leaf under one root."""
    leaves = list(leaf_names)
    return lambda: tree({leaf: ROOT for leaf in leaves}, ROOT, leaves, name, level_names=[ROOT, "class"])


def parent_map_factory(
    leaf_names: Sequence[str], parents: dict[str, str] | str | Path, name: str
) -> Callable[[], Any]:
    """Factory of the tree given by ``parents`` (a dict or a JSON file ``{child: parent}``).

    Every leaf must appear in the map (or directly under the single root).
    """
    where = "parents"
    if not isinstance(parents, dict):
        path = Path(parents)
        where = str(path)
        try:
            parents = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"Cannot read the parent map {path}: {' '.join(str(exc).split())}.") from None
        if not isinstance(parents, dict):
            raise DataError(f"Parent map {path} must be a JSON object {{child: parent}}.")
    parents = {str(k): str(v) for k, v in parents.items()}
    missing = [leaf for leaf in leaf_names if leaf not in parents]
    if missing:
        raise HierarchyError(
            f"Parent map {where} has no parent for {len(missing)} class(es), e.g. {missing[0]!r}."
        )
    roots = sorted({p for p in parents.values() if p not in parents})
    if not roots:
        raise HierarchyError(f"Parent map {where} has no root: every parent is also a child (a cycle).")
    if len(roots) != 1:
        raise HierarchyError(
            f"Parent map {where} must have exactly one root; found {len(roots)}: {', '.join(roots[:5])}."
        )
    leaves = list(leaf_names)

    def factory():
        try:
            return tree(parents, roots[0], leaves, name)
        except HierarchyError as exc:  # name the map the broken tree came from
            raise HierarchyError(f"Parent map {where}: {exc}") from None

    return factory


def encode_levels(
    levels: Sequence[Sequence[np.ndarray]], level_names: Sequence[str], name: str
) -> tuple[list[np.ndarray], list[str], Callable[[], Any]]:
    """Leaf labels and a hierarchy from per-sample labels at several levels (coarse -> fine).

    Parameters
    ----------
    levels : one entry per part (e.g. train, test); each a list of per-level label arrays,
        coarsest first, finest last.
    level_names : names of the levels (column / array names), for messages and node names.

    Returns
    -------
    leaf_ids : list of int64 arrays (one per part), the finest label as an index into
        ``leaf_names`` (sorted unique finest values).
    leaf_names : list of str
    factory : callable building the hierarchy (parent map over consecutive levels).
    """
    n_levels = len(level_names)
    cols = [np.concatenate([np.asarray(part[l]) for part in levels]) for l in range(n_levels)]
    fine = cols[-1]
    try:
        uniq = np.unique(fine)
    except TypeError:
        raise DataError(f"Label {level_names[-1]!r} mixes value types; use all numbers or all strings.") from None
    leaf_names = [str(v) for v in uniq]
    if len(set(leaf_names)) != len(leaf_names):
        raise DataError(f"Label {level_names[-1]!r} has values that print the same ({leaf_names}).")
    leaf_ids = [np.searchsorted(uniq, np.asarray(part[-1])).astype(np.int64) for part in levels]

    parent: dict[str, str] = {}
    titles: dict[str, str] = {}

    def node(level: int, value: Any) -> str:
        if level == n_levels - 1:
            return str(value)
        nid = f"{level_names[level]}:{value}"
        titles[nid] = str(value)
        return nid

    for l in range(n_levels):
        child_col = cols[l]
        if l == 0:
            pairs = {(node(l, c), ROOT) for c in np.unique(child_col)}
            parent_name = "(root)"
        else:
            pairs = {(node(l, c), node(l - 1, p)) for c, p in zip(child_col, cols[l - 1])}
            parent_name = level_names[l - 1]
        seen: dict[str, str] = {}
        for child, par in sorted(pairs):
            if child in seen and seen[child] != par:
                raise HierarchyError(
                    f"Label {level_names[l]!r} value {titles.get(child, child)!r} has two parents in "
                    f"{parent_name!r} ({titles.get(seen[child], seen[child])!r} and "
                    f"{titles.get(par, par)!r}); each finer label must sit under exactly one coarser label."
                )
            seen[child] = par
        clash = set(seen) & set(parent) if l < n_levels - 1 else set(seen) & set(titles)
        if clash:
            raise HierarchyError(f"Label {level_names[l]!r} value {sorted(clash)[0]!r} clashes with a node name.")
        parent.update(seen)
    meta = {"levels": list(level_names)}
    return leaf_ids, leaf_names, lambda: tree(
        parent, ROOT, leaf_names, name, titles, meta, level_names=[ROOT, *level_names]
    )
