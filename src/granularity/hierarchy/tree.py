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
from pathlib import Path
from typing import Any

import numpy as np

from granularity.errors import HierarchyError, suggest

FORMAT = "granularity.label-hierarchy"
FORMAT_VERSION = 1


def _show(items: Iterable[Any], n: int = 5) -> str:
    items = list(items)
    text = ", ".join(repr(x) for x in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")


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
                f"Leaf {leaf!r} has children ({_show(children[leaf], 3)}); leaves must be "
                "childless nodes."
            )
    extra = [n for n in childless if n not in seen]
    if extra:
        raise HierarchyError(
            f"Nodes {_show(extra, 3)} have no children but are not in leaves; list every "
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
            + (f"; missing {_show(missing, 3)}" if missing else "")
            + (f"; not internal nodes: {_show(bad, 3)}" if bad else "")
            + ("; has duplicate names" if dup else "")
            + "."
        )
    return internal


def _missing(v: Any) -> bool:
    """A missing value in a path row or a partial label: None, NaN or blank."""
    return v is None or (isinstance(v, float) and v != v) or str(v).strip() == ""


def _path_level(rows: list[list[Any]], j: int, lname: str, prefix: str, prev: list[str],
                disambiguate: bool) -> list[str]:
    """Each row's node name at path column ``j`` (parents ``prev``): ``"(no <level>)"`` for a
    missing value, ``prefix`` in front, a homonym under two parents renamed ``"<v> (<parent>)"``
    (or an error when ``disambiguate`` is false)."""
    raw = []
    for r in rows:
        v = f"(no {lname})" if _missing(r[j]) else str(r[j]).strip()
        raw.append(f"{prefix}{v}")
    parents_of: dict[str, set[str]] = {}
    for v, p in zip(raw, prev):
        parents_of.setdefault(v, set()).add(p)
    names = []
    for v, p in zip(raw, prev):
        if len(parents_of[v]) > 1:
            if not disambiguate:
                ps = sorted(parents_of[v])
                raise HierarchyError(
                    f"Node {v!r} has two parents ({ps[0]!r} and {ps[1]!r}); a tree needs "
                    "one parent per node (pass disambiguate=True to rename homonyms)."
                )
            names.append(f"{v} ({p})")
        else:
            names.append(v)
    return names


class LabelHierarchy:
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

    def group_matrix(self, level: int | str) -> np.ndarray:
        """``(num_leaves, num_classes(level))`` 0/1 float matrix: leaf i belongs to class j."""
        m = np.zeros((len(self._leaves), self.num_classes(level)), dtype=np.float32)
        m[np.arange(len(self._leaves)), self.ancestor_map(level)] = 1.0
        return m

    def lca_depth_matrix(self) -> np.ndarray:
        """``(L, L)`` depth of the lowest common ancestor of every pair of leaves."""
        n = len(self._leaves)
        out = np.zeros((n, n), dtype=np.int64)
        for lv in range(1, self._depth + 1):
            a = self.ancestor_map(lv)
            out += a[:, None] == a[None, :]
        d = np.array([self._depth_of[x] for x in self._leaves], dtype=np.int64)
        np.fill_diagonal(out, d)
        return np.minimum(out, np.minimum(d[:, None], d[None, :]))

    def leaf_distance_matrix(self) -> np.ndarray:
        """``(L, L)`` tree distance between every pair of leaves (mistake severity)."""
        d = np.array([self._depth_of[x] for x in self._leaves], dtype=np.int64)
        return d[:, None] + d[None, :] - 2 * self.lca_depth_matrix()

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

    def render(self, depth: int | None = None, max_children: int = 12) -> str:
        """A text tree down to ``depth`` levels; each node shows its leaf count."""
        depth = self._depth if depth is None else depth
        counts: dict[str, int] = {}
        for leaf in self._leaves:
            for n in self.ancestors(leaf, include_self=True):
                counts[n] = counts.get(n, 0) + 1
        lines: list[str] = []

        def label(n: str) -> str:
            t = self.titles.get(n)
            k = counts[n]
            tail = f" ({t})" if t and t != n else ""
            return f"{n}{tail} [{k} {'leaves' if k != 1 else 'leaf'}]" if n not in self._leaf_index else f"{n}{tail}"

        def walk(n: str, prefix: str, d: int) -> None:
            kids = self._children[n]
            if d >= depth or not kids:
                return
            shown = kids[:max_children]
            for i, c in enumerate(shown):
                last = i == len(shown) - 1 and len(kids) <= max_children
                lines.append(f"{prefix}{'`-- ' if last else '|-- '}{label(c)}")
                walk(c, prefix + ("    " if last else "|   "), d + 1)
            if len(kids) > max_children:
                lines.append(f"{prefix}`-- ... {len(kids) - max_children} more")

        lines.append(label(self._root))
        walk(self._root, "", 0)
        return "\n".join(lines)

    # ------------------------------------------------------------------ derived trees
    def subset(self, leaves: Sequence[str], name: str | None = None) -> LabelHierarchy:
        """The tree restricted to ``leaves`` (in the given order) and their ancestors.

        Internal nodes left without any chosen leaf are dropped; an internal node whose leaves
        all go keeps no class. (A node that loses all its children would otherwise become a
        leaf, so it is removed too.)
        """
        leaves = [str(x) for x in leaves]
        for x in leaves:
            self.leaf_index(x)  # one-line error for an unknown leaf
        keep: set[str] = set()
        for leaf in leaves:
            keep.update(self.ancestors(leaf, include_self=True))
        parent = {n: p for n, p in self._parent.items() if n in keep}
        return LabelHierarchy(
            parent, self._root, leaves, [n for n in self._internal if n in keep],
            name=name or self.name, titles=self.titles,
            meta={**self.meta, "subset_of": self.content_hash},
        )

    def compress(self, name: str | None = None) -> LabelHierarchy:
        """Remove internal nodes with a single child (their child takes their place).

        Such nodes repeat the same partition on two levels; WordNet has many.
        """
        parent = dict(self._parent)
        single = [n for n in self._internal if len(self._children[n]) == 1]
        drop = set(single)
        new_parent = {}
        for n, p in parent.items():
            if n in drop:
                continue
            while p in drop:
                p = parent[p]
            new_parent[n] = p
        return LabelHierarchy(
            new_parent, self._root, self._leaves, [n for n in self._internal if n not in drop],
            name=name or self.name, titles=self.titles,
            meta={**self.meta, "compressed_from": self.content_hash},
        )

    def height_map(self, k: int) -> tuple[list[str], np.ndarray]:
        """Cut ``k`` steps up from the leaves: each leaf -> its ``k``-th ancestor.

        A leaf fewer than ``k + 1`` steps below the root stops at its level-1 ancestor (never
        the root). Returns the class names (in order of their first leaf) and, per leaf, the
        class index. The partitions nest as ``k`` grows. This is how the paper coarsens
        ImageNet-21k: from the leaves upwards until a few dozen classes remain.
        """
        if int(k) < 0:
            raise HierarchyError(f"The 'k' parameter must be >= 0. Got {k!r} instead.")
        names: list[str] = []
        index: dict[str, int] = {}
        out = np.empty(len(self._leaves), dtype=np.int64)
        for i, leaf in enumerate(self._leaves):
            p = self.path(leaf)  # root .. leaf
            node = p[max(len(p) - 1 - int(k), min(1, len(p) - 1))]
            if node not in index:
                index[node] = len(names)
                names.append(node)
            out[i] = index[node]
        return names, out

    def height_sizes(self) -> list[int]:
        """Number of classes for ``k = 0, 1, ...`` steps up from the leaves, until it stops changing."""
        sizes = []
        for k in range(self._depth + 1):
            sizes.append(len(self.height_map(k)[0]))
            if len(sizes) > 1 and k >= self._depth - 1:
                break
        return sizes

    def cut_from_leaves(self, k: int | None = None, max_classes: int | None = None,
                        name: str | None = None) -> LabelHierarchy:
        """A two-level hierarchy (root -> cut classes -> leaves), ``k`` steps up from the leaves.

        Give ``k``, or ``max_classes`` to take the smallest ``k`` whose cut has at most that
        many classes. Leaves that are their own class (k=0 or depth-1 leaves) stay at level 1.
        """
        if (k is None) == (max_classes is None):
            raise HierarchyError("Give exactly one of 'k' and 'max_classes' to cut_from_leaves.")
        if k is None:
            for k in range(self._depth + 1):
                if len(self.height_map(k)[0]) <= int(max_classes):
                    break
            else:
                raise HierarchyError(
                    f"No cut of {self.name!r} has at most {max_classes} classes; the coarsest has "
                    f"{len(self.height_map(self._depth)[0])}."
                )
        names, idx = self.height_map(k)
        parent = {}
        for i, leaf in enumerate(self._leaves):
            cls = names[idx[i]]
            parent[leaf] = self._root if cls == leaf else cls
        for cls in names:
            if cls not in self._leaf_index:
                parent[cls] = self._root
        internal = [c for c in names if c not in self._leaf_index]
        return LabelHierarchy(
            parent, self._root, self._leaves, internal,
            name=name or f"{self.name}@up{k}", titles=self.titles,
            meta={**self.meta, "cut_from": self.content_hash, "steps_up": int(k)},
        )

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (stable: sorted parent map, explicit orders, the content hash)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "content_hash": self.content_hash,
            **self._structure(),
            "level_names": self.level_names,
            "level_sizes": self.level_sizes(),
            "titles": dict(sorted(self.titles.items())),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "dict") -> LabelHierarchy:
        """Inverse of :meth:`to_dict`; checks the format and, if present, the content hash."""
        if not isinstance(d, Mapping):
            raise HierarchyError(f"Hierarchy {source} must be a JSON object. Got {type(d).__name__}.")
        if d.get("format", FORMAT) != FORMAT:
            raise HierarchyError(f"Hierarchy {source} has format {d.get('format')!r}; expected {FORMAT!r}.")
        missing = [k for k in ("root", "leaves", "parent") if k not in d]
        if missing:
            raise HierarchyError(f"Hierarchy {source} lacks key(s) {', '.join(missing)}.")
        if not isinstance(d["parent"], Mapping) or not isinstance(d["leaves"], list):
            raise HierarchyError(f"Hierarchy {source}: 'parent' must be an object and 'leaves' a list.")
        for child, par in d["parent"].items():
            if isinstance(par, list) and len(par) > 1:
                raise HierarchyError(
                    f"Hierarchy {source}: node {child!r} has {len(par)} parents ({_show(par, 3)}); a tree "
                    "needs exactly one parent per node."
                )
            if not isinstance(par, str):
                raise HierarchyError(f"Hierarchy {source}: the parent of {child!r} must be a name (string). Got {par!r}.")
        if not isinstance(d["root"], str):
            raise HierarchyError(f"Hierarchy {source}: 'root' must be a name (string). Got {d['root']!r}.")
        bad_leaf = next((x for x in d["leaves"] if not isinstance(x, str)), None)
        if bad_leaf is not None:
            raise HierarchyError(f"Hierarchy {source}: leaves must be names (strings). Got {str(bad_leaf)[:40]!r}.")
        for key, kind in (("internal", list), ("level_names", list), ("titles", Mapping), ("meta", Mapping)):
            if d.get(key) is not None and not isinstance(d[key], kind):
                what = "a list" if kind is list else "an object"
                raise HierarchyError(f"Hierarchy {source}: {key!r} must be {what}. Got {type(d[key]).__name__}.")
        try:
            h = cls(
                d["parent"], d["root"], d["leaves"], d.get("internal"),
                name=d.get("name", "hierarchy"), level_names=d.get("level_names"),
                titles=d.get("titles"), meta=d.get("meta"),
            )
        except HierarchyError as exc:  # say which file the broken structure came from
            if source == "dict":
                raise
            raise HierarchyError(f"Hierarchy {source}: {exc}") from None
        want = d.get("content_hash")
        if want is not None and want != h.content_hash:
            raise HierarchyError(
                f"Hierarchy {source} records content hash {want!r} but its structure hashes to "
                f"{h.content_hash!r}; the file was edited or corrupted."
            )
        return h

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)

    def save(self, path: Path | str) -> Path:
        """Write the JSON form atomically (a one-line error when ``path`` cannot be written)."""
        from granularity.utils.io import write_json

        path = Path(path)
        if path.is_dir():
            raise HierarchyError(f"Cannot write hierarchy file {str(path)!r}: it is a folder; give a file name.")
        try:
            write_json(path, self.to_dict())
        except OSError as exc:
            raise HierarchyError(f"Cannot write hierarchy file {str(path)!r} ({exc.strerror or exc}).") from None
        return path

    @classmethod
    def load(cls, path: Path | str) -> LabelHierarchy:
        from granularity.utils.io import read_json

        try:
            data = read_json(path)
        except OSError as exc:  # a folder, no permission, an I/O error
            raise HierarchyError(f"Hierarchy file {str(path)!r} cannot be read ({exc.strerror or exc}).") from None
        except RecursionError:
            raise HierarchyError(f"Hierarchy file {str(path)!r} nests too deeply to be a hierarchy.") from None
        return cls.from_dict(data, source=f"file {str(path)!r}")

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_parent_map(
        cls,
        mapping: Mapping[str, Any],
        root: str | None = None,
        leaves: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> LabelHierarchy:
        """Build from ``{child: parent}``.

        A value may also be a one-element list/tuple/set (e.g. a map read from a file that
        allows several parents); each child must have exactly one parent. ``root`` defaults to
        the single parent that is nobody's child. ``leaves`` fixes the label order (default:
        the childless nodes in the mapping's key order).
        """
        parent: dict[str, str] = {}
        for child, par in dict(mapping).items():
            if isinstance(par, (list, tuple, set, frozenset)):
                pars = sorted({str(p) for p in par})
                if len(pars) != 1:
                    raise HierarchyError(
                        f"Node {str(child)!r} has {len(pars)} parents ({_show(pars, 3)}); a tree "
                        "needs exactly one parent per node."
                    )
                par = pars[0]
            parent[str(child)] = str(par)
        if root is None:
            tops = sorted({p for p in parent.values() if p not in parent})
            if len(tops) != 1:
                raise HierarchyError(
                    f"The parent map has {len(tops)} top nodes ({_show(tops, 3)}); a tree has "
                    "exactly one root (pass root=... or add the missing parents)."
                )
            root = tops[0]
        return cls(parent, root, leaves, **kwargs)

    @classmethod
    def from_edges(cls, edges: Iterable[tuple[str, str]], root: str | None = None, **kwargs: Any) -> LabelHierarchy:
        """Build from ``(child, parent)`` pairs; a child listed twice is an error."""
        parent: dict[str, str] = {}
        for child, par in edges:
            child, par = str(child), str(par)
            if child in parent:
                if parent[child] == par:
                    raise HierarchyError(f"Duplicate name: edge {child!r} -> {par!r} is listed twice.")
                raise HierarchyError(
                    f"Node {child!r} has two parents ({parent[child]!r} and {par!r}); a tree needs "
                    "exactly one parent per node."
                )
            parent[child] = par
        return cls.from_parent_map(parent, root=root, **kwargs)

    @classmethod
    def from_pairs(
        cls,
        fine_labels: Any,
        coarse_labels: Any,
        fine_names: Sequence[str] | None = None,
        coarse_names: Sequence[str] | None = None,
        *,
        root: str = "root",
        name: str = "pairs",
        level_names: Sequence[str] | None = ("root", "coarse", "fine"),
        meta: Mapping[str, Any] | None = None,
    ) -> LabelHierarchy:
        """Two-level hierarchy from per-sample (fine, coarse) label pairs.

        Checks that each fine label occurs with exactly one coarse label, that every fine
        label (``0..len(fine_names)-1``) occurs, and that every coarse class has a fine label.
        Level 1 keeps the coarse label order, level 2 the fine label order, so
        ``relabel(fine, 1) == coarse`` on the data.
        """
        fine = np.asarray(fine_labels).ravel()
        coarse = np.asarray(coarse_labels).ravel()
        if fine.shape != coarse.shape:
            raise HierarchyError(
                f"fine_labels and coarse_labels must have the same length. Got {fine.size} and "
                f"{coarse.size} instead."
            )
        if fine.size == 0:
            raise HierarchyError("fine_labels and coarse_labels are empty; the levels would be empty.")
        for arr, what in ((fine, "fine_labels"), (coarse, "coarse_labels")):
            if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
                raise HierarchyError(f"{what} must be non-negative integers. Got dtype {arr.dtype}, min {arr.min()}.")
        n_fine = len(fine_names) if fine_names is not None else int(fine.max()) + 1
        n_coarse = len(coarse_names) if coarse_names is not None else int(coarse.max()) + 1
        if int(fine.max()) >= n_fine:
            raise HierarchyError(f"Fine label {int(fine.max())} is missing from fine_names ({n_fine} names).")
        if int(coarse.max()) >= n_coarse:
            raise HierarchyError(f"Coarse label {int(coarse.max())} is missing from coarse_names ({n_coarse} names).")
        fnames = [str(x) for x in fine_names] if fine_names is not None else [f"fine_{i}" for i in range(n_fine)]
        cnames = [str(x) for x in coarse_names] if coarse_names is not None else [f"coarse_{i}" for i in range(n_coarse)]
        for names, what in ((fnames, "fine_names"), (cnames, "coarse_names")):
            if len(set(names)) != len(names):
                dup = sorted({x for x in names if names.count(x) > 1})
                raise HierarchyError(f"Duplicate name(s) {_show(dup, 3)} in {what}.")
        clash = sorted(set(fnames) & (set(cnames) | {root}))
        if clash:
            raise HierarchyError(
                f"Duplicate name(s) {_show(clash, 3)}: used both as fine and coarse (or root) "
                "names; node names must be unique."
            )
        pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)  # (P, 2) sorted by fine
        counts = np.bincount(pairs[:, 0], minlength=n_fine)
        if counts.max() > 1:
            f = int(np.argmax(counts > 1))
            cs = [cnames[c] for c in pairs[pairs[:, 0] == f, 1]]
            raise HierarchyError(
                f"Fine label {f} ({fnames[f]!r}) has two parents: it occurs with coarse labels "
                f"{_show(cs, 3)}; a tree needs exactly one coarse label per fine label."
            )
        if counts.min() == 0:
            f = int(np.argmin(counts))
            raise HierarchyError(
                f"Fine label {f} ({fnames[f]!r}) never occurs in the pairs, so its coarse parent "
                "is unknown; give pairs covering every fine label."
            )
        used = np.bincount(pairs[:, 1], minlength=n_coarse)
        if used.min() == 0:
            c = int(np.argmin(used))
            raise HierarchyError(
                f"Coarse class {c} ({cnames[c]!r}) has no fine labels (an empty class); drop it "
                "from coarse_names or give its pairs."
            )
        parent = {fnames[f]: cnames[c] for f, c in pairs.tolist()}
        parent.update({c: root for c in cnames})
        return cls(
            parent, root, fnames, cnames, name=name, level_names=level_names,
            meta={"source": "pairs", **(meta or {})},
        )

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[Sequence[Any]],
        level_names: Sequence[str] | None = None,
        *,
        root: str = "root",
        name: str = "paths",
        prefix_levels: bool = False,
        disambiguate: bool = True,
        meta: Mapping[str, Any] | None = None,
    ) -> LabelHierarchy:
        """Balanced hierarchy from level-path rows ``[level1, level2, ..., leaf]`` (one per label).

        Row ``i`` is leaf label ``i``. A missing value (``None``, ``""``, NaN) becomes the node
        ``"(no <level>)"`` under its parent. With ``prefix_levels`` node names are
        ``"<level name>:<value>"`` for internal levels (so equal values on different levels are
        different nodes; leaves keep their plain names).
        A value that occurs under two different parents (a homonym, e.g. a plant and an animal
        genus) is renamed ``"<value> (<parent>)"`` when ``disambiguate`` is true and is an error
        otherwise. ``level_names`` names levels 1..depth (the root level is ``root``).
        """
        rows = [list(p) for p in paths]
        if not rows:
            raise HierarchyError("No paths given; a hierarchy needs at least one leaf.")
        width = len(rows[0])
        if width == 0 or any(len(r) != width for r in rows):
            raise HierarchyError(f"All paths must have the same length >= 1 (the first has {width}).")
        if level_names is not None and len(level_names) != width:
            raise HierarchyError(f"level_names has {len(level_names)} names for paths of length {width}.")
        lnames = [str(x) for x in level_names] if level_names is not None else [f"level{j + 1}" for j in range(width)]
        for j in range(width):
            if all(_missing(r[j]) for r in rows):
                raise HierarchyError(f"Level {lnames[j]!r} is empty (no path has a value there); drop it.")
        parent: dict[str, str] = {}
        internal: list[str] = []
        leaves: list[str] = []
        prev = [root] * len(rows)
        for j in range(width):
            prefix = f"{lnames[j]}:" if prefix_levels and j < width - 1 else ""
            names = _path_level(rows, j, lnames[j], prefix, prev, disambiguate)
            for i, (v, p) in enumerate(zip(names, prev)):
                if j == width - 1:
                    if v in parent or v == root:
                        raise HierarchyError(f"Duplicate name: leaf {v!r} (row {i}) occurs twice or clashes with another node.")
                    leaves.append(v)
                    parent[v] = p
                elif v not in parent:
                    if v == root:
                        raise HierarchyError(f"Duplicate name: node {v!r} clashes with the root name.")
                    parent[v] = p
                    internal.append(v)
                elif parent[v] != p:
                    raise HierarchyError(
                        f"Duplicate name: {v!r} appears on two levels or under two parents; pass "
                        "prefix_levels=True to keep levels apart."
                    )
            prev = names
        return cls(
            parent, root, leaves, internal, name=name, level_names=["root", *lnames],
            meta={"source": "paths", **(meta or {})},
        )
