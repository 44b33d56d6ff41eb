"""A results store many workers write to at once.

Layout::

    <store>/index.sqlite      the queryable index (one row per run, plus the sweeps)
    <store>/runs/<run_id>/    one folder per run, written by the experiment's own run function

The index is SQLite with a busy timeout; every change is one short ``BEGIN IMMEDIATE``
transaction, so workers in several processes (and two sweeps at once) never see or leave a
half-written row. Two journal modes (``store_mode``, chosen when a sweep opens the store):

* ``wal`` (the default on a local disk): readers never wait for writers.
* ``shared`` (the default on NFS, Lustre, GPFS, CIFS, BeeGFS, CephFS...: WAL needs shared memory
  between all processes of the database, which a network file system cannot give): a rollback
  journal (``journal_mode=DELETE``, ``synchronous=FULL``) and, around every write transaction, a
  lock directory ``index.lock`` (``mkdir`` is atomic on every network file system, unlike
  ``fcntl`` locks on some NFS setups). A lock older than
  :data:`~granularity.sweeps.locks.LOCK_STALE_S` (its holder died inside a millisecond
  transaction) is broken.

The mode lives in the database file itself (``PRAGMA journal_mode``); every later connection
(workers, ``granularity results``) reads it and takes the lock when it is not WAL. A run is claimed before it starts (status ``running``,
owner ``host:pid``, heartbeat); a claim whose owner is dead (or whose heartbeat is stale) is
taken over, so a killed sweep resumes and two sweeps never compute the same run at once.

Rows hold the resolved config and metrics as JSON; :meth:`ResultsStore.frame` flattens them into
columns (``data.k``, ``fine.map.hard``, ...) for filtering and export.

A run is shared by every sweep that expands into its config (the id is a hash of the config), so
its axis values depend on the sweep that asks: each membership row of ``sweep_runs`` holds that
sweep's own ``params`` (its axis keys read from the run's resolved config, and the seed), and
:meth:`ResultsStore.rows` with ``sweep=`` answers with them. ``runs.params`` only records the
params of the sweep that first registered the run; nothing groups or labels by it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.sweeps.locks import DirLock, _nolock, owner_alive, owner_id, resolve_store_mode
from granularity.utils.config import flatten

INDEX = "index.sqlite"
LOCK = "index.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,            -- pending | running | ok | failed
    error TEXT,
    config TEXT NOT NULL,            -- resolved config, JSON
    params TEXT NOT NULL,            -- axis values and seed, JSON
    metrics TEXT,                    -- flat metrics, JSON
    hierarchy_hash TEXT,
    versions TEXT,                   -- env.json of the run (versions, machine, git revision), JSON
    wall_time REAL,                  -- seconds of the last attempt
    attempts INTEGER NOT NULL DEFAULT 0,  -- times the run function was started
    owner TEXT,
    heartbeat REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    axes TEXT NOT NULL,
    seeds TEXT NOT NULL,
    source TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    params TEXT,                     -- this sweep's axis values of the run and its seed, JSON
    PRIMARY KEY (sweep, run_id)
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
"""

JSON_COLUMNS = ("config", "params", "metrics", "versions")


def is_store(path: str | Path) -> bool:
    """A results store: a folder with the index database."""
    return (Path(path) / INDEX).exists()


def run_folder(root: str | Path, run_id: str) -> Path:
    """The folder where the store ``root`` keeps the files of run ``run_id``."""
    return Path(root) / "runs" / run_id


class ResultsStore:
    """The index and run folders of one store folder; safe to use from many processes.

    Parameters
    ----------
    root : path
        Store folder; created (with its index) if ``create`` is true.
    create : bool
        If false, a folder without an index is an error (for ``granularity results``).
    store_mode : {"auto", "wal", "shared"}
        With ``create``: the journal mode to put the index in (see the module's docstring);
        other connections keep the mode the file has.
    """

    def __init__(self, root: str | Path, create: bool = True, store_mode: str = "auto"):
        self.root = Path(root)
        mode = resolve_store_mode(store_mode, self.root) if create else None
        path = self.root / INDEX
        if not create and not path.exists():
            raise GranularityError(
                f"{str(self.root)!r} is not a results store (no {INDEX}); give the --out folder of a sweep."
            )
        if create:
            from granularity.utils.io import check_writable

            check_writable(self.root)
            (self.root / "runs").mkdir(exist_ok=True)
        try:
            self._db = self._connect(path, mode)
            self.mode = "wal" if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal" else "shared"
            self._lock = DirLock(self.root / LOCK) if self.mode == "shared" else None
            if self.mode == "shared":
                self._db.execute("PRAGMA synchronous=FULL")
            if create:
                with self.transaction() as db:
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    if "params" not in self._columns("sweep_runs"):  # a store written before memberships had params
                        db.execute("ALTER TABLE sweep_runs ADD COLUMN params TEXT")
            else:  # an index of another program (or an empty database) has not got our tables
                self._db.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
                self._db.execute("SELECT 1 FROM sweeps LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise GranularityError(
                f"The results store index {str(path)!r} is unreadable ({exc}); it is not a store written by "
                "granularity sweep, or it is corrupt: give another store or delete it to start afresh."
            ) from None

    def _connect(self, path: Path, mode: str | None) -> sqlite3.Connection:
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE takes the write
        # lock up front, so two writers never deadlock upgrading a read lock)
        db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=60000")
        if mode is None:  # a reader or worker: the mode the file has
            return db
        want = "wal" if mode == "wal" else "delete"
        for attempt in range(50):
            try:
                # switching the mode needs the lock a writer in shared mode holds
                with DirLock(self.root / LOCK) if want == "delete" else _nolock():
                    got = db.execute(f"PRAGMA journal_mode={want.upper()}").fetchone()[0].lower()
                if got == want:
                    break
            except sqlite3.OperationalError:  # another process is using or switching it: wait and retry
                pass
            time.sleep(0.1 * (attempt + 1))
        else:
            raise GranularityError(
                f"The results store {str(self.root)!r} could not be put in store mode {mode!r}: other processes are "
                "using it in the other mode; let them finish, or give the mode it has."
            )
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def close(self) -> None:
        self._db.close()

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock or _nolock():
            with self._sqlite_transaction() as db:
                yield db

    @contextmanager
    def _sqlite_transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def run_dir(self, run_id: str) -> Path:
        return run_folder(self.root, run_id)

    # ---- sweeps ------------------------------------------------------------------------------
    def register_sweep(self, sweep: Any) -> None:
        """Record the sweep and add its runs as ``pending`` (runs already indexed keep their row)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sweeps(name, kind, spec, axes, seeds, source, updated) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET kind=excluded.kind, spec=excluded.spec, axes=excluded.axes, "
                "seeds=excluded.seeds, source=excluded.source, updated=excluded.updated",
                (sweep.name, sweep.kind, json.dumps(sweep.spec, sort_keys=True), json.dumps(sweep.axes),
                 json.dumps(sweep.seeds), sweep.source, now),
            )
            db.execute("DELETE FROM sweep_runs WHERE sweep=?", (sweep.name,))
            db.executemany(
                "INSERT INTO sweep_runs(sweep, run_id, position, params) VALUES (?,?,?,?)",
                [(sweep.name, r.run_id, i, json.dumps(r.params)) for i, r in enumerate(sweep.runs)],
            )
            db.executemany(
                "INSERT INTO runs(run_id, kind, status, config, params, created) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(run_id) DO NOTHING",
                [(r.run_id, r.kind, "pending", json.dumps(r.config, sort_keys=True), json.dumps(r.params), now)
                 for r in sweep.runs],
            )

    def sweeps(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM sweeps ORDER BY updated").fetchall()
        out = []
        for row in rows:
            d = dict(row)
            for key in ("spec", "axes", "seeds"):
                d[key] = json.loads(d[key])
            d["run_ids"] = [r[0] for r in self._db.execute(
                "SELECT run_id FROM sweep_runs WHERE sweep=? ORDER BY position", (d["name"],))]
            out.append(d)
        return out

    # ---- claims and results -----------------------------------------------------------------
    def claim(self, run: Any, owner: str | None = None) -> str:
        """Try to take ``run`` for this worker: ``"claimed"``, ``"done"`` (already ok) or ``"busy"``."""
        owner = owner or owner_id()
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT status, owner, heartbeat FROM runs WHERE run_id=?", (run.run_id,)).fetchone()
            if row is not None and row["status"] == "ok":
                return "done"
            if row is not None and row["status"] == "running" and row["owner"] != owner and owner_alive(
                row["owner"], row["heartbeat"], now
            ):
                return "busy"
            db.execute(
                "INSERT INTO runs(run_id, kind, status, config, params, owner, heartbeat, created, started) "
                "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET status='running', error=NULL, "
                "owner=excluded.owner, heartbeat=excluded.heartbeat, started=excluded.started",
                (run.run_id, run.kind, "running", json.dumps(run.config, sort_keys=True), json.dumps(run.params),
                 owner, now, now, now),
            )
        return "claimed"

    def mark_started(self, run_id: str) -> None:
        """The run function is about to be called (counts attempts: a finished run is never restarted)."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET attempts=attempts+1 WHERE run_id=?", (run_id,))

    def heartbeat_owner(self, owner: str) -> None:
        """Refresh every claim of ``owner`` (a sweep process that holds the claims of the runs it
        sent to Ray or SLURM) in one transaction."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET heartbeat=? WHERE owner=? AND status='running'", (time.time(), owner))

    def heartbeat(self, run_id: str, owner: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET heartbeat=? WHERE run_id=? AND owner=?", (time.time(), run_id, owner or owner_id()))

    def finish(self, run_id: str, status: str, *, metrics: Mapping[str, Any] | None = None, error: str | None = None,
               hierarchy_hash: str | None = None, versions: Mapping[str, Any] | None = None,
               wall_time: float | None = None) -> None:
        """Record the outcome of a run (one transaction)."""
        if status not in ("ok", "failed"):
            raise ValueError(f"status must be ok or failed, not {status!r}")
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status=?, error=?, metrics=?, hierarchy_hash=?, versions=?, wall_time=?, "
                "finished=?, owner=NULL, heartbeat=NULL WHERE run_id=?",
                (status, error, json.dumps(dict(metrics)) if metrics is not None else None, hierarchy_hash,
                 json.dumps(dict(versions)) if versions is not None else None, wall_time, time.time(), run_id),
            )

    def fail_if_orphaned(self, run_id: str, error: str) -> bool:
        """Mark a run failed if it is still claimed by a dead worker (a crashed process)."""
        with self.transaction() as db:
            row = db.execute("SELECT status, owner, heartbeat FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None or row["status"] in ("ok", "failed"):
                return False
            if row["status"] == "running" and owner_alive(row["owner"], row["heartbeat"]):
                return False
            db.execute("UPDATE runs SET status='failed', error=?, finished=?, owner=NULL, heartbeat=NULL WHERE run_id=?",
                       (error, time.time(), run_id))
            return True

    # ---- queries ----------------------------------------------------------------------------
    def rows(self, run_ids: Iterable[str] | None = None, sweep: str | None = None) -> list[dict[str, Any]]:
        """Index rows (JSON columns decoded). With ``sweep``: that sweep's runs in grid order, each
        with ``params`` as that sweep registered them (never another sweep's axis keys)."""
        if sweep is not None:
            axes = self._sweep_axes(sweep)
            member = "sweep_runs.params AS member_params" if "params" in self._columns("sweep_runs") else "NULL AS member_params"
            cur = self._db.execute(
                f"SELECT runs.*, {member} FROM runs JOIN sweep_runs ON runs.run_id = sweep_runs.run_id "
                "WHERE sweep_runs.sweep=? ORDER BY sweep_runs.position", (sweep,))
        else:
            cur = self._db.execute("SELECT * FROM runs ORDER BY created, run_id")
        out = []
        wanted = set(run_ids) if run_ids is not None else None
        for row in cur.fetchall():
            d = dict(row)
            if wanted is not None and d["run_id"] not in wanted:
                continue
            for key in JSON_COLUMNS:
                d[key] = json.loads(d[key]) if d[key] else None
            if sweep is not None:
                member = d.pop("member_params")
                d["params"] = json.loads(member) if member else sweep_params(d["config"], axes, d["params"])
            out.append(d)
        return out

    def _sweep_axes(self, sweep: str) -> list[list[str]]:
        row = self._db.execute("SELECT axes FROM sweeps WHERE name=?", (sweep,)).fetchone()
        if row is None:
            from granularity.errors import unknown_name

            raise unknown_name("sweep", sweep, [s["name"] for s in self.sweeps()])
        return json.loads(row["axes"])

    def status_counts(self, run_ids: Iterable[str] | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rows(run_ids):
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts

    def frame(self, sweep: str | None = None, encode_lists: bool = True):
        """The index as a pandas DataFrame: config fields and metrics flattened into columns.

        List (and mapping) config values are JSON text, ready for CSV/parquet; with
        ``encode_lists=False`` they stay Python lists, to compare as values (see :func:`encode_lists`)."""
        import pandas as pd

        records = []
        for r in self.rows(sweep=sweep):
            rec: dict[str, Any] = {
                "run_id": r["run_id"], "kind": r["kind"], "status": r["status"], "error": r["error"],
                "seed": (r["params"] or {}).get("seed"), "wall_time": r["wall_time"], "attempts": r["attempts"],
                "hierarchy_hash": r["hierarchy_hash"],
            }
            rec.update({f"{k}": _scalar(v) if encode_lists else v for k, v in flatten(r["config"]).items()})
            rec.update({f"{k}": v for k, v in (r["metrics"] or {}).items()})
            versions = r["versions"] or {}
            for key in ("granularity", "torch", "python", "git_revision", "device"):
                if key in versions:
                    rec[f"env.{key}"] = versions[key]
            records.append(rec)
        return pd.DataFrame.from_records(records)


def sweep_params(config: Mapping[str, Any] | None, axes: list[list[str]], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """A sweep's params of a run: its axis keys read from the run's resolved config, and the seed
    (the same in every sweep: it is part of the config the run id hashes)."""
    from granularity.utils.config import get_dotted

    out = {key: get_dotted(config, key) for group in axes for key in group}
    out["seed"] = (params or {}).get("seed")
    return out


def _scalar(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def encode_lists(df: Any) -> Any:
    """A frame of :meth:`ResultsStore.frame` with ``encode_lists=False`` as the default frame."""
    return df.apply(lambda col: col.map(_scalar) if col.dtype == object else col)


def export_table(df: Any, path: str | Path) -> Path:
    """Write a results table to ``path`` (.csv or .parquet), atomically, with one-line errors
    for a bad suffix, a folder in the way or an unwritable place."""
    import io

    from granularity.utils.io import check_writable, write_bytes_atomic

    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise GranularityError(f"The '--export' option must end in .csv or .parquet. Got {str(path)!r} instead.")
    if path.is_dir():
        raise GranularityError(f"The '--export' path {str(path)!r} is a folder; give a file name ending in {path.suffix}.")
    try:
        check_writable(path.parent)
    except GranularityError:
        raise GranularityError(
            f"The '--export' path {str(path)!r} cannot be written: its folder {str(path.parent)!r} cannot be created or is not writable."
        ) from None
    buf = io.BytesIO()
    if path.suffix == ".csv":
        buf.write(df.to_csv(index=False).encode())
    else:
        df.to_parquet(buf, index=False)
    write_bytes_atomic(path, lambda fh: fh.write(buf.getvalue()))
    return path
