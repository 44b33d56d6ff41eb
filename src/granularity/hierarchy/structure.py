"""The label hierarchy: a validated, serialisable rooted tree over named labels.

Conventions
-----------
* The **root** is level 0; a node's level is its depth (number of edges from the root).
  ``depth`` is the deepest leaf's level.
* **Leaves** are the finest labels, in label order: leaf ``i`` is fine label ``i`` of the data.
* **Level** ``l`` (``0 <= l <= depth``) is a partition of the leaves. Its classes are the nodes
  at depth ``l`` *plus the leaves shallower than* ``l``: a leaf above a level keeps its own label
  there (the usual choice for unbalanced trees such as WordNet; a leaf is never split).
* **Class order** within a level (the class index that :meth:`LabelHierarchy.relabel` returns):
  the internal nodes of that depth in the hierarchy's internal-node order (``internal``; the
  builders set it, e.g. the CIFAR-100 coarse label order), then the leaves of depth ``<= l`` in
  leaf order. So for a balanced tree the deepest level is exactly the leaf order.
* The **content hash** is the SHA-256 (first 16 hex digits) of the canonical JSON of the
  structure (root, leaves, internal order, parent map); names, titles, level names and meta
  are descriptive and not hashed. Record it with every result (see :meth:`label_space`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from granularity.errors import HierarchyError, suggest
from granularity.hierarchy.derivation import Derivations
from granularity.hierarchy.io import Serialisation, show


def _check_parent_map(parent: dict[str, str], root: str, name: str) -> set[str]:
    """The node names of a valid child -> parent map (non-empty, names non-empty, the root
    without a parent, every parent a node); one-line :class:`HierarchyError` otherwise."""
    if not parent:
        raise HierarchyError(
            f"The hierarchy {name!r} is empty: root {root!r} has no children; give at "
            "least one child -> parent pair."
        )
    if root in parent:
        raise HierarchyError(
            f"The root {root!r} has a parent ({parent[root]!r}); the root must have none "
            "(or the parent map has a cycle through the root)."
        )
    known = set(parent) | {root}
    for child, par in parent.items():
        if child == "" or par == "":
            raise HierarchyError(f"Empty node name in pair {child!r} -> {par!r}; names must be non-empty.")
        if par not in known:
            raise HierarchyError(
                f"Unknown node {par!r} (parent of {child!r}) is neither the root {root!r} "
                f"nor a child in the parent map{suggest(par, known)}; a tree has one root."
            )
    return known


def _depths(parent: dict[str, str], root: str) -> dict[str, int]:
    """Depth of every node, detecting cycles (a walk that revisits a node never reaches root)."""
    depth: dict[str, int] = {root: 0}
    for start in parent:
        path = []
        on_path: set[str] = set()
        node = start
        while node not in depth:
            if node in on_path:
                cycle = path[path.index(node):] + [node]
                raise HierarchyError(
                    f"Cycle in the hierarchy: {' -> '.join(cycle)}; every node must lead "
                    f"up to the root {root!r}."
                )
            on_path.add(node)
            path.append(node)
            node = parent[node]
        d = depth[node]
        for n in reversed(path):
            d += 1
            depth[n] = d
    return depth


def _check_leaves(leaves: Sequence[str] | None, parent: dict[str, str], known: set[str],
                  children: dict[str, list[str]]) -> list[str]:
    """The leaves (default: the childless nodes in map order), each a childless node, listed
    once, and every childless node among them."""
    childless = [n for n in parent if not children[n]]
    if leaves is None:
        leaves = childless
    leaves = [str(x) for x in leaves]
    seen: set[str] = set()
    for leaf in leaves:
        if leaf in seen:
            raise HierarchyError(f"Duplicate name: leaf {leaf!r} is listed twice in leaves.")
        seen.add(leaf)
        if leaf not in known:
            raise HierarchyError(
                f"Label {leaf!r} in leaves is missing from the hierarchy{suggest(leaf, known)}; "
                "every leaf must be a child in the parent map."
            )
        if children[leaf]:
            raise HierarchyError(
                f"Leaf {leaf!r} has children ({show(children[leaf], 3)}); leaves must be "
                "childless nodes."
            )
    extra = [n for n in childless if n not in seen]
    if extra:
        raise HierarchyError(
            f"Nodes {show(extra, 3)} have no children but are not in leaves; list every "
            "childless node as a leaf (or remove it)."
        )
    return leaves


def _internal_order(internal: Sequence[str] | None, parent: dict[str, str], root: str,
                    children: dict[str, list[str]], leaf_index: dict[str, int],
                    depth: dict[str, int]) -> list[str]:
    """The internal non-root nodes in class order: as given (checked to list each once), or by
    the smallest leaf index below each node, then depth (a stable order that follows labels)."""
    internal_all = [n for n in parent if children[n]]
    if internal is None:
        first: dict[str, int] = {}
        for leaf, i in leaf_index.items():
            node = parent[leaf]
            while node != root and first.get(node, i + 1) > i:
                first[node] = i
                node = parent[node]
        return sorted(internal_all, key=lambda n: (first[n], depth[n]))
    internal = [str(x) for x in internal]
    if sorted(internal) != sorted(internal_all):
        missing = sorted(set(internal_all) - set(internal))
        bad = sorted(set(internal) - set(internal_all))
        dup = len(internal) != len(set(internal))
        raise HierarchyError(
            "The internal node order must list each internal non-root node once"
            + (f"; missing {show(missing, 3)}" if missing else "")
            + (f"; not internal nodes: {show(bad, 3)}" if bad else "")
            + ("; has duplicate names" if dup else "")
            + "."
        )
    return internal



class LabelHierarchy(Derivations, Serialisation):
    """A rooted tree whose leaves are the finest labels of a data set.

    Parameters
    ----------
    parent : mapping of str to str
        ``{child: parent}`` for every node except the root.
    root : str
        The root's name.
    leaves : sequence of str, optional
        The leaves in label order (leaf ``i`` is label ``i``). Default: the childless nodes in
        the mapping's key order.
    internal : sequence of str, optional
        Order of the internal non-root nodes (sets class indices within a level). Default:
        by the smallest leaf index below each node.
    name, level_names, titles, meta
        Descriptive (not part of the content hash): a name for the label space, one name per
        level (``len == depth + 1``), display names per node, provenance of the build.

    Raises
    ------
    HierarchyError
        One-line message for: an empty hierarchy, a cycle, a root with a parent, an unknown
        parent, duplicate or unknown leaves, a node with children listed as a leaf, a childless
        node missing from ``leaves``, wrong ``internal``/``level_names``.
    """

    def __init__(
        self,
        parent: Mapping[str, str],
        root: str,
        leaves: Sequence[str] | None = None,
        internal: Sequence[str] | None = None,
        *,
        name: str = "hierarchy",
        level_names: Sequence[str] | None = None,
        titles: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        parent = {str(k): str(v) for k, v in dict(parent).items()}
        root = str(root)
        known = _check_parent_map(parent, root, name)
        depth = _depths(parent, root)
        children: dict[str, list[str]] = {n: [] for n in known}
        for child, par in parent.items():
            children[par].append(child)
        leaves = _check_leaves(leaves, parent, known, children)
        leaf_index = {leaf: i for i, leaf in enumerate(leaves)}
        internal = _internal_order(internal, parent, root, children, leaf_index, depth)
        self._root = root
        self._parent = parent
        self._leaves = leaves
        self._leaf_index = leaf_index
        self._internal = list(internal)
        self._depth_of = depth
        self._depth = max(depth[leaf] for leaf in leaves)
        order = {n: i for i, n in enumerate(self._internal)}
        order.update({n: len(order) + i for i, n in enumerate(leaves)})
        order[root] = -1
        self._order = order
        self._children = {n: sorted(c, key=order.__getitem__) for n, c in children.items()}
        self.name = str(name)
        if level_names is not None:
            level_names = [str(x) for x in level_names]
            if len(level_names) != self._depth + 1:
                raise HierarchyError(
                    f"level_names has {len(level_names)} names but the hierarchy has "
                    f"{self._depth + 1} levels (0..{self._depth})."
                )
        self.level_names = level_names
        self.titles = {str(k): str(v) for k, v in dict(titles or {}).items() if str(k) in order}
        self.meta = dict(meta or {})
        self._level_cache: dict[int, list[str]] = {}
        self._map_cache: dict[int, np.ndarray] = {}
        self._hash: str | None = None

    # ------------------------------------------------------------------ structure
    @property
    def root(self) -> str:
        return self._root

    @property
    def leaves(self) -> list[str]:
        """Leaf names in label order (leaf ``i`` is label ``i``)."""
        return list(self._leaves)

    @property
    def internal(self) -> list[str]:
        """Internal non-root nodes in class order."""
        return list(self._internal)

    @property
    def nodes(self) -> list[str]:
        """All nodes: root, internal nodes, leaves."""
        return [self._root, *self._internal, *self._leaves]

    @property
    def num_leaves(self) -> int:
        return len(self._leaves)

    @property
    def depth(self) -> int:
        """Number of levels below the root (the deepest leaf's level)."""
        return self._depth

    @property
    def levels(self) -> list[int]:
        return list(range(self._depth + 1))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, node: object) -> bool:
        return node in self._order

    def __repr__(self) -> str:
        sizes = "-".join(str(self.num_classes(lv)) for lv in self.levels)
        return f"LabelHierarchy({self.name!r}, classes per level {sizes}, hash {self.content_hash})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelHierarchy) and self.content_hash == other.content_hash

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def _check(self, node: str) -> str:
        node = str(node)
        if node not in self._order:
            raise HierarchyError(
                f"Unknown node {node!r} in hierarchy {self.name!r}{suggest(node, self._order)}."
            )
        return node

    def level_index(self, level: int | str) -> int:
        """A level given by number (an integer; negative counts from the leaves' end) or by name.

        Floats and booleans are errors, not truncated: ``2.9`` and ``True`` are no levels.
        """
        if isinstance(level, str) and not level.lstrip("-").isdigit():
            names = self.level_names or []
            if level not in names:
                raise HierarchyError(
                    f"Unknown level {level!r}{suggest(level, names)}; levels of {self.name!r} are "
                    f"0..{self._depth}" + (f" or names {', '.join(names)}" if names else "") + "."
                )
            return names.index(level)
        # only integers: int(2.9) == 2 and int(True) == 1 would pick a level silently
        if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer, str)):
            raise HierarchyError(
                f"Level must be an integer 0..{self._depth} (negative counts from the leaves) or a "
                f"level name. Got {level!r} ({type(level).__name__}) instead."
            )
        lv = int(level)
        if lv < 0:
            lv += self._depth + 1
        if not 0 <= lv <= self._depth:
            raise HierarchyError(
                f"Level {level!r} is out of range; levels of {self.name!r} are 0..{self._depth}."
            )
        return lv

    def node_depth(self, node: str) -> int:
        return self._depth_of[self._check(node)]

    def parent(self, node: str) -> str | None:
        node = self._check(node)
        return self._parent.get(node)

    def children(self, node: str) -> list[str]:
        return list(self._children[self._check(node)])

    def is_leaf(self, node: str) -> bool:
        return self._check(node) in self._leaf_index

    def leaf_index(self, leaf: str) -> int:
        leaf = self._check(leaf)
        if leaf not in self._leaf_index:
            raise HierarchyError(f"Node {leaf!r} is not a leaf of {self.name!r}.")
        return self._leaf_index[leaf]

    def ancestors(self, node: str, include_self: bool = False) -> list[str]:
        """Ancestors from the parent up to the root (``include_self`` puts the node first)."""
        node = self._check(node)
        out = [node] if include_self else []
        while node in self._parent:
            node = self._parent[node]
            out.append(node)
        return out

    def path(self, node: str) -> list[str]:
        """Nodes from the root down to ``node`` (inclusive)."""
        return self.ancestors(node, include_self=True)[::-1]

    def ancestor_at(self, node: str, level: int | str) -> str:
        """The node's class at ``level`` (itself if it is at or above the level)."""
        lv = self.level_index(level)
        p = self.path(node)
        return p[min(lv, len(p) - 1)]

    def descendants(self, node: str) -> list[str]:
        """All nodes below ``node`` (pre-order, children in class order)."""
        out: list[str] = []
        stack = list(reversed(self._children[self._check(node)]))
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(self._children[n]))
        return out

    def leaves_under(self, node: str) -> list[str]:
        """Leaves below (or equal to) ``node``, in leaf order."""
        node = self._check(node)
        if node in self._leaf_index:
            return [node]
        below = [n for n in self.descendants(node) if n in self._leaf_index]
        return sorted(below, key=self._leaf_index.__getitem__)

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor (a node is its own ancestor here)."""
        pa = self.path(a)
        pb = self.path(b)
        out = self._root
        for x, y in zip(pa, pb):
            if x != y:
                break
            out = x
        return out

    def distance(self, a: str, b: str) -> int:
        """Tree distance: number of edges on the path between two nodes."""
        c = self.lca(a, b)
        return self._depth_of[self._check(a)] + self._depth_of[self._check(b)] - 2 * self._depth_of[c]

    # ------------------------------------------------------------------ levels
    def level_nodes(self, level: int | str) -> list[str]:
        """Classes of a level: its internal nodes (internal order), then leaves of depth <= level."""
        lv = self.level_index(level)
        if lv not in self._level_cache:
            d = self._depth_of
            self._level_cache[lv] = [n for n in self._internal if d[n] == lv] + [
                leaf for leaf in self._leaves if d[leaf] <= lv
            ] if lv > 0 else [self._root]
        return list(self._level_cache[lv])

    def num_classes(self, level: int | str) -> int:
        return len(self.level_nodes(level))

    def level_sizes(self) -> list[int]:
        """Number of classes at each level 0..depth."""
        return [self.num_classes(lv) for lv in self.levels]

    def ancestor_map(self, level: int | str) -> np.ndarray:
        """For each leaf index, its class index at ``level`` (int64, read-only)."""
        lv = self.level_index(level)
        if lv not in self._map_cache:
            index = {n: i for i, n in enumerate(self.level_nodes(lv))}
            out = np.empty(len(self._leaves), dtype=np.int64)
            for i, leaf in enumerate(self._leaves):
                node = leaf
                while self._depth_of[node] > lv:
                    node = self._parent[node]
                out[i] = index[node]
            out.setflags(write=False)
            self._map_cache[lv] = out
        return self._map_cache[lv]

    def relabel(self, leaf_labels: Any, level: int | str) -> np.ndarray:
        """Map leaf labels (ints, any shape) to class indices of ``level`` (``level_nodes`` order).

        Leaves shallower than ``level`` keep their own label (their own class at that level).
        """
        arr = np.asarray(leaf_labels)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
                arr = arr.astype(np.int64)
            else:
                raise HierarchyError(
                    f"Leaf labels must be integers (leaf indices 0..{len(self._leaves) - 1}). "
                    f"Got dtype {arr.dtype} instead."
                )
        arr = arr.astype(np.int64, copy=False)
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= len(self._leaves):
                bad = lo if lo < 0 else hi
                raise HierarchyError(
                    f"Label {bad} is missing from the hierarchy {self.name!r}, which has "
                    f"{len(self._leaves)} leaves (labels 0..{len(self._leaves) - 1})."
                )
        return self.ancestor_map(level)[arr]

    def relabel_names(self, leaf_names: Iterable[str], level: int | str) -> list[str]:
        """Map leaf names to class names at ``level``."""
        idx = []
        for n in leaf_names:
            n = str(n)
            if n not in self._leaf_index:
                raise HierarchyError(
                    f"Label {n!r} is missing from the hierarchy {self.name!r}"
                    f"{suggest(n, self._leaf_index)}."
                )
            idx.append(self._leaf_index[n])
        nodes = self.level_nodes(level)
        return [nodes[i] for i in self.relabel(np.asarray(idx, dtype=np.int64), level)]

    def class_counts(self, leaf_labels: Any, level: int | str) -> np.ndarray:
        """Samples per class at ``level`` (length ``num_classes(level)``)."""
        return np.bincount(self.relabel(np.ravel(leaf_labels), level), minlength=self.num_classes(level))

    def label_space(self, level: int | str) -> dict[str, Any]:
        """What a result should record about the labels it used at ``level``."""
        lv = self.level_index(level)
        return {
            "hierarchy": self.name,
            "content_hash": self.content_hash,
            "level": lv,
            "level_name": self.level_names[lv] if self.level_names else None,
            "num_classes": self.num_classes(lv),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "content_hash": self.content_hash,
            "depth": self._depth,
            "num_leaves": len(self._leaves),
            "levels": [
                {
                    "level": lv,
                    "name": self.level_names[lv] if self.level_names else None,
                    "num_classes": self.num_classes(lv),
                    "num_shallow_leaves": sum(1 for x in self._leaves if self._depth_of[x] < lv),
                }
                for lv in self.levels
            ],
            "meta": self.meta,
        }


    # ------------------------------------------------------------------ serialisation
    def _structure(self) -> dict[str, Any]:
        # copies: a caller editing the dict must not change this (immutable) hierarchy
        return {
            "root": self._root,
            "leaves": list(self._leaves),
            "internal": list(self._internal),
            "parent": dict(sorted(self._parent.items())),
        }

    @property
    def content_hash(self) -> str:
        """SHA-256 (16 hex digits) of the canonical JSON of the structure."""
        if self._hash is None:
            text = json.dumps(self._structure(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._hash = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        return self._hash
