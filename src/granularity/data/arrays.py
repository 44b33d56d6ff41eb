"""Generic arrays: a table (CSV / Parquet) or an ``.npz``, with one label per level.

Labels are given coarse -> fine (``label_columns=["coarse", "fine"]``); the leaves are the
sorted distinct values of the finest level, and the hierarchy links consecutive levels (each
finer value must have exactly one coarser parent). Features become ``float32 (N, D)``; an
``.npz`` holding ``uint8`` images ``(N, C, H, W)`` or ``(N, H, W)`` keeps them as images.

Train/test: a table folder with ``train.<ext>`` and ``test.<ext>``; or one file with a
``split_column`` (values ``train``/``test``; ``val``/``valid``/``validation`` count as test);
or, failing both, a stratified random split of ``test_fraction`` drawn with ``seed``. An
``.npz`` holds ``x_train``/``x_test`` (and ``<label>_train``/``<label>_test``), or ``x``, the
labels and an optional ``split`` array, or only ``x`` and labels (random split).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granularity.data.base import RealDataset, Split, stratified_indices
from granularity.data.hierarchies import encode_levels
from granularity.errors import DataError, param_error, suggest

TABLE_EXTS = (".csv", ".tsv", ".parquet", ".pq")
TEST_NAMES = {"test", "val", "valid", "validation"}


def _check_common(label_columns: Any, test_fraction: float, param: str) -> list[str]:
    if isinstance(label_columns, str):
        label_columns = [label_columns]
    if not label_columns or not all(isinstance(c, str) for c in label_columns):
        raise param_error(param, "a non-empty list of names, coarse to fine", label_columns)
    if len(set(label_columns)) != len(label_columns):
        raise param_error(param, "distinct names", label_columns)
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise param_error("test_fraction", "a float in (0, 1)", test_fraction)
    return list(label_columns)


def _check_labels(where: str, lname: str, lab: np.ndarray, n_rows: int, part: str = "") -> None:
    """One label array: 1-D, one value per row, no missing values (one-line DataError)."""
    lab = np.asarray(lab)
    split = f" in the {part} split" if part else ""
    if lab.ndim != 1:
        raise DataError(f"{where}: label {lname!r} must be 1-D (one label per row); got shape {lab.shape}{split}.")
    if len(lab) != n_rows:
        raise DataError(f"{where}: label {lname!r} has {len(lab)} values for {n_rows} rows{split}.")
    if lab.dtype.kind in "fO":
        bad = np.flatnonzero([v is None or (isinstance(v, float) and np.isnan(v)) for v in lab.tolist()])
        if len(bad):
            raise DataError(f"{where}: label {lname!r} has {len(bad)} missing value(s){split} (first in row {bad[0]}).")


def split_is_test(values: np.ndarray, where: str, name: str) -> np.ndarray:
    """Which rows a split column/array puts in the test split. Allowed: the strings train, test,
    val, valid, validation (any case, spaces stripped), booleans or the integers 0 (train) and
    1 (test); anything else (floats, other names) is a one-line error, never silently 'train'."""
    v = np.asarray(values)
    if v.dtype.kind == "b":
        return v.astype(bool)
    if v.dtype.kind in "iu":
        bad = sorted(set(np.unique(v).tolist()) - {0, 1})
        if bad:
            raise DataError(f"{where}: {name!r} has value {str(bad[0])!r}; allowed: 0 (train) and 1 (test), or the names train, test, val.")
        return v == 1
    if v.dtype.kind not in "USO":
        raise DataError(f"{where}: {name!r} has dtype {v.dtype}; give the names train/test/val or the integers 0 (train) / 1 (test).")
    names = np.char.lower(np.char.strip(v.astype(str)))
    bad = sorted(set(np.unique(names).tolist()) - {"train"} - TEST_NAMES)
    if bad:
        raise DataError(f"{where}: {name!r} has value {bad[0]!r}; allowed: train, test (or val, valid, validation).")
    return np.isin(names, sorted(TEST_NAMES))


def _random_split(y_leaf_raw: np.ndarray, test_fraction: float, seed: int, where: str = "", lname: str = "") -> np.ndarray:
    """Boolean mask of test rows: a stratified draw on the finest labels."""
    try:
        _, codes = np.unique(y_leaf_raw, return_inverse=True)
    except TypeError:
        raise DataError(f"{where}: label {lname!r} mixes value types; use all numbers or all strings.") from None
    n_test = int(round(test_fraction * len(codes)))
    mask = np.zeros(len(codes), dtype=bool)
    mask[stratified_indices(codes, n_test, seed).numpy()] = True
    return mask


def _features(x: np.ndarray, where: str) -> torch.Tensor:
    if x.dtype == np.uint8 and x.ndim in (3, 4):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.unsqueeze(1) if x.ndim == 3 else t  # (N, H, W) -> (N, 1, H, W)
    if x.dtype.kind not in "biuf":
        raise DataError(f"Features in {where} must be numeric; got dtype {x.dtype}.")
    if x.ndim == 0:
        raise DataError(f"Features in {where} must have one row per sample; got a scalar.")
    x = x.reshape(x.shape[0], int(np.prod(x.shape[1:]))).astype(np.float32)  # (N, ...) -> (N, D)
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise DataError(f"Features in {where} contain NaN or infinity (first in row {row}).")
    return torch.from_numpy(x)


def _build(
    name: str,
    version: str,
    parts: dict[str, tuple[np.ndarray, list[np.ndarray]]],
    level_names: list[str],
    where: str,
    info: dict[str, Any],
) -> RealDataset:
    for key, (x, labels) in parts.items():
        if np.ndim(x) == 0:
            raise DataError(f"Features in {where} must have one row per sample; got a scalar.")
        for lname, lab in zip(level_names, labels):
            _check_labels(where, lname, lab, len(x), key)
    leaf_ids, leaf_names, factory = encode_levels(
        [parts["train"][1], parts["test"][1]], level_names, name
    )
    train = Split(_features(parts["train"][0], where), torch.from_numpy(leaf_ids[0]))
    test = Split(_features(parts["test"][0], where), torch.from_numpy(leaf_ids[1]))
    for key, split in (("training", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"{where}: the {key} split is empty; it needs at least one row (check the split values).")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{where}: train and test inputs differ in shape ({tuple(train.x.shape[1:])} vs {tuple(test.x.shape[1:])}).")
    return RealDataset(
        name=name, version=version, train=train, test=test, leaf_names=leaf_names,
        hierarchy_factory=factory, info={"levels": level_names, **info},
    )


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def read_table(path: Path):
    """A pandas DataFrame from a CSV/TSV/Parquet file (one-line errors naming the file)."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except FileNotFoundError:
        raise DataError(f"Table file {path} not found.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"Table file {path} is empty: no header and no rows.") from None
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"Cannot read table file {path}: {msg}.") from None
    if len(df) == 0:
        raise DataError(f"Table file {path} is empty: it has a header ({len(df.columns)} columns) but no rows.")
    return df


def _table_files(root: Path) -> tuple[Path, Path | None]:
    if root.is_file():
        if root.suffix.lower() not in TABLE_EXTS:
            raise param_error("root", f"a table file ({', '.join(TABLE_EXTS)}) or a folder with train/test tables", str(root))
        return root, None
    if root.is_dir():
        found = {}
        for part in ("train", "test"):
            hits = [root / f"{part}{e}" for e in TABLE_EXTS if (root / f"{part}{e}").is_file()]
            if not hits:
                raise DataError(f"Table folder {root} has no {part}{{{','.join(TABLE_EXTS)}}} file.")
            found[part] = hits[0]
        return found["train"], found["test"]
    raise DataError(f"Table {root} not found (a file {'/'.join(TABLE_EXTS)} or a folder with train.* and test.*).")


def _check_columns(df, path: Path, labels: list[str], feature_columns: Sequence[str] | None,
                   check_labels: bool) -> None:
    """The table at ``path`` has the label and feature columns named, no column twice, and
    (``check_labels``) usable labels in every label column."""
    for col in labels + list(feature_columns or []):
        if col not in df.columns:
            raise DataError(
                f"Table {path} has no column {col!r}{suggest(col, map(str, df.columns))}; "
                f"columns are: {', '.join(map(str, df.columns[:20]))}."
            )
    if df.columns.duplicated().any():
        dup = df.columns[df.columns.duplicated()][0]
        raise DataError(f"Table {path} has two columns named {dup!r}.")
    for col in labels if check_labels else ():
        _check_labels(f"Table {path}", col, df[col].to_numpy(), len(df))


def _check_numeric(df, cols: list[str], where: Any) -> None:
    """Every feature column of a table file is numeric (else: the column and its first odd value)."""
    import pandas as pd

    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"Table {where} has no feature column {missing[0]!r}, which the training table has.")
    non_numeric = [c for c in cols if df[c].dtype.kind not in "biuf"]
    if non_numeric:
        col = df[non_numeric[0]]
        odd = col[pd.to_numeric(col, errors="coerce").isna() & col.notna()]
        first = f", e.g. {odd.iloc[0]!r} in row {odd.index[0]}" if len(odd) else ""
        raise DataError(
            f"Table {where}: feature column {non_numeric[0]!r} is not numeric ({col.dtype}{first}); "
            "list the features with feature_columns= or make it a label."
        )


def _numeric_part(df, cols: list[str], labels: list[str], where: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(features, [labels per level])`` of one split (numeric features, checked finite)."""
    x = df[cols].to_numpy()
    if x.dtype.kind == "f" and not np.isfinite(x).all():  # rows of the table, not of the split
        row = df.index[int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])]
        raise DataError(f"Table {where}: the features contain NaN or infinity (first in row {row}).")
    return x, [df[c].to_numpy() for c in labels]


def load_table(
    root: str | Path | None = None,
    *,
    label_columns: Sequence[str] = ("label",),
    feature_columns: Sequence[str] | None = None,
    split_column: str | None = "split",
    test_fraction: float = 0.2,
    seed: int = 0,
    hierarchy_file: str | None = None,
    labels_from: str | None = None,
    label_policy: str | None = None,
) -> RealDataset:
    """Load a CSV/Parquet table: numeric feature columns and one label column per level.

    Parameters
    ----------
    root : file or folder
        One table (with ``split_column`` or randomly split) or a folder with ``train.*`` and
        ``test.*`` tables.
    label_columns : list of str
        Label columns, coarse to fine; the last one gives the leaves.
    feature_columns : list of str, optional
        Default: every other column except ``split_column``.
    split_column : str or None
        Column saying ``train``/``test`` for each row (used only when present).
    test_fraction, seed
        Stratified random test split when the table has no split.
    hierarchy_file : path, optional
        A hierarchy file (:func:`~granularity.hierarchy.load_hierarchy_file`) replacing the tree
        the label columns imply; the finest labels are matched to its leaves by name. With two
        or more label columns the file must agree with them (the first class placed under
        another parent is an error), unless ``labels_from`` is ``"data"`` (the columns win) or
        ``"hierarchy"`` (the file wins).
    label_policy : {"fill", "drop", "own"}, optional
        Partial labels (needs ``hierarchy_file``): a row's labels may stop at an internal node
        (a genus, no species) or leave blanks (a missing ancestor); see :func:`_partial_dataset`.
    """
    labels = _check_common(label_columns, test_fraction, "label_columns")
    _check_policy(label_policy, hierarchy_file)
    if root is None:
        raise param_error("root", "a table file or a folder with train/test tables", None)
    train_path, test_path = _table_files(Path(root).expanduser())
    frames = {"train": read_table(train_path)}
    if test_path is not None:
        frames["test"] = read_table(test_path)
    where = str(train_path if test_path is None else train_path.parent)
    cols = list(feature_columns) if feature_columns is not None else [
        c for c in frames["train"].columns if c not in labels and c != split_column
    ]
    for key, df in frames.items():
        # partial labels may be blank: their checks come with the hierarchy
        path = train_path if key == "train" else test_path
        _check_columns(df, path, labels, feature_columns, check_labels=label_policy is None)
        _check_numeric(df, cols, where if test_path is None else path)
    if test_path is None:
        df = frames.pop("train")
        if split_column and split_column in df.columns:
            is_test = split_is_test(df[split_column].to_numpy(), f"Table {train_path}", split_column)
        else:
            strat = df[labels[-1]].to_numpy() if label_policy is None else _deepest(df, labels)
            is_test = _random_split(strat, test_fraction, seed, f"Table {train_path}", labels[-1])
        frames = {"train": df[~is_test], "test": df[is_test]}
    if not cols:
        raise DataError(f"Table {where} has no feature columns besides the labels {labels}.")
    parts = {key: _numeric_part(df, cols, labels, where) for key, df in frames.items()}
    # two or more label columns: parents a hierarchy file must agree with
    info = {"root": str(root), "features": cols, **({"label_source": "the label columns"} if len(labels) > 1 else {})}
    if label_policy is not None:
        return _partial_dataset(frames, labels, cols, where, hierarchy_file, label_policy, info)
    ds = _build("table", "table-1", parts, labels, where, info)
    if hierarchy_file is not None:
        from granularity.data.registry import with_hierarchy_file

        ds = with_hierarchy_file(ds, hierarchy_file, labels_from)
    return ds


def _check_policy(label_policy: str | None, hierarchy_file: Any) -> None:
    if label_policy is not None:
        from granularity.hierarchy.partial import POLICIES

        if label_policy not in POLICIES:
            raise param_error("label_policy", f"one of {', '.join(POLICIES)} (or None)", label_policy)
        if hierarchy_file is None:
            raise param_error("hierarchy_file", "a hierarchy file when label_policy is set (partial labels are placed in it)", None)


def _deepest(df, labels: list[str]) -> np.ndarray:
    """Per row the finest label given (for stratifying a random split of partial labels)."""
    out = df[labels[0]].astype(object).where(df[labels[0]].notna(), "")
    for c in labels[1:]:
        out = df[c].astype(object).where(df[c].notna() & (df[c].astype(str) != ""), out)
    return out.astype(str).to_numpy()


def _is_nan(x: Any) -> bool:
    return isinstance(x, float) and np.isnan(x)


def own_leaf(node: str) -> str:
    """The leaf standing for samples labelled at internal node ``node`` under policy "own"."""
    return f"{node}:own"


def _partial_dataset(frames: dict, labels: list[str], cols: list[str], where: str, hierarchy_file: Any,
                     policy: str, info: dict[str, Any]) -> RealDataset:
    """Rows labelled at any node of the hierarchy file (a name, or a partial path over the label
    columns, blanks where missing), placed at its finest level with
    :func:`~granularity.hierarchy.labels_at_level`. The engine trains on leaf labels, so:

    * ``"fill"``: missing ancestors come from the tree; a row labelled at an internal node has
      no leaf and is dropped (from every level);
    * ``"drop"``: also drops every row with a blank label column (a missing ancestor);
    * ``"own"``: a row labelled at internal node ``n`` gets the extra leaf ``n:own`` under
      ``n``: its own class at every level finer than ``n``, ``n``'s ancestors above.

    Dropped rows are counted in ``info["dropped_rows"]``."""
    from granularity.hierarchy import LabelHierarchy, labels_at_level, load_hierarchy_file

    h = load_hierarchy_file(hierarchy_file)
    depth = int(h.depth)
    out, dropped = {}, {}
    for key, df in frames.items():
        vals = [df[c].to_numpy(dtype=object) for c in labels]
        samples = list(vals[0]) if len(labels) == 1 else [list(r) for r in zip(*vals)]
        lab = labels_at_level(h, samples, depth, policy)
        keep = lab.keep.copy()
        if policy == "drop":  # a blank in any label column (a missing ancestor) drops the row
            for v in vals:
                keep &= np.array([isinstance(x, str) and x.strip() != "" or (x is not None and not _is_nan(x)) for x in v])
        out[key] = (df[cols].to_numpy()[keep], lab.labels[keep])
        dropped[key] = int((~keep).sum())
        classes = lab.classes  # fixed by the hierarchy, level and policy: the same for both splits
    leaves = [c if h.is_leaf(c) else own_leaf(c) for c in classes]
    parent = {n: h.parent(n) for n in h.nodes if n != h.root}
    parent.update({own_leaf(c): c for c in classes if not h.is_leaf(c)})
    tree = LabelHierarchy.from_parent_map(parent, root=h.root, leaves=leaves, name=h.name,
                                          titles=getattr(h, "titles", None))
    train = Split(_features(out["train"][0], where), torch.from_numpy(out["train"][1]))
    test = Split(_features(out["test"][0], where), torch.from_numpy(out["test"][1]))
    for name, split in (("training", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"{where}: the {name} split is empty after label_policy {policy!r} dropped {dropped} rows.")
    return RealDataset(name="table", version="table-1", train=train, test=test, leaf_names=leaves,
                       hierarchy_factory=lambda: tree, _hierarchy=tree,
                       info={**info, "levels": labels, "hierarchy_file": str(hierarchy_file), "label_policy": policy,
                             "dropped_rows": dropped})


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------
def load_npz(
    root: str | Path | None = None,
    *,
    feature_key: str = "x",
    label_keys: Sequence[str] = ("y",),
    test_fraction: float = 0.2,
    seed: int = 0,
) -> RealDataset:
    """Load an ``.npz`` of features with one label array per level (coarse to fine).

    Parameters
    ----------
    root : file
        The ``.npz`` (see the module docstring for the accepted key layouts).
    feature_key : str
        Name of the feature array (``x`` or ``x_train``/``x_test``).
    label_keys : list of str
        Label arrays, coarse to fine.
    test_fraction, seed
        Stratified random test split when the file has no split.
    """
    labels = _check_common(label_keys, test_fraction, "label_keys")
    if root is None:
        raise param_error("root", "an .npz file", None)
    path = Path(root).expanduser()
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"npz file {path} not found.") from None
    except ValueError as exc:
        raise DataError(f"npz file {path} holds object arrays or is corrupt ({exc}); save plain arrays.") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError ...
        raise DataError(f"Cannot read npz file {path}: {type(exc).__name__}: {exc}.") from None
    keys = list(arrays)

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise DataError(f"npz file {path} has no array {key!r}{suggest(key, keys)}; arrays are: {', '.join(keys)}.")
        return arrays[key]

    if f"{feature_key}_train" in arrays:
        parts = {
            s: (need(f"{feature_key}_{s}"), [need(f"{k}_{s}") for k in labels]) for s in ("train", "test")
        }
    else:
        x = need(feature_key)
        ys = [need(k) for k in labels]
        if x.ndim == 0:
            raise DataError(f"npz file {path}: feature array {feature_key!r} must have one row per sample; got a scalar.")
        for k, y in zip(labels, ys):
            _check_labels(f"npz file {path}", k, y, len(x))
        if "split" in arrays:
            sp = arrays["split"]
            if sp.ndim != 1 or len(sp) != len(x):
                raise DataError(f"npz file {path}: 'split' has shape {sp.shape} for {len(x)} rows; give one value per row.")
            is_test = split_is_test(sp, f"npz file {path}", "split")
        else:
            is_test = _random_split(ys[-1], test_fraction, seed, f"npz file {path}", labels[-1])
        parts = {"train": (x[~is_test], [y[~is_test] for y in ys]), "test": (x[is_test], [y[is_test] for y in ys])}
    info = {"root": str(path), **({"label_source": "the label arrays"} if len(labels) > 1 else {})}
    return _build("npz", "npz-1", parts, labels, str(path), info)
