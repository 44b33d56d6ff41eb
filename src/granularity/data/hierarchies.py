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

from granularity.errors import DataError, GranularityError, HierarchyError

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
        from granularity.hierarchy.io import find_cycle

        raise HierarchyError(f"Parent map {where} has no root: it has the cycle {' -> '.join(find_cycle(parents))}.")
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
                counts = _pair_rows(cols[l], cols[l - 1], titles.get(child, child), (seen[child], par), titles)
                raise HierarchyError(
                    f"Label {level_names[l]!r} value {titles.get(child, child)!r} has two parents in "
                    f"{parent_name!r} ({titles.get(seen[child], seen[child])!r} in {counts[0]} rows and "
                    f"{titles.get(par, par)!r} in {counts[1]}); each finer label must sit under exactly one coarser label."
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


def _pair_rows(child_col: np.ndarray, parent_col: np.ndarray, child: str, parents: tuple[str, str],
               titles: dict[str, str]) -> list[int]:
    """Rows holding ``child`` under each of two parent nodes (so a message shows the odd one out)."""
    is_child = np.array([str(v) == child for v in child_col])
    return [int(sum(str(v) == titles.get(p, p) for v in parent_col[is_child])) for p in parents]


# --------------------------------------------------------------------------------------------
# Fashion-MNIST target groupings (a flat leaf -> group map each) for the study designs
# --------------------------------------------------------------------------------------------
#: Named groupings, group -> member leaf names. ``natural4`` / ``natural2`` are the hierarchy's
#: levels 2 and 1 (the control: every confusable garment inside one group). ``confusable``
#: splits the confusable pairs T-shirt/Shirt, Pullover/Coat and Sneaker/Sandal across groups, so
#: the coarse task needs the fine distinctions (multi-modal coarse classes).
FASHION_MNIST_GROUPINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "natural4": {
        "tops": ("T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"), "trousers": ("Trouser",),
        "footwear": ("Sandal", "Sneaker", "Ankle boot"), "bags": ("Bag",),
    },
    "natural2": {
        "clothes": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"),
        "goods": ("Sandal", "Sneaker", "Bag", "Ankle boot"),
    },
    "confusable": {
        "A": ("T-shirt/top", "Pullover", "Sneaker"), "B": ("Shirt", "Coat", "Sandal"),
        "C": ("Trouser", "Dress"), "D": ("Bag", "Ankle boot"),
    },
}
GROUPING_HELP = (
    "natural4, natural2, confusable, random (4 seeded random groups, drawn per seed), random:G "
    "(G groups), a JSON file {group: [leaf names or ids]}, or a list 'a,b;c,d;...' (groups split by ';', members by ',')"
)


def parse_grouping(spec: str, leaf_names: Sequence[str], seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``(leaf -> group id array, group names)`` of a grouping spec (see ``GROUPING_HELP``).

    Every leaf must be in exactly one group and there must be at least 2 groups. ``random``
    groupings are drawn from ``seed`` (balanced sizes).
    """
    leaves = list(leaf_names)
    spec = str(spec).strip()
    if spec in FASHION_MNIST_GROUPINGS:
        groups = {g: list(m) for g, m in FASHION_MNIST_GROUPINGS[spec].items()}
    elif spec == "random" or spec.startswith("random:"):
        g = 4 if spec == "random" else _int_after(spec, "random:")
        if not 2 <= g <= len(leaves):
            raise GranularityError(f"The grouping {spec!r} needs between 2 and {len(leaves)} groups. Got {g} instead.")
        perm = np.random.default_rng(seed).permutation(len(leaves))
        groups = {f"R{i}": [leaves[j] for j in perm[i::g]] for i in range(g)}
    elif spec.endswith((".json", ".yaml", ".yml")):
        from granularity.utils.io import read_json

        raw = read_json(spec, "grouping") if spec.endswith(".json") else _yaml_file(spec)
        if not isinstance(raw, dict):
            raise GranularityError(f"The grouping file {spec} must hold an object {{group: [leaf names or ids]}}.")
        groups = {str(k): list(v) if isinstance(v, (list, tuple)) else [v] for k, v in raw.items()}
    elif ";" in spec:
        groups = {f"G{i}": [m.strip() for m in part.split(",") if m.strip()] for i, part in enumerate(spec.split(";")) if part.strip()}
    else:
        raise GranularityError(f"Unknown grouping {spec!r}; valid ones are: {GROUPING_HELP}.")
    return _grouping_array(groups, leaves, spec)


def _int_after(spec: str, prefix: str) -> int:
    try:
        return int(spec[len(prefix):])
    except ValueError:
        raise GranularityError(f"The grouping {spec!r} needs an integer after {prefix!r}.") from None


def _yaml_file(path: str) -> object:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise GranularityError(f"Cannot read the grouping file {path}: {' '.join(str(exc).split())[:200]}.") from None


def _grouping_array(groups: dict[str, list], leaves: list[str], spec: str) -> tuple[np.ndarray, list[str]]:
    out = np.full(len(leaves), -1, dtype=np.int64)
    for gi, members in enumerate(groups.values()):
        for m in members:
            m = str(m).strip()
            if m.lstrip("-").isdigit() and m not in leaves:
                idx = int(m)
                if not 0 <= idx < len(leaves):
                    raise GranularityError(f"The grouping {spec!r} names leaf id {idx}; ids are in [0, {len(leaves) - 1}].")
            elif m in leaves:
                idx = leaves.index(m)
            else:
                from granularity.errors import unknown_name

                raise unknown_name("leaf class in the grouping", m, leaves)
            if out[idx] != -1:
                raise GranularityError(f"The grouping {spec!r} puts leaf {leaves[idx]!r} in two groups; each leaf must be in exactly one.")
            out[idx] = gi
    missing = [leaves[i] for i in np.flatnonzero(out < 0)]
    if missing:
        raise GranularityError(f"The grouping {spec!r} leaves out {len(missing)} leaf class(es), e.g. {missing[0]!r}; every leaf must be in a group.")
    if len(groups) < 2:
        raise GranularityError(f"The grouping {spec!r} must have at least 2 groups. Got {len(groups)} instead.")
    return out, [str(g) for g in groups]
