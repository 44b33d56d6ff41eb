"""The one study runner: every registered :class:`Design` (:mod:`granularity.experiments.registry`)
is run by :func:`run_design`. A design plans independent training :class:`Unit` s (arm, seed,
config, folder); the runner claims the folder (``study.json``; another config is refused),
trains the unfinished units with :func:`execute_units` and, once all are finished, writes
``results.json``, ``results.csv``, the figures and the report. ``shard=(i, n)`` runs every n-th
group of units from the i-th (a group: units sharing prepared inputs), so n processes can share
one folder; whichever call finds every unit finished writes the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.utils.config import get_dotted
from granularity.utils.io import check_writable, read_json, write_csv_table, write_json


@dataclass(frozen=True)
class Unit:
    """One independent piece of training of a study: an arm at a seed, its config, its folder
    (relative to the study folder). ``data``: the key of the prepared data it trains on in
    :attr:`Plan.data`; ``group``: units that share prepared inputs ("" = the unit alone);
    ``done``: the files (relative to its folder) whose presence marks it finished."""

    arm: str
    seed: int
    config: Any
    folder: str
    data: str = "main"
    group: str = ""
    done: tuple[str, ...] = ("result.json",)


@dataclass
class Plan:
    """What one study runs: the arms (or cells) it compares, every unit, the prepared data."""

    arms: list
    units: list[Unit]
    data: dict[str, Any] = field(default_factory=dict)


Trainer = Callable[[Unit, Path], Any]


@dataclass(frozen=True)
class Design:
    """A registered study design: how to build its config, plan it, train a unit, summarise
    and report it. ``flags``: the ``granularity study`` options it takes, each with the config
    key it sets (``extra``: further overrides of the given options, for a value that sets more
    than one key). ``datasets``: the data sets it runs on (empty: any). ``contrast``: its primary
    contrast, in words."""

    name: str
    help: str
    contrast: str
    config: Callable[[Mapping[str, Any]], Any]
    presets: Mapping[str, Mapping[str, Any]]
    flags: Mapping[str, str]
    data_name: Callable[[Any], str]
    load: Callable[[Any], Any]
    plan: Callable[[Any, Any], Plan]
    summarise: Callable[[Any, Path, Plan], dict[str, Any]]
    csv_columns: tuple[str, ...]
    figures: Callable[[dict[str, Any], Path, bool], list[str]]
    describe: Callable[[dict[str, Any], Path], str]
    dry_run: Callable[[Any], str]
    train: Callable[[Any, Plan], Trainer] | None = None  # None: engine runs (:func:`engine_trainer`)
    report: Callable[[dict[str, Any]], str] | None = None  # report.md
    extra: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    datasets: tuple[str, ...] = ()
    seconds_key: str = "seconds_this_invocation"

    def overrides(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The config overrides of the given ``granularity study`` options (all taken by it)."""
        from granularity.utils.config import deep_merge, undot

        return deep_merge(undot({self.flags[k]: v for k, v in given.items()}), self.extra(given) if self.extra else {})

    def build(self, config: Any) -> Any:
        """The validated config (a mapping gets the design's defaults under it)."""
        return self.config(config) if config is None or isinstance(config, Mapping) else config


def run_design(design: Design, config: Any, out: str | Path, *, dataset: Any | None = None, progress: bool = True,
               shard: tuple[int, int] | None = None, simulate: bool = True, command: str | None = None,
               fuse: bool = False, fuse_memory: int | None = None) -> dict[str, Any] | None:
    """Run (or resume) ``design`` in folder ``out``; returns the content of ``results.json``,
    or None while units of other shards are missing. ``simulate``: let the design run its
    extra simulator work (the bridge phase diagram's simulator grid). ``fuse``/``fuse_memory``:
    see :func:`execute_units`."""
    cfg = design.build(config)
    out = check_writable(out)
    _claim(design, cfg, out)
    t0 = time.perf_counter()
    plan = design.plan(cfg, dataset if dataset is not None else design.load(cfg))
    todo = [u for u in shard_units(plan.units, shard) if not is_done(out, u)]
    trainer = design.train(cfg, plan) if design.train is not None else engine_trainer(cfg, plan)
    with torch_threads(getattr(cfg, "threads", None)):
        execute_units(todo, out, trainer, data=plan.data, progress=progress, desc=f"{design.name} study", fuse=fuse,
                      fuse_memory=fuse_memory)
    if not all(is_done(out, u) for u in plan.units):
        return None
    summary = {"contrast": design.contrast, **design.summarise(cfg, out, plan)}  # the design's own words win
    summary[design.seconds_key] = time.perf_counter() - t0
    if command is not None:
        summary["command"] = command
    write_json(out / "results.json", summary)
    write_table_csv(out / "results.csv", summary["table"], design.csv_columns)
    summary["figures"] = design.figures(summary, out, simulate)
    write_json(out / "results.json", summary)
    if design.report is not None:
        (out / "report.md").write_text(design.report(summary))
    return summary


def execute_units(units: Sequence[Unit], out: Path, train: Trainer, *, data: Mapping[str, Any] | None = None,
                  progress: bool = True, desc: str = "study", fuse: bool = False, fuse_memory: int | None = None) -> None:
    """Train every unit into its folder under ``out`` with ``train(unit, folder)``.

    The one place units are executed: the units are independent (any order, any grouping);
    ``data`` is the plan's prepared data by :attr:`Unit.data` key. ``fuse``: units of one data
    key and model train as fused groups (:mod:`granularity.engine.fused_group`: each keeps its
    folder, result and checkpoints; what cannot be fused trains alone), as many per group as
    ``fuse_memory`` bytes hold (default :func:`~granularity.engine.fused_group.default_budget`).
    An error of a unit is raised once the other units of its group have finished."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(units), desc=desc, unit="run", disable=not progress)
    for group in (_fused_groups(units, data or {}, fuse_memory) if fuse else [[u] for u in units]):
        bar.set_postfix_str(group[0].folder + (f" +{len(group) - 1} fused" if len(group) > 1 else ""))
        if len(group) == 1:
            train(group[0], out / group[0].folder)
        else:
            from granularity.engine.fused_group import run_group

            errors = [e for _, e, _ in run_group([lambda u=u: train(u, out / u.folder) for u in group]) if e is not None]
            if errors:
                raise errors[0]
        bar.update(len(group))
    bar.close()


def _fused_groups(units: Sequence[Unit], data: Mapping[str, Any], budget: int | None) -> list[list[Unit]]:
    """Units in fused groups: by data key and model, sized to the memory budget."""
    import torch

    from granularity.engine.fused_group import default_budget, group_sizes, run_bytes

    buckets: dict[tuple, list[Unit]] = {}
    for u in units:
        m = getattr(u.config, "model", None)
        buckets.setdefault((u.data, type(u.config).__name__, None if m is None else repr(m)), []).append(u)
    groups: list[list[Unit]] = []
    for us in buckets.values():
        per_run = run_bytes(us[0].config, getattr(data.get(us[0].data), "input_shape", None))
        sizes = group_sizes(len(us), per_run, budget or default_budget(), 64 if torch.cuda.is_available() else 16)
        for n in sizes:
            groups.append(us[:n])
            us = us[n:]
    return groups


def engine_trainer(cfg: Any, plan: Plan) -> Trainer:
    """Units whose config is a transfer config: one engine run each
    (:func:`granularity.engine.run.run_transfer`), k-means embeddings shared per data key."""
    from granularity.engine.run import run_transfer

    caches: dict[str, dict] = {}

    def train(unit: Unit, folder: Path) -> dict[str, Any]:
        return run_transfer(unit.config, folder, dataset=plan.data[unit.data], embeddings_cache=caches.setdefault(unit.data, {}))

    return train


def unit_results(out: Path, units: Sequence[Unit]) -> dict[str, dict[str, Any]]:
    """``result.json`` of every (finished) engine unit, by folder."""
    return {u.folder: read_json(out / u.folder / "result.json") for u in units}


def is_done(out: Path, unit: Unit) -> bool:
    return all((out / unit.folder / f).exists() for f in unit.done)


def shard_units(units: Sequence[Unit], shard: tuple[int, int] | None) -> list[Unit]:
    """The units of shard ``(i, n)``: every n-th group of units from the i-th (all: None)."""
    if shard is None:
        return list(units)
    i, n = shard
    if not 0 <= i < n:
        raise GranularityError(f"The 'shard' parameter must be i/n with 0 <= i < n. Got {i}/{n} instead.")
    groups = list(dict.fromkeys(u.group or u.folder for u in units))
    mine = set(groups[i::n])
    return [u for u in units if (u.group or u.folder) in mine]


def _claim(design: Design, cfg: Any, out: Path) -> None:
    """Write ``study.json``; a started folder holding another config is refused."""
    path = out / "study.json"
    started = (out / "runs").exists() or (out / "refs").exists()
    if started and path.exists() and not _same_config(design, read_json(path), cfg):
        raise GranularityError(f"Study folder {str(out)!r} holds a study with another config; choose another --out or delete it.")
    write_json(path, cfg.to_dict())


def _same_config(design: Design, stored: Any, cfg: Any) -> bool:
    try:
        return isinstance(stored, Mapping) and design.config(stored).to_dict() == cfg.to_dict()
    except GranularityError:
        return False


@contextmanager
def torch_threads(n: int | None):
    """Intra-op torch threads set to ``n`` while the study runs (None: left as they are)."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def write_table_csv(path: Path, table: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """``results.csv`` of a summary's table: a column ``a.b`` is the value at that dotted path
    (header ``a_b``), ``name=a.b`` the same under the header ``name``; absent values empty."""
    heads, paths = zip(*((c.split("=", 1) if "=" in c else (c.replace(".", "_"), c)) for c in columns), strict=True)
    write_csv_table(path, heads, [[get_dotted(r, p) for p in paths] for r in table])
