"""Experiment kinds a sweep can run: a registry whose names are the sweep files' vocabulary.

Each kind gives its config class, how to build the base config (preset + overrides), how one
sweep run's seed is set, the run function ``run(cfg, out_dir) -> result`` (which writes the run
folder itself and resumes from its own checkpoints), how to tell a finished run folder, and a
metric extractor that turns ``result.json`` into flat index columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.utils.config import Config
from granularity.utils.io import read_json


@dataclass(frozen=True)
class ExperimentKind:
    """One kind of run a sweep can expand into."""

    name: str
    description: str
    config_class: Callable[[], type[Config]]  # lazy: keeps `granularity sweep --help` light
    preset_overrides: Callable[[str], dict[str, Any]]  # preset name -> overrides (raises for unknown)
    seed_overrides: Callable[[int], dict[str, Any]]  # one sweep run = one seed
    seed_keys: tuple[str, ...]  # config fields owned by the sweep's `seeds` (not allowed as axes)
    run: Callable[[Config, Path], dict[str, Any]]
    metrics: Callable[[dict[str, Any]], dict[str, Any]]  # result.json -> flat {name: number|str}
    is_complete: Callable[[Path, Config], bool]
    hierarchy_hash: Callable[[dict[str, Any]], str | None] = lambda result: None
    defaults: dict[str, Any] = field(default_factory=dict)  # applied before the preset
    # modules a worker process imports once, before its first run (the local executor's fork
    # server imports them a single time for all its workers)
    preload: tuple[str, ...] = ()
    # top-level config fields that do not change a run's numbers (a name, where it runs, worker
    # processes, checkpoint and output options), given the config: left out of the run id
    run_only: Callable[[Mapping[str, Any]], tuple[str, ...]] = lambda cfg: ()

    def build(self, raw: Mapping[str, Any], where: str = "") -> Config:
        return self.config_class().build(raw, where=where)

    def result_config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The resolved config (a dict) without its run-only fields: what determines the result,
        hence what a run id hashes."""
        drop = set(self.run_only(cfg))
        return {k: v for k, v in cfg.items() if k not in drop}


KINDS: dict[str, ExperimentKind] = {}


def register(kind: ExperimentKind) -> ExperimentKind:
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ExperimentKind:
    try:
        return KINDS[name]
    except KeyError:
        raise unknown_name("experiment kind", name, KINDS) from None


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


# ---- simulate: the theory simulator ---------------------------------------------------------
def _sim_config() -> type[Config]:
    from granularity.theory.config import SimConfig

    return SimConfig


def _sim_preset(name: str) -> dict[str, Any]:
    from granularity.theory.presets import get_preset

    return get_preset(name).raw()


def _sim_run(cfg: Config, out: Path) -> dict[str, Any]:
    from granularity.theory.experiment import simulate

    return simulate(cfg, out, progress=False, figures=False)  # the report draws from the store


def _sim_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """``<source>.<protocol>.<easy|hard>`` errors (mean over the run's seeds) and final alignment."""
    out: dict[str, Any] = {}
    for src, protos in result.get("errors", {}).items():
        for proto, kinds in protos.items():
            for kind, summ in kinds.items():
                out[f"{src}.{proto}.{kind}"] = _finite(summ.get("mean"))
    for src, summ in result.get("alignment_final", {}).items():
        for key, s in summ.items():
            out[f"align.{src}.{key}"] = _finite(s.get("mean"))
    return out


# the simulator's own rule: the fields its config_hash leaves out (resuming and extending a run
# folder rely on it; tests/sweeps/test_spec.py pins the two lists to each other)
SIM_RUN_ONLY = ("seeds", "seed_batch", "device", "name", "checkpoint_every")


def _sim_complete(out: Path, cfg: Config) -> bool:
    """A simulate folder is finished when its result.json covers exactly this config's seeds."""
    from granularity.theory.experiment import config_hash

    path = out / "result.json"
    if not path.exists():
        return False
    try:
        res = read_json(path)
    except GranularityError:
        return False
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    return res.get("config_hash") == config_hash(cfg) and res.get("seeds") == seeds


register(
    ExperimentKind(
        name="simulate",
        description="the theory simulator (granularity.theory): one run = one seed",
        config_class=_sim_config,
        preset_overrides=_sim_preset,
        seed_overrides=lambda s: {"seeds": 1, "seed0": int(s), "seed_batch": 1},
        seed_keys=("seeds", "seed0", "seed_batch"),
        run=_sim_run,
        metrics=_sim_metrics,
        is_complete=_sim_complete,
        run_only=lambda cfg: SIM_RUN_ONLY,
        # torch._dynamo: torch.optim imports it on the first optimiser (~4 s); matplotlib: the figures
        preload=("torch", "torch._dynamo", "granularity.theory.experiment", "granularity.theory.plots", "matplotlib.pyplot"),
    )
)


# ---- transfer: one real-data pretrain -> transfer run (granularity.engine) -------------------
def _tr_config() -> type[Config]:
    from granularity.engine.config import TransferConfig

    return TransferConfig


# The transfer kind's presets, name -> its overrides: filled by the layer above (importing
# granularity.experiments registers the study's run settings, "study" and "study-quick"), so that
# sweeps never imports experiments; the CLI imports it before reading a sweep file.
TRANSFER_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {}


def register_transfer_preset(name: str, overrides: Callable[[], dict[str, Any]]) -> None:
    TRANSFER_PRESETS[name] = overrides


def _tr_preset(name: str) -> dict[str, Any]:
    if not TRANSFER_PRESETS:
        raise GranularityError(f"Unknown transfer preset {name!r}: none is registered; import granularity.experiments "
                               f"first (it registers study and study-quick).")
    if name not in TRANSFER_PRESETS:
        raise unknown_name("transfer preset", name, TRANSFER_PRESETS)
    return TRANSFER_PRESETS[name]()


def _tr_run(cfg: Config, out: Path) -> dict[str, Any]:
    from granularity.engine.run import run_transfer
    from granularity.utils.io import write_json

    # The engine resumes only a folder of the identical config; one that differs in run-only
    # fields (an interrupted run sent again with other workers or device) is the same run, so
    # its config.json is brought up to date first. Anything else is left to the engine's check.
    path, new = out / "config.json", cfg.to_dict()
    try:
        old = read_json(path) if path.exists() else None
    except GranularityError:
        old = None
    kind = KINDS["transfer"]
    if isinstance(old, dict) and old != new and kind.result_config(old) == kind.result_config(new):
        write_json(path, new)
    return run_transfer(cfg, out)


def _tr_metrics(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("target_error", "target_acc", "rare_error", "common_error", "num_source_classes",
                "num_target_classes", "source_family", "train_seconds"):
        if key in result:
            out[key] = _finite(result[key])
    for key, v in (result.get("levels") or {}).items():
        out[f"levels.{key}"] = _finite(v)
    for key, v in (result.get("pretrain_levels") or {}).items():
        out[f"pretrain_levels.{key}"] = _finite(v)
    return out


def _tr_run_only(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """``workers`` (image-decoding processes), ``save_checkpoints``, the mid-epoch checkpoint
    cadence, the progress cadence and ``eval_every_epoch`` (per-epoch test figures in the log) never change the numbers; ``device``, as for the
    simulator, only their rounding, except with ``bf16`` (True or "auto") or ``tf32`` on: those act
    only where the device has them, so there the device decides the arithmetic and stays in the id."""
    keys = ("workers", "save_checkpoints", "checkpoint_every_steps", "progress_every_s", "eval_every_epoch")
    return keys if cfg.get("bf16") or cfg.get("tf32") else (*keys, "device")


def _tr_complete(out: Path, cfg: Config) -> bool:
    """A finished folder of a run with the same result-relevant config, whose data files (names,
    sizes, mtimes under ``data_root``: the cheap part of the data fingerprint) are unchanged.
    Changed files make the cell run again, and the engine then refuses the folder if the data
    it loads differs (its content fingerprint): the run id names the data by dataset,
    data_root and data_options only, since content hashes need the data loaded."""
    if not (out / "result.json").exists() or not (out / "config.json").exists():
        return False
    try:
        old = read_json(out / "config.json")
        result = read_json(out / "result.json")
    except GranularityError:
        return False
    kind = KINDS["transfer"]
    if not (isinstance(old, dict) and kind.result_config(old) == kind.result_config(cfg.to_dict())):
        return False
    stamp = (result.get("data") or {}).get("files") if isinstance(result, dict) else None
    if stamp is not None:
        from granularity.data.fingerprint import files_stamp

        return files_stamp(cfg.data_root) == stamp
    return True


register(
    ExperimentKind(
        name="transfer",
        description="one real-data pretrain -> transfer run (granularity.engine.run_transfer)",
        config_class=_tr_config,
        preset_overrides=_tr_preset,
        seed_overrides=lambda s: {"seed": int(s)},
        seed_keys=("seed",),
        run=_tr_run,
        metrics=_tr_metrics,
        is_complete=_tr_complete,
        run_only=_tr_run_only,
        hierarchy_hash=lambda result: result.get("hierarchy_hash"),
        preload=("torch", "torch._dynamo", "granularity.engine.run", "granularity.models"),
    )
)
