"""Sweep files: a base experiment, axes and seeds, expanded into validated runs with stable ids.

A sweep file (YAML or JSON)::

    name: phase-k-sigma          # optional; default: the file's stem
    kind: simulate               # simulate | transfer
    preset: quick                # optional: a named preset of that kind
    base:                        # optional: config overrides (nested or dotted keys)
      train.steps: 300
    axes:                        # the grid: the product of all axes (and zip groups)
      data.k: [2, 4, 8]                          # a list
      data.sigma: {geom: [0.03, 0.12, 3]}        # n values, geometric from a to b
      train.lr: {start: 0.1, stop: 0.5, step: 0.2}   # stop included when hit
      model.m: {lin: [4, 16, 3]}                 # n values, evenly spaced
    zip:                         # lists that vary together (one axis per group)
      - {train.lr: [0.1, 0.5], train.steps: [600, 300]}
    seeds: 3                     # 3 -> [0, 1, 2]; or [0, 5, 7]; or {start: 10, count: 3}
    resources:                   # optional, for --executor ray/slurm (the CLI options win)
      gpus_per_run: 1
      cpus_per_run: 4

One sweep run = one seed of one grid point; its id is a hash of the kind and the canonical JSON
of its validated config (seed included) without the fields that do not change the result
(:attr:`ExperimentKind.run_only`: name, device, worker processes, checkpoint options), so the
same computation has the same id in every sweep and store. Every expanded config is validated
before any run starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError, suggest
from granularity.sweeps.kinds import ExperimentKind, get_kind
from granularity.utils.config import deep_merge, get_dotted, load_config_file, set_dotted, undot

TOP_KEYS = ("name", "kind", "preset", "base", "axes", "zip", "seeds", "resources")
RESOURCE_KEYS = ("cpus_per_run", "gpus_per_run")
MAX_RUNS = 100_000  # a typo in a range should not expand into millions of runs


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a validated config (as a JSON-able dict) and where it sits in the grid."""

    run_id: str
    kind: str
    config: dict[str, Any]
    params: dict[str, Any]  # the axis values of this run and its seed

    @property
    def seed(self) -> int:
        return int(self.params["seed"])


@dataclass
class Sweep:
    """An expanded sweep: every run validated, in grid order (last axis fastest, seeds innermost)."""

    name: str
    kind: str
    axes: list[list[str]]  # one entry per axis; a zip group is one axis of several keys
    seeds: list[int]
    runs: list[RunSpec]
    spec: dict[str, Any] = field(default_factory=dict)  # the file's content, for the record
    source: str | None = None
    resources: dict[str, float] = field(default_factory=dict)  # per-run requests (not part of run ids)

    @property
    def axis_keys(self) -> list[str]:
        return [k for group in self.axes for k in group]


def run_id(kind: str, config: Mapping[str, Any]) -> str:
    """Stable id: sha256 of the kind and the canonical JSON of the validated config without the
    fields that do not change the result (the kind's ``run_only``: name, device, worker processes,
    checkpoint options), so that the same computation has one id however it is launched."""
    canon = json.dumps({"kind": kind, "config": get_kind(kind).result_config(config)}, sort_keys=True,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _err(where: str, key: str, allowed: str, got: Any) -> GranularityError:
    got_s = repr(got)
    if len(got_s) > 80:
        got_s = got_s[:77] + "..."
    return GranularityError(f"The {key!r} entry of {where} must be {allowed}. Got {got_s} instead.")


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _clean(v: float, as_int: bool) -> int | float:
    # 12 significant digits: 0.1 + 2 * 0.2 gives 0.5, not 0.5000000000000001, so ids are stable
    return int(round(v)) if as_int else float(f"{v:.12g}")


def axis_values(key: str, spec: Any, where: str) -> list[Any]:
    """A list, ``{start, stop, step}`` (stop included when hit), ``{geom: [a, b, n]}`` or
    ``{lin: [a, b, n]}`` -> the list of values."""
    allowed = "a non-empty list, {start, stop, step}, {geom: [a, b, n]} or {lin: [a, b, n]}"
    if isinstance(spec, list):
        if not spec:
            raise _err(where, key, allowed, spec)
        return list(spec)
    if not isinstance(spec, Mapping):
        raise _err(where, key, allowed, spec)
    keys = set(spec)
    if keys == {"start", "stop", "step"}:
        a, b, s = spec["start"], spec["stop"], spec["step"]
        if not all(_num(x) for x in (a, b, s)) or s == 0 or (b - a) / s < 0:
            raise _err(where, key, "{start, stop, step} with numbers and a step that goes from start towards stop", dict(spec))
        n = int(math.floor((b - a) / s + 1e-9)) + 1
        if n > MAX_RUNS:
            raise _err(where, key, f"a range of at most {MAX_RUNS} values", dict(spec))
        as_int = all(isinstance(x, int) for x in (a, b, s))
        return [_clean(a + i * s, as_int) for i in range(n)]
    if len(keys) == 1 and keys <= {"geom", "lin"}:
        mode = next(iter(keys))
        args = spec[mode]
        ok = (isinstance(args, list) and len(args) == 3 and _num(args[0]) and _num(args[1])
              and isinstance(args[2], int) and not isinstance(args[2], bool) and 1 <= args[2] <= MAX_RUNS)
        if ok and mode == "geom":
            ok = args[0] > 0 and args[1] > 0
        if not ok:
            extra = " with a, b > 0" if mode == "geom" else ""
            raise _err(where, key, f"{{{mode}: [a, b, n]}}{extra} and an int n >= 1", dict(spec))
        a, b, n = args
        if n == 1:
            ts = [0.0]
        else:
            ts = [i / (n - 1) for i in range(n)]
        raw = [a * (b / a) ** t for t in ts] if mode == "geom" else [a + (b - a) * t for t in ts]
        as_int = isinstance(a, int) and isinstance(b, int) and all(abs(v - round(v)) < 1e-9 for v in raw)
        return [_clean(v, as_int) for v in raw]
    raise _err(where, key, allowed, dict(spec))


def parse_seeds(spec: Any, where: str) -> list[int]:
    allowed = "an int n >= 1 (seeds 0..n-1), a list of distinct ints >= 0, or {start, count}"
    if spec is None:
        return [0]
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= MAX_RUNS:
            raise _err(where, "seeds", allowed, spec)
        return list(range(spec))
    if isinstance(spec, list):
        if not spec or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in spec) or len(set(spec)) != len(spec):
            raise _err(where, "seeds", allowed, spec)
        return list(spec)
    if isinstance(spec, Mapping) and set(spec) == {"start", "count"}:
        a, n = spec["start"], spec["count"]
        if isinstance(a, int) and isinstance(n, int) and a >= 0 and 1 <= n <= MAX_RUNS:
            return list(range(a, a + n))
    raise _err(where, "seeds", allowed, spec)


def parse_resources(spec: Any, where: str) -> dict[str, float]:
    """``resources: {cpus_per_run: 4, gpus_per_run: 1}`` -> the validated dict."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise _err(where, "resources", f"a mapping with keys among {', '.join(RESOURCE_KEYS)}", spec)
    out = {}
    for key, value in spec.items():
        if key not in RESOURCE_KEYS:
            raise GranularityError(
                f"Unknown key 'resources.{key}'{suggest(str(key), RESOURCE_KEYS)} in {where}; valid keys are: "
                f"{', '.join(RESOURCE_KEYS)}."
            )
        low = 0 if key == "gpus_per_run" else 1e-9
        if not _num(value) or value < low:
            raise _err(where, f"resources.{key}", "a number > 0" if low else "a number >= 0", value)
        out[key] = value
    return out


Axis = tuple[list[str], list[tuple[Any, ...]]]  # one axis: its keys (several for a zip group), its points


def parse_axes(axes_spec: Any, zip_spec: Any, where: str) -> list[Axis]:
    """The grid's axes: each ``axes`` entry is one axis, each ``zip`` group one axis of several
    keys; a key may appear on one axis only. Values are already parsed (YAML, or
    :func:`~granularity.utils.config.parse_value` on the command line); they are not parsed again."""
    axes: list[Axis] = []
    if not isinstance(axes_spec, Mapping):
        raise _err(where, "axes", "a mapping of config keys to value lists", axes_spec)
    for key, vspec in axes_spec.items():
        values = axis_values(f"axes.{key}", vspec, where)
        axes.append(([str(key)], [(v,) for v in values]))
    if isinstance(zip_spec, Mapping):
        zip_spec = [zip_spec]
    if not isinstance(zip_spec, list):
        raise _err(where, "zip", "a list of mappings {key: values} whose lists have one length", zip_spec)
    for i, group in enumerate(zip_spec):
        if not isinstance(group, Mapping) or not group:
            raise _err(where, f"zip[{i}]", "a mapping {key: values, ...} with at least one key", group)
        cols = {str(k): axis_values(f"zip[{i}].{k}", v, where) for k, v in group.items()}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) != 1:
            raise GranularityError(
                f"The lists of 'zip[{i}]' in {where} vary together and must have one length; got lengths {lengths}."
            )
        axes.append((list(cols), list(zip(*cols.values()))))
    check_axes(axes, where)
    return axes


def check_axes(axes: list[Axis], where: str) -> None:
    """A config key may vary on one axis only."""
    seen: set[str] = set()
    for key in axis_order(axes):
        if key in seen:
            raise GranularityError(f"The config key {key!r} appears on two axes of {where}; give it once.")
        seen.add(key)


def grid(base: Mapping[str, Any], axes: list[Axis]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every grid point in order (last axis fastest): ``(values, config)``, where ``values`` maps
    each axis key to its value at this point and ``config`` is a copy of ``base`` with them set."""
    for point in itertools.product(*(vals for _, vals in axes)):
        cell = deep_merge(base, {})
        values: dict[str, Any] = {}
        for (keys, _), vals in zip(axes, point):
            for key, value in zip(keys, vals):
                set_dotted(cell, key, value)
                values[key] = value
        yield values, cell


def expand(spec: Mapping[str, Any], source: str | None = None, name: str | None = None) -> Sweep:
    """Validate a sweep spec (the parsed file) and expand it into runs."""
    where = f"sweep file {source!r}" if source else "the sweep"
    if not isinstance(spec, Mapping):
        raise GranularityError(f"{where[0].upper() + where[1:]} must hold a mapping of keys to values.")
    for key in spec:
        if key not in TOP_KEYS:
            raise GranularityError(
                f"Unknown key {key!r}{suggest(key, TOP_KEYS)} in {where}; valid keys are: {', '.join(TOP_KEYS)}."
            )
    kind_name = spec.get("kind", "simulate")
    if not isinstance(kind_name, str):
        raise _err(where, "kind", "a string", kind_name)
    kind: ExperimentKind = get_kind(kind_name)
    sweep_name = spec.get("name", name or (Path(source).stem if source else "sweep"))
    if not isinstance(sweep_name, str) or not sweep_name.strip():
        raise _err(where, "name", "a non-empty string", sweep_name)

    raw: dict[str, Any] = dict(kind.defaults)
    preset = spec.get("preset")
    if preset is not None:
        if not isinstance(preset, str):
            raise _err(where, "preset", "a preset name (a string)", preset)
        raw = deep_merge(raw, kind.preset_overrides(preset))
    base = spec.get("base") or {}
    if not isinstance(base, Mapping):
        raise _err(where, "base", "a mapping of config keys to values", base)
    base = undot(base)
    for key in kind.seed_keys:
        if key in base:
            raise GranularityError(
                f"The 'base.{key}' entry of {where} is set per run by the sweep's 'seeds' key; remove it and use seeds: instead."
            )
    raw = deep_merge(raw, base)

    axes = parse_axes(spec.get("axes") or {}, spec.get("zip") or [], where)
    for key in axis_order(axes):
        if key.split(".")[0] in kind.seed_keys:
            raise GranularityError(
                f"The axis {key!r} of {where} is set per run by the sweep's 'seeds' key; use seeds: instead."
            )
    seeds = parse_seeds(spec.get("seeds"), where)
    resources = parse_resources(spec.get("resources"), where)
    n_runs = math.prod(len(v) for _, v in axes) * len(seeds)
    if n_runs > MAX_RUNS:
        raise GranularityError(f"{where} expands into {n_runs} runs; the limit is {MAX_RUNS}: shorten its axes.")

    runs: list[RunSpec] = []
    ids: dict[str, dict[str, Any]] = {}
    for values, cell in grid(raw, axes):
        label = ", ".join(f"{key}={value!r}" for key, value in values.items())
        run_where = f"{where}, run {label}" if label else where
        for seed in seeds:
            cfg = kind.build(deep_merge(cell, kind.seed_overrides(seed)), where=run_where)
            cfg_d = cfg.to_dict()
            params = {key: get_dotted(cfg_d, key) for key in values}
            params["seed"] = seed
            rid = run_id(kind.name, cfg_d)
            if rid in ids:
                raise GranularityError(
                    f"Two runs of {where} have the same config ({ids[rid]} and {params}) apart from fields that do not "
                    "change results (name, device, workers, checkpoint options); remove the duplicate axis values."
                )
            ids[rid] = params
            runs.append(RunSpec(rid, kind.name, cfg_d, params))
    return Sweep(
        name=sweep_name.strip(), kind=kind.name, axes=[keys for keys, _ in axes], seeds=seeds, runs=runs,
        spec=json.loads(json.dumps(dict(spec), default=str)), source=source, resources=resources,
    )


def axis_order(axes: list[Axis]) -> list[str]:
    """The axes' config keys in grid order (a zip group's keys in its order)."""
    return [k for keys, _ in axes for k in keys]


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep file (YAML or JSON), validating every run."""
    return expand(load_config_file(path), source=str(path))
