"""Labels as they come in real data: samples labelled at internal nodes, missing ancestors.

A sample's label is a **node name** of the hierarchy (a leaf or an internal node: "only the
genus is known") or a **partial path**, the annotated names from coarse to fine with ``None``
or ``""`` where an annotation is missing (a table row ``[order, None, genus, None]``). The
sample's *node* is the deepest name given; the other names must lie on its path (else an
error: the annotation contradicts the hierarchy).

At a level ``l`` a sample falls in one of three cases:

* its node is at depth ``>= l``, or is a leaf (a leaf shallower than ``l`` is its own class
  there, the hierarchy's level convention), and its ancestor at ``l`` is annotated (always so
  for a plain node name, whose ancestors the tree implies): the label is that ancestor, under
  every policy;
* its node is at depth ``>= l`` but a partial path leaves the ancestor at ``l`` blank
  (a *missing ancestor*);
* its node is an internal node shallower than ``l`` (*labelled above the level*): its class at
  ``l`` is unknown.

The policy decides the last two cases (one policy per level; pass a mapping for several):

============  ==========================================  =====================================
policy        missing ancestor                            labelled above the level
============  ==========================================  =====================================
``"fill"``    filled in from the tree                     dropped (no class can be filled in)
``"drop"``    dropped from this level's training          dropped
``"own"``     filled in from the tree                     kept as its own class
============  ==========================================  =====================================

"Dropped" samples have ``keep == False`` and label ``-1`` (never a valid class). Under
``"own"`` the classes of level ``l`` are ``level_nodes(l)`` followed by every internal node
shallower than ``l`` (root first, then the hierarchy's internal order): fixed by the hierarchy
and the level alone, so train and test splits get the same classes whatever samples they hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from granularity.errors import HierarchyError, suggest
from granularity.hierarchy.io import missing as _missing, show as _show
from granularity.hierarchy.structure import LabelHierarchy

POLICIES = ("fill", "drop", "own")


@dataclass(frozen=True)
class LevelLabels:
    """Labels of one level: ``labels[i]`` indexes ``classes`` where ``keep[i]``, else is -1."""

    labels: np.ndarray
    keep: np.ndarray
    classes: list[str]
    level: int
    policy: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _policy_for(policy: str | Mapping[Any, str], h: LabelHierarchy, lv: int) -> str:
    if isinstance(policy, Mapping):
        by_level = {h.level_index(k): v for k, v in policy.items()}
        if lv not in by_level:
            raise HierarchyError(
                f"The 'policy' mapping has no entry for level {lv}; it gives levels "
                f"{sorted(by_level)} (give one policy per level used)."
            )
        policy = by_level[lv]
    if policy not in POLICIES:
        raise HierarchyError(
            f"The 'policy' parameter must be one of {', '.join(POLICIES)}. Got {policy!r} instead"
            f"{suggest(str(policy), POLICIES)}."
        )
    return policy


def _parse_one(h: LabelHierarchy, i: int, s: Any) -> tuple[list[str], bool]:
    plain = isinstance(s, str)
    if plain or _missing(s):
        names = [] if _missing(s) else [s.strip()]
    elif isinstance(s, (Sequence, np.ndarray)):
        names = [str(v).strip() for v in s if not _missing(v)]
    else:
        raise HierarchyError(f"Sample {i}: a label must be a node name or a list of names. Got {s!r}.")
    if not names:
        raise HierarchyError(f"Sample {i} has no label (every name is missing); drop it from the data.")
    return names, plain


def parse_samples(h: LabelHierarchy, samples: Sequence[Any]) -> tuple[list[str], list[frozenset[str] | None]]:
    """Per sample: its node, and the names it annotates (``None``: a plain name, all implied)."""
    nodes: list[str] = []
    given: list[frozenset[str] | None] = []
    unknown: list[str] = []
    seen: dict[tuple[tuple[str, ...], bool], str] = {}  # real data repeats few distinct labels
    for i, s in enumerate(samples):
        names, plain = _parse_one(h, i, s)
        key = (tuple(names), plain)
        if key not in seen:
            bad = [n for n in names if n not in h]
            if bad:
                unknown.extend(x for x in bad if x not in unknown)
                continue
            node = max(names, key=h.node_depth)
            path = set(h.path(node))
            off = [n for n in names if n not in path]
            if off:
                raise HierarchyError(
                    f"Sample {i}: {off[0]!r} is not an ancestor of {node!r} in {h.name!r} (its path "
                    f"is {' > '.join(h.path(node))}); the annotation contradicts the hierarchy."
                )
            seen[key] = node
        nodes.append(seen[key])
        given.append(None if plain else frozenset(names))
    if unknown:
        raise HierarchyError(
            f"Label(s) {_show(unknown, 5)} are missing from the hierarchy {h.name!r}"
            f"{suggest(unknown[0], h.nodes)}."
        )
    return nodes, given


def labels_at_level(
    hierarchy: LabelHierarchy,
    samples: Sequence[Any],
    level: int | str,
    policy: str | Mapping[Any, str] = "fill",
) -> LevelLabels:
    """Class labels at ``level`` for samples labelled at any node, with a keep-mask.

    Parameters
    ----------
    hierarchy : LabelHierarchy
    samples : sequence
        Per sample a node name (leaf or internal) or a partial path (names from coarse to fine,
        ``None``/``""``/NaN where missing). See the module docstring.
    level : int or str
        An integer level (negative counts from the leaves) or a level name.
    policy : {"fill", "drop", "own"} or mapping of level to policy
        What happens to samples with a missing ancestor or labelled above the level.

    Returns
    -------
    LevelLabels
        ``labels`` (int64, -1 where dropped), ``keep`` (bool), ``classes`` (names; index =
        label), ``level``, ``policy``. Labels never depend on the order or mix of samples.
    """
    h = hierarchy
    lv = h.level_index(level)
    pol = _policy_for(policy, h, lv)
    nodes, given = parse_samples(h, samples)
    classes = h.level_nodes(lv)
    if pol == "own":
        classes = classes + [n for n in [h.root, *h.internal] if h.node_depth(n) < lv]
    index = {c: i for i, c in enumerate(classes)}
    labels = np.full(len(nodes), -1, dtype=np.int64)
    memo: dict[tuple[str, frozenset[str] | None], int] = {}
    for i, key in enumerate(zip(nodes, given)):
        if key not in memo:
            memo[key] = _label_of(h, *key, lv, pol, index)
        labels[i] = memo[key]
    return LevelLabels(labels, labels >= 0, classes, lv, pol)


def _label_of(h: LabelHierarchy, node: str, names: frozenset[str] | None, lv: int, pol: str,
              index: dict[str, int]) -> int:
    if h.node_depth(node) < lv and not h.is_leaf(node):  # labelled above the level
        return index[node] if pol == "own" else -1
    target = h.ancestor_at(node, lv)
    # a partial path that leaves the ancestor blank (the root is implied by every label)
    if pol == "drop" and names is not None and target not in names and target != h.root:
        return -1
    return index[target]
