"""``granularity results PATH --migrate``: result folders of a release before the one vocabulary,
rewritten once in today's spelling. The only code that knows the old spellings:

=========================  ======================  ==============================================
old spelling               today                   where it was stored
=========================  ======================  ==============================================
``transfer.mode``          ``transfer.protocol``   run configs (transfer, study, advise, sweeps)
``linear`` (that mode)     ``probe``               the same, and sweep params of that key
``transfer_mode``          ``protocol``            a transfer run's ``result.json``
top-level run keys         ``run.<key>``           a default study's ``study.json``
``transfer.target_level``  ``transfer.target``     simulator configs, phase and sweep axes, cells
``mode``, ``modes``        ``protocol(s)``         a design's config, rows, transfer results, csv
``linear[-n<k>]``          ``probe[-n<k>]``        a design's transfer names and folders
=========================  ======================  ==============================================

Run ids and the simulator's config hash are hashed from today's spelling, so a migrated simulate
folder gets its hash recomputed (``result.json``, seed records) and a migrated store's runs their
new ids (index rows and ``runs/<id>/`` folders). Values other than renamed ones are never
changed: a file is rewritten only where a key, a renamed value or an id changes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.utils.io import read_json, write_json

PROTOCOL = {"linear": "probe"}
MODES = ("map", "linear", "finetune")
KEYS = {"transfer.mode": "transfer.protocol", "transfer.target_level": "transfer.target"}
# the default study's run settings, top-level study keys before the study held a `run`
STUDY_RUN_KEYS = ("dataset", "data_root", "data_options", "target", "train_size", "test_size", "data_seed",
                  "embedding", "model", "pretrain", "transfer", "device", "bf16")


def _renamed(d: dict, old: str, new: str, values: dict | None = None) -> dict:
    """``d`` (a copy, order kept) with the key ``old`` spelled ``new``, its value (a string or a
    list of them: a sweep axis) renamed by ``values``."""
    def value(v):
        return [value(x) for x in v] if isinstance(v, list) else (values or {}).get(v, v) if isinstance(v, str) else v

    return {new if k == old else k: value(v) if k == old else v for k, v in d.items()}


def current(tree: Any) -> Any:
    """A stored JSON tree (config, result, study, advice...) of any release in today's spelling."""
    if isinstance(tree, list):
        return [current(v) for v in tree]
    if not isinstance(tree, dict):
        return tree
    out = {k: current(v) for k, v in tree.items()}
    for old, new in KEYS.items():  # dotted keys (a sweep's base, axes and params)
        if old in out:
            out = _renamed(out, old, new, PROTOCOL if new == "transfer.protocol" else None)
    if "kmeans_sizes" in out and "rare_sources" in out and "run" not in out:  # a default study of before `run`
        run = {k: out.pop(k) for k in STUDY_RUN_KEYS if k in out}
        out["run"] = current(run)
    if isinstance(out.get("transfer"), dict):
        out["transfer"] = _renamed(_renamed(out["transfer"], "mode", "protocol", PROTOCOL), "target_level", "target")
    if "transfer_mode" in out:
        out = _renamed(out, "transfer_mode", "protocol", PROTOCOL)
    if out.get("mode") in MODES:  # a design's primary contrast, table row or transfer result
        out = _renamed(out, "mode", "protocol", PROTOCOL)
    if isinstance(out.get("modes"), list) and set(out["modes"]) <= set(MODES):
        out = _renamed(out, "modes", "protocols", PROTOCOL)
    if isinstance(out.get("transfer"), str):
        out["transfer"] = _transfer_name(out["transfer"])
    return out


def _transfer_name(name: str) -> str:
    """A design's transfer (and its folder): ``linear-n100`` -> ``probe-n100``."""
    head, dash, tail = name.partition("-n")
    return PROTOCOL.get(head, head) + dash + tail if head in MODES and (not dash or tail.isdigit()) else name


def _csv(path: Path, changed: list[str]) -> None:
    """A design's ``results.csv``: the ``mode`` column as ``protocol``, its values renamed."""
    import csv
    import io

    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "mode" not in rows[0]:
        return
    i = rows[0].index("mode")
    rows[0][i] = "protocol"
    for row in rows[1:]:
        row[i] = PROTOCOL.get(row[i], row[i])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if "\r\n" in text else "\n").writerows(rows)
    path.write_text(buf.getvalue())
    changed.append(str(path))


def _rewrite(path: Path, fn: Callable[[Any], Any], changed: list[str]) -> Any:
    data = read_json(path)
    new = fn(data)
    if new != data:
        write_json(path, new)
        changed.append(str(path))
    return new


def _phase(folder: Path, changed: list[str]) -> None:
    """Axis keys of ``phase_spec.json``/``phase.json`` and the ``cells/<key>=...`` folder names."""
    def spec(d):
        return {**d, **{a: [KEYS.get(d[a][0], d[a][0]), d[a][1]] for a in ("x", "y") if isinstance(d.get(a), list)}}

    _rewrite(folder / "phase_spec.json", spec, changed)
    if (folder / "phase.json").exists():
        _rewrite(folder / "phase.json", lambda d: {**d, **{a: KEYS.get(d[a], d[a]) for a in ("x_key", "y_key") if a in d}},
                 changed)
    for cell in sorted((folder / "cells").glob("*=*")):
        name = "__".join("target=" + p.removeprefix("target_level=") if p.startswith("target_level=") else p
                         for p in cell.name.split("__"))
        if name != cell.name:
            cell.rename(cell.parent / name)
            changed.append(f"{cell} -> {name}")


def _simulate(folder: Path, changed: list[str]) -> None:
    """A simulate run folder: its config hash, recomputed from the migrated config."""
    from granularity.theory.config import SimConfig
    from granularity.theory.experiment import config_hash

    digest = config_hash(SimConfig.build(read_json(folder / "config.json"), where=str(folder / "config.json")))
    files = [folder / "result.json", folder / "failed.json", *sorted((folder / "seeds").glob("seed_*.json"))]
    old = read_json(folder / "result.json").get("config_hash")
    for path in (p for p in files if p.exists()):
        _rewrite(path, lambda d: {**d, "config_hash": digest} if "config_hash" in d else d, changed)
    for part in sorted((folder / "partial").glob(f"{old}_*.pt")) if old and old != digest else ():
        part.rename(part.with_name(digest + part.name[len(old):]))
        changed.append(str(part))


def _store(root: Path, changed: list[str]) -> None:
    """A results store: configs, params and axes in today's spelling, run ids from it."""
    from granularity.sweeps.spec import run_id

    db = sqlite3.connect(root / "index.sqlite", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        ids = {}
        for rid, kind, config, params in db.execute("SELECT run_id, kind, config, params FROM runs").fetchall():
            cfg = current(json.loads(config))
            new = run_id(kind, cfg)
            ids[rid] = new
            db.execute("UPDATE runs SET run_id=?, config=?, params=? WHERE run_id=?",
                       (new, json.dumps(cfg, sort_keys=True), json.dumps(current(json.loads(params))), rid))
        for sweep, rid, params in db.execute("SELECT sweep, run_id, params FROM sweep_runs").fetchall():
            db.execute("UPDATE sweep_runs SET run_id=?, params=? WHERE sweep=? AND run_id=?",
                       (ids.get(rid, rid), json.dumps(current(json.loads(params))) if params else params, sweep, rid))
        for name, spec, axes in db.execute("SELECT name, spec, axes FROM sweeps").fetchall():
            db.execute("UPDATE sweeps SET spec=?, axes=? WHERE name=?", (json.dumps(current(json.loads(spec)), sort_keys=True),
                       json.dumps([[KEYS.get(k, k) for k in g] for g in json.loads(axes)]), name))
        db.execute("COMMIT")
    finally:
        db.close()
    for old, new in ids.items():
        if old != new and (root / "runs" / old).exists():
            (root / "runs" / old).rename(root / "runs" / new)
            changed.append(f"{root / 'runs' / old} -> {new}")
    changed.append(str(root / "index.sqlite"))


def migrate(path: str | Path) -> list[str]:
    """Rewrite every result folder under ``path`` (run, phase, study, advice folders, stores) in
    today's spelling; returns what changed (files, and renamed folders as ``old -> new``)."""
    root = Path(path)
    if not root.is_dir():
        raise GranularityError(f"The 'migrate' path {str(root)!r} is not a folder; give a run folder, study folder or store.")
    changed: list[str] = []
    for path in sorted(root.rglob("*.json")):
        _rewrite(path, current, changed)
    for path in sorted(root.rglob("results.csv")):
        _csv(path, changed)
    for res in sorted(root.rglob("result.json"), reverse=True):  # a design's transfer folders
        if _transfer_name(res.parent.name) != res.parent.name and read_json(res).get("protocol"):
            res.parent.rename(res.parent.with_name(_transfer_name(res.parent.name)))
            changed.append(f"{res.parent} -> {_transfer_name(res.parent.name)}")
    for spec in sorted(root.rglob("phase_spec.json")):
        _phase(spec.parent, changed)
    for res in sorted(root.rglob("result.json")):
        if (res.parent / "config.json").exists() and "config_hash" in read_json(res):
            _simulate(res.parent, changed)
    for index in sorted(root.rglob("index.sqlite")):
        _store(index.parent, changed)
    return changed
