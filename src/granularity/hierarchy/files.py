"""A hierarchy from a file, for any data set, and matching a data set's classes to its leaves.

:func:`load_hierarchy_file` reads three formats, told apart by extension and, for other
extensions, by content:

* **JSON** (``.json``, or text starting with ``{``): the project's export
  (``granularity hierarchy export`` / ``LabelHierarchy.save``).
* **Parent map** (``.csv``, ``.tsv``, or lines of two fields separated by a tab or one comma):
  one ``child,parent`` row per edge, an optional ``child,parent`` header. The root is the one
  parent that is nobody's child; the leaves are the childless nodes in row order.
* **Paths** (``.txt``/``.paths``, or lines holding ``/``): one path per class from the top down,
  ``Animalia/Chordata/Aves/Corvidae/Corvus corax``. Paths may have different lengths (leaves at
  different depths). If every path starts with the same name, that name is the root, else
  the root is ``"root"``. A name under two different parents (a homonym such as a plant and an
  animal genus) becomes ``"name (parent)"``. A line that is a prefix of another only names an
  internal node. Leaves are in line order.

Blank lines and lines starting with ``#`` are skipped in the text formats.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Sequence
from pathlib import Path

from granularity.errors import HierarchyError
from granularity.hierarchy.io import show as _show
from granularity.hierarchy.structure import LabelHierarchy

FORMATS = ("json", "parent-map", "paths")
_EXT = {".json": "json", ".csv": "parent-map", ".tsv": "parent-map", ".paths": "paths"}


def _lines(text: str) -> list[tuple[int, str]]:
    return [(i + 1, ln.rstrip("\r")) for i, ln in enumerate(text.split("\n"))
            if ln.strip() and not ln.lstrip().startswith("#")]


def detect_format(path: Path, text: str) -> str:
    """``json``, ``parent-map`` or ``paths`` from the extension, else from the content."""
    if path.suffix.lower() in _EXT:
        return _EXT[path.suffix.lower()]
    if text.lstrip().startswith("{"):
        return "json"
    lines = [ln for _, ln in _lines(text)]
    if lines and all("\t" in ln for ln in lines):
        return "parent-map"
    if lines and all("/" in ln for ln in lines):
        return "paths"
    if lines and all(ln.count(",") == 1 for ln in lines):
        return "parent-map"
    raise HierarchyError(
        f"Cannot tell the format of hierarchy file {str(path)!r}: expected hierarchy JSON, "
        "child,parent rows (CSV/TSV) or one path per class like 'Animalia/Chordata/Aves'; "
        "name it .json, .csv, .tsv or .paths."
    )


def _read_parent_map(path: Path, text: str) -> LabelHierarchy:
    delim = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    edges = []
    for lineno, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise HierarchyError(
                f"Hierarchy file {str(path)!r} line {lineno}: expected 2 fields (child,parent), "
                f"got {len(row)}: {_show(row, 4)}."
            )
        child, par = row[0].strip(), row[1].strip()
        if not edges and (child.lower(), par.lower()) == ("child", "parent"):
            continue  # header
        if not child or not par:
            raise HierarchyError(f"Hierarchy file {str(path)!r} line {lineno}: empty child or parent name.")
        edges.append((child, par))
    if not edges:
        raise HierarchyError(f"Hierarchy file {str(path)!r} has no child,parent rows.")
    try:
        return LabelHierarchy.from_edges(edges, name=path.stem, meta={"source": "parent-map", "file": str(path)})
    except HierarchyError as exc:
        raise HierarchyError(f"Hierarchy file {str(path)!r}: {exc}") from None


def _read_paths(path: Path, text: str) -> LabelHierarchy:
    rows = []
    for lineno, ln in _lines(text):
        parts = [p.strip() for p in ln.strip().strip("/").split("/")]
        if any(not p for p in parts):
            raise HierarchyError(f"Hierarchy file {str(path)!r} line {lineno}: empty name in path {ln.strip()!r}.")
        rows.append((lineno, parts))
    if not rows:
        raise HierarchyError(f"Hierarchy file {str(path)!r} has no paths.")
    tops = {parts[0] for _, parts in rows}
    root = tops.pop() if len(tops) == 1 and all(len(p) > 1 for _, p in rows) else "root"
    if root != "root":
        rows = [(n, parts[1:]) for n, parts in rows]
    # a name under two parents (a homonym) is told apart by its parent
    parents_of: dict[str, set[str]] = {}
    for _, parts in rows:
        for par, name in zip([root, *parts], parts):
            parents_of.setdefault(name, set()).add(par)
    parent: dict[str, str] = {}
    order: list[str] = []
    for lineno, parts in rows:
        prev = root
        for name in parts:
            node = f"{name} ({prev})" if len(parents_of[name]) > 1 else name
            if node == root:
                raise HierarchyError(f"Hierarchy file {str(path)!r} line {lineno}: {name!r} is also the root name.")
            if node not in parent:
                parent[node] = prev
            elif parent[node] != prev:  # only after renaming clashes, e.g. 'a (b)' spelled out
                raise HierarchyError(f"Hierarchy file {str(path)!r} line {lineno}: node {node!r} has two parents.")
            prev = node
        if prev in order:
            raise HierarchyError(f"Hierarchy file {str(path)!r} line {lineno}: duplicate path to {prev!r}.")
        order.append(prev)
    has_child = set(parent.values())
    leaves = [n for n in order if n not in has_child]
    try:
        return LabelHierarchy(parent, root, leaves, name=path.stem, meta={"source": "paths", "file": str(path)})
    except HierarchyError as exc:
        raise HierarchyError(f"Hierarchy file {str(path)!r}: {exc}") from None


def load_hierarchy_file(path: str | Path) -> LabelHierarchy:
    """A hierarchy from a JSON export, a child,parent CSV/TSV or a file of paths (see module doc)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HierarchyError(f"Hierarchy file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HierarchyError(f"Hierarchy file {str(path)!r} cannot be read as UTF-8 text ({exc}).") from None
    fmt = detect_format(path, text)
    if fmt == "json":
        return LabelHierarchy.load(path)
    if fmt == "parent-map":
        return _read_parent_map(path, text)
    return _read_paths(path, text)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().casefold()


def match_classes(hierarchy: LabelHierarchy, class_names: Sequence[str]) -> LabelHierarchy:
    """The hierarchy with its leaves in the data set's class order (class ``i`` = leaf ``i``).

    Each class name is matched to a leaf by its name, else by its title (WordNet leaves are
    wnids titled with a word), else by either up to case, spaces, ``_`` and ``-`` when that
    finds exactly one leaf. Leaves of the hierarchy that no class names are dropped (with the
    internal nodes left without leaves). Unmatched names, classes that are internal nodes and
    two classes on one leaf are one-line errors.
    """
    h = hierarchy
    names = [str(c) for c in class_names]
    if not names:
        raise HierarchyError("The class list is empty; give the data set's class names.")
    exact = {leaf: leaf for leaf in h.leaves}
    by_title: dict[str, list[str]] = {}
    by_norm: dict[str, set[str]] = {}
    for leaf in h.leaves:
        by_title.setdefault(h.titles.get(leaf, leaf), []).append(leaf)
        for key in {_norm(leaf), _norm(h.titles.get(leaf, leaf))}:
            by_norm.setdefault(key, set()).add(leaf)
    chosen, unmatched, internal = [], [], []
    for c in names:
        hit = exact.get(c) or (by_title[c][0] if len(by_title.get(c, [])) == 1 else None)
        if hit is None and len(by_norm.get(_norm(c), ())) == 1:
            hit = next(iter(by_norm[_norm(c)]))
        if hit is None:
            (internal if c in h else unmatched).append(c)
        chosen.append(hit)
    if unmatched:
        pool = list(exact) + list(by_title)
        hints = [f"{c!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(c, pool, n=1, cutoff=0.6))
                 else repr(c) for c in unmatched[:5]]
        more = f", ... ({len(unmatched)} in all)" if len(unmatched) > 5 else ""
        raise HierarchyError(
            f"{len(unmatched)} class name(s) match no leaf of hierarchy {h.name!r}: {', '.join(hints)}{more}."
        )
    if internal:
        raise HierarchyError(
            f"Class(es) {_show(internal, 3)} are internal nodes of {h.name!r}, not leaves; a class "
            "list names leaves (label samples at internal nodes with labels_at_level)."
        )
    dup = sorted({x for x in chosen if chosen.count(x) > 1})
    if dup:
        which = [c for c, x in zip(names, chosen) if x == dup[0]]
        raise HierarchyError(f"Classes {_show(which, 3)} all match leaf {dup[0]!r}; each class needs its own leaf.")
    if chosen == h.leaves:
        return h
    return h.subset(chosen)


def display_name(h: LabelHierarchy, node: str) -> str:
    """A node as a source spells it: its title, else its name without a ``"<level name>:"``
    prefix (iNat and label-column trees prefix internal nodes with their level)."""
    text = h.titles.get(node, node)
    for level in h.level_names or ():
        if text.startswith(f"{level}:"):
            return text[len(level) + 1:]
    return text


def _key(h: LabelHierarchy, node: str) -> set[str]:
    """How a node may be spelt in another source: its name and :func:`display_name`, without
    a homonym's ``" (<parent>)"`` suffix, up to case, spaces, ``_`` and ``-``."""
    return {_norm(re.sub(r"\s*\([^()]*\)$", "", text)) for text in (node, display_name(h, node))}


def disagreements(own: LabelHierarchy, other: LabelHierarchy) -> list[tuple[str, str, str]]:
    """Leaves that two trees over the same leaves (in the same order) place differently:
    ``(leaf, ancestor in own, the node of other k steps above the leaf)`` per leaf whose
    ancestor ``k`` steps up in ``own`` is no ancestor in ``other`` (by name or title, see
    :func:`_key`), in leaf order. ``other`` may have more levels (a family above the genus
    the columns name): only what ``own`` says must be found in ``other``."""
    out = []
    for leaf, oleaf in zip(own.leaves, other.leaves):
        mine = own.ancestors(leaf)[:-1]  # without the root
        theirs = other.ancestors(oleaf)[:-1]
        known = set().union(*(_key(other, n) for n in theirs)) if theirs else set()
        for k, node in enumerate(mine):
            if not _key(own, node) & known:
                there = theirs[min(k, len(theirs) - 1)] if theirs else other.root
                out.append((leaf, node, there))
                break
    return out
