"""Reading and writing a :class:`~granularity.hierarchy.LabelHierarchy`: its JSON form (with the
content hash checked on load) and the builders from parent maps, edges, label pairs and paths.

A mixin of :class:`~granularity.hierarchy.structure.LabelHierarchy` (classmethods build with
``cls``, so it needs no import of the class).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from granularity.errors import HierarchyError

FORMAT = "granularity.label-hierarchy"
FORMAT_VERSION = 1


def show(items: Iterable[Any], n: int = 5) -> str:
    items = list(items)
    text = ", ".join(repr(x) for x in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")



def missing(v: Any) -> bool:
    """A missing value in a path row or a partial label: None, NaN or blank."""
    return v is None or (isinstance(v, float) and v != v) or str(v).strip() == ""


def _path_level(rows: list[list[Any]], j: int, lname: str, prefix: str, prev: list[str],
                disambiguate: bool) -> list[str]:
    """Each row's node name at path column ``j`` (parents ``prev``): ``"(no <level>)"`` for a
    missing value, ``prefix`` in front, a homonym under two parents renamed ``"<v> (<parent>)"``
    (or an error when ``disambiguate`` is false)."""
    raw = []
    for r in rows:
        v = f"(no {lname})" if missing(r[j]) else str(r[j]).strip()
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




def find_cycle(parent: Mapping[str, str]) -> list[str]:
    """A cycle of a ``{child: parent}`` map, closed (``["a", "b", "a"]``), or ``[]`` when every
    walk up ends at a node without a parent."""
    done: set[str] = set()
    for start in parent:
        path: list[str] = []
        node: str | None = start
        while node in parent and node not in done:
            if node in path:
                return path[path.index(node):] + [node]
            path.append(node)
            node = parent[node]
        done.update(path)
    return []


class Serialisation:
    """JSON form and builders (methods of ``LabelHierarchy``)."""

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
                    f"Hierarchy {source}: node {child!r} has {len(par)} parents ({show(par, 3)}); a tree "
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
                        f"Node {str(child)!r} has {len(pars)} parents ({show(pars, 3)}); a tree "
                        "needs exactly one parent per node."
                    )
                par = pars[0]
            parent[str(child)] = str(par)
        if root is None:
            tops = sorted({p for p in parent.values() if p not in parent})
            if not tops:
                raise HierarchyError(
                    f"Cycle in the hierarchy: {' -> '.join(find_cycle(parent))}; every node must "
                    "lead up to one root (a name that has no parent)."
                )
            if len(tops) != 1:
                raise HierarchyError(
                    f"The parent map has {len(tops)} top nodes ({show(tops, 3)}); a tree has "
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
                raise HierarchyError(f"Duplicate name(s) {show(dup, 3)} in {what}.")
        clash = sorted(set(fnames) & (set(cnames) | {root}))
        if clash:
            raise HierarchyError(
                f"Duplicate name(s) {show(clash, 3)}: used both as fine and coarse (or root) "
                "names; node names must be unique."
            )
        pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)  # (P, 2) sorted by fine
        counts = np.bincount(pairs[:, 0], minlength=n_fine)
        if counts.max() > 1:
            f = int(np.argmax(counts > 1))
            cs = [cnames[c] for c in pairs[pairs[:, 0] == f, 1]]
            raise HierarchyError(
                f"Fine label {f} ({fnames[f]!r}) has two parents: it occurs with coarse labels "
                f"{show(cs, 3)}; a tree needs exactly one coarse label per fine label."
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
            if all(missing(r[j]) for r in rows):
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
