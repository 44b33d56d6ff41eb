"""Trees and matrices derived from a :class:`~granularity.hierarchy.LabelHierarchy`: subsets,
compressed chains, cuts from the leaves, leaf-pair matrices and a text rendering.

A mixin of :class:`~granularity.hierarchy.structure.LabelHierarchy` (it builds new trees with
``type(self)``, so it needs no import of the class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from granularity.errors import HierarchyError


class Derivations:
    """Derived trees and matrices (methods of ``LabelHierarchy``)."""

    _leaves: list[str]
    _internal: list[str]
    _parent: dict[str, str]
    _children: dict[str, list[str]]
    _depth_of: dict[str, int]
    _leaf_index: dict[str, int]
    _root: str
    _depth: int

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
        return type(self)(
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
        return type(self)(
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
        return type(self)(
            parent, self._root, self._leaves, internal,
            name=name or f"{self.name}@up{k}", titles=self.titles,
            meta={**self.meta, "cut_from": self.content_hash, "steps_up": int(k)},
        )
