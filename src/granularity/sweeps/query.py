"""Queries of a results store: filter its runs by ``key<op>value`` and choose the columns shown
(``granularity results`` is a thin shell around :func:`query_store`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from granularity.errors import GranularityError, suggest
from granularity.utils.config import is_missing, is_number, parse_value, same_value


def parse_filters(filters: tuple[str, ...]) -> list[tuple[str, str, str]]:
    out = []
    for item in filters:
        for op in ("!=", ">=", "<=", "=", ">", "<"):
            if op in item:
                key, value = item.split(op, 1)
                if key.strip():
                    out.append((key.strip(), op, value.strip()))
                    break
        else:
            raise GranularityError(
                f"The '--filter' option must look like key=value (also !=, <, <=, >, >=), e.g. data.k=4. Got {item!r} instead."
            )
    return out


def _kind(v) -> str:
    if isinstance(v, bool):
        return "a boolean (true or false)"
    if is_number(v):
        return "a number"
    if isinstance(v, (list, tuple)):
        return "a list"
    return "a mapping" if isinstance(v, dict) else "text"


def _compare(op: str, a, b) -> bool:
    """``a op b`` for one stored value ``a`` and the parsed filter value ``b``: ``=``/``!=`` by
    :func:`~granularity.utils.config.same_value`; ``<``... on numbers, equal-within-tolerance
    counting as equal (so ``<=`` includes it and ``<`` does not)."""
    equal = same_value(a, b)
    if op in ("=", "!="):
        return equal if op == "=" else not equal
    if not is_number(a) or (isinstance(a, float) and math.isnan(a)):
        return False
    return {"<": a < b and not equal, "<=": a < b or equal, ">": a > b and not equal, ">=": a > b or equal}[op]


def apply_filters(df, filters: tuple[str, ...]):
    """Keep the rows matching every ``key<op>value``.

    Values are parsed like ``--set`` values and sweep files (YAML 1.2: ``5e-1`` is a number, only
    ``true``/``false`` are booleans, ``null`` is missing, ``[4, 12]`` is a list) and compared as
    values: floats equal within a relative 1e-9 (FLOAT_REL_TOL; the table shows 10 significant
    digits, so a shown value selects its runs), lists element by element; ``<``, ``<=``, ``>``,
    ``>=`` need a number. A value of another type than the column holds is an error. Lists in
    ``df`` must be Python lists (``ResultsStore.frame(encode_lists=False)``).
    """
    for key, op, text in parse_filters(filters):
        if key not in df.columns:
            raise GranularityError(
                f"The '--filter' key {key!r}{suggest(key, df.columns)} is not a column of the store; "
                f"columns include: {', '.join(list(df.columns)[:25])}."
            )
        value = parse_value(text)
        if op not in ("=", "!=") and not is_number(value):
            raise GranularityError(f"The '--filter' {key}{op}{text} compares with {op!r}, which needs a number. "
                                   f"Got {text!r} instead.")
        present = {_kind(v) for v in df[key] if not is_missing(v)}
        if value is not None and present and _kind(value) not in present:
            raise GranularityError(
                f"The '--filter' value {text!r} for {key!r} is {_kind(value)}, but the column holds "
                f"{' and '.join(sorted(present))}; write the value as the column holds it (booleans: true or false)."
            )
        df = df[[_compare(op, v, value) for v in df[key]]]
    return df


def default_columns(df, axis_keys: list[str]) -> list[str]:
    metrics = [c for c in df.columns if c.endswith((".map.hard", ".map.easy")) or c in ("target_error", "rare_error")]
    cols = ["run_id", "status", *axis_keys, "seed", *metrics, "wall_time", "attempts", "error"]
    seen, out = set(), []
    for c in cols:
        if c in df.columns and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def select_columns(df, columns: str | None, axis_keys: list[str]) -> list[str]:
    """``"all"``, a comma-separated list of existing columns, or None for :func:`default_columns`."""
    if columns == "all":
        return list(df.columns)
    if not columns:
        return default_columns(df, axis_keys)
    cols = [c.strip() for c in columns.split(",") if c.strip()]
    for c in cols:
        if c not in df.columns:
            raise GranularityError(
                f"The '--columns' entry {c!r}{suggest(c, df.columns)} is not a column of the store; "
                f"columns include: {', '.join(list(df.columns)[:25])}."
            )
    return cols


def query_store(store: str | Path, *, filters: Sequence[str] = (), columns: str | None = None,
                sweep: str | None = None, export: str | Path | None = None):
    """The store's index as a table (lists encoded as text): the runs of ``sweep`` (or all)
    matching every filter, in the chosen columns; written to ``export`` (.csv or .parquet) when
    given. None when the store (or the sweep) has no runs."""
    from granularity.sweeps.store import ResultsStore, encode_lists, export_table

    if export is not None and Path(export).suffix not in (".csv", ".parquet"):
        raise GranularityError(f"The '--export' option must end in .csv or .parquet. Got {str(export)!r} instead.")
    with ResultsStore(store, create=False) as st:
        df = st.frame(sweep=sweep, encode_lists=False)  # lists compared as values by the filters
        sweeps = st.sweeps()
    if sweep is not None:
        sweeps = [s for s in sweeps if s["name"] == sweep]
    if df.empty:
        return None
    axis_keys = [k for s in sweeps for group in s["axes"] for k in group]
    df = apply_filters(df, tuple(filters))
    df = encode_lists(df[select_columns(df, columns, axis_keys)])
    if export is not None:
        export_table(df, Path(export))
    return df


def run_statuses(store: str | Path, run_ids: Iterable[str]) -> dict[str, str]:
    """``run_id -> status`` of the given runs in ``store``; empty when there is no store yet."""
    from granularity.sweeps.store import INDEX, ResultsStore

    if not (Path(store) / INDEX).exists():
        return {}
    with ResultsStore(store, create=False) as st:
        return {r["run_id"]: r["status"] for r in st.rows(list(run_ids))}
