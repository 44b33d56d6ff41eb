"""Study designs that can answer "should I pretrain on finer labels?" on real images.

Every design compares two pretraining arms, paired by seed: ``target`` (the coarse target
labels) and ``leaf`` (the 10 fine labels). Both arms of a seed share the model initialisation
(the backbone is drawn before the head), the data splits and the cue draw; only the labels
differ. Each pretrained network is then transferred to the target task by every asked protocol:
``map`` (the pretraining head read out directly, fine -> coarse by logsumexp), ``probe`` (a fresh
head on frozen features) and ``finetune`` (fresh head, all weights), the last two on a
*transfer split disjoint from the pretraining split*, at each asked size (images per target
class). Designs (``DESIGNS``, registered in :mod:`granularity.experiments.registry`):

- ``bridge``: a planted cue per coarse class (:mod:`granularity.data.cues`) in a fraction
  ``rho`` of the training images; error on easy (cued) and hard (cue-free) test images.
- ``bridge-phase``: the bridge over a ``rho`` x cue-strength grid (a real-data phase diagram).
- ``groupings``: target groupings natural4 (control), natural2, random, confusable.
- ``fewshot``: transfer split of 10 / 100 / 1000 images per target class.

The primary contrast (metric, protocol, size, cell) is part of the config, so it is written to
``study.json`` before the first run and reported first. Anything chosen on data must be
chosen on the validation split (its errors are recorded next to the test errors).

Folder layout: ``study.json``; ``runs/<cell>/seed<s>/<arm>/pretrain.pt`` (+ ``pretrain.json``);
``runs/<cell>/seed<s>/<arm>/<protocol>[-n<k>]/result.json`` and ``predictions.npz``; then
``results.json``, ``results.csv``, ``report.md`` and figures (see
:mod:`granularity.experiments.design_report`). One unit of the runner
(:mod:`granularity.experiments.runner`) is one arm of one (cell, seed): its pretraining and
every transfer; finished units are skipped when the design is run again, and an interrupted
unit restarts its unfinished transfers (the finished pretraining is reloaded).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from granularity.data.cues import CueConfig
from granularity.engine.config import ModelConfig, StageConfig
from granularity.errors import GranularityError
from granularity.utils.config import Config
from granularity.experiments.runner import Plan, Unit
from granularity.utils.io import write_json

ARMS = ("target", "leaf")
Protocol = Literal["map", "probe", "finetune"]
METRICS = ("hard_error", "easy_error", "target_error", "worst_subclass_error")


class PrimaryConfig(Config):
    """The one contrast a design is judged by, fixed before it runs: leaf minus target
    pretraining, paired by seed, on ``metric`` after transfer ``protocol``."""

    metric: Literal["hard_error", "easy_error", "target_error", "worst_subclass_error"] = "hard_error"
    protocol: Protocol = "probe"
    transfer_per_class: int | None = None  # None: the largest swept size
    cell: str | None = None  # None: the first cell


# batch 32: 4x the optimiser steps of batch 128 for about the same CPU time (314 pretraining
# steps); with batch 128 (78 steps) a first run left the leaf arm at ~0.2 target error on cued
# confusable images, i.e. far from trained. No augmentation: the cue sits at a fixed place.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": "cnn", "options": {"width": 16}},
    "pretrain": {"epochs": 2, "batch_size": 32, "augment": False},
    "transfer": {"epochs": 3, "batch_size": 32, "augment": False, "warmup_epochs": 0.2},
}


class DesignConfig(Config):
    design: Literal["bridge", "bridge-phase", "groupings", "fewshot"] = "bridge"
    dataset: Literal["fashion-mnist"] = "fashion-mnist"  # the groupings name Fashion-MNIST classes
    data_root: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    groupings: list[str] = Field(default_factory=lambda: ["natural4"], min_length=1)  # see data.hierarchies.GROUPING_HELP
    cue: CueConfig | None = None  # None: no planted cue
    cue_rho: list[float] | None = None  # grid axes (bridge-phase); None: cue.rho / cue.strength
    cue_strength: list[float] | None = None
    cue_seed: int = 0  # the patterns (a fixed property of the data, shared by all seeds)
    # sized for a shared 2-core machine: see the DESIGNS comment and docs/results/<design>/
    pretrain_size: int = Field(5000, ge=1)  # pretraining images, leaf-stratified
    val_size: int = Field(500, ge=0)
    test_size: int | None = Field(2000, ge=1)  # a fixed stratified subset of the test file (None: all)
    transfer_per_class: list[int] = Field(default_factory=lambda: [100], min_length=1)
    transfer_cue: bool = True  # the transfer split carries the cue like the pretraining split
    protocols: list[Protocol] = Field(default_factory=lambda: ["map", "probe", "finetune"], min_length=1)
    transfer_min_steps: int = Field(10, ge=1)  # small transfer splits get more epochs, up to this many steps
    primary: PrimaryConfig = Field(default_factory=PrimaryConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(**STAGE_DEFAULTS["model"]))
    pretrain: StageConfig = Field(default_factory=lambda: StageConfig(**STAGE_DEFAULTS["pretrain"]))
    transfer: StageConfig = Field(default_factory=lambda: StageConfig(**STAGE_DEFAULTS["transfer"]))
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data: Any) -> Any:
        """A partial ``pretrain`` / ``transfer`` / ``model`` (e.g. only ``epochs``) keeps the other
        design defaults instead of falling back to the engine's (batch 128, augmentation)."""
        if isinstance(data, Mapping):
            from granularity.utils.config import deep_merge

            data = dict(data)
            for key, default in STAGE_DEFAULTS.items():
                if isinstance(data.get(key), Mapping):
                    data[key] = deep_merge(default, dict(data[key]))
        return data

    @model_validator(mode="after")
    def _check(self) -> DesignConfig:
        if (self.cue_rho or self.cue_strength) and self.cue is None:
            raise ValueError("cue_rho / cue_strength need a 'cue' config (size, leak, corner)")
        for name, vals, lo in (("cue_rho", self.cue_rho, 0.0), ("cue_strength", self.cue_strength, 1e-9)):
            if vals is not None and (not vals or any(not lo <= v <= 1 for v in vals)):
                raise ValueError(f"{name} must be a non-empty list of values in [{lo:g}, 1]")
        if any(k < 1 for k in self.transfer_per_class):
            raise ValueError("transfer_per_class must hold sizes >= 1")
        if self.primary.transfer_per_class is not None and self.primary.transfer_per_class not in self.transfer_per_class:
            raise ValueError(f"primary.transfer_per_class {self.primary.transfer_per_class} must be one of {self.transfer_per_class}")
        if self.primary.protocol not in self.protocols:
            raise ValueError(f"primary.protocol {self.primary.protocol!r} must be one of the run protocols {self.protocols}")
        if self.primary.metric in ("hard_error", "easy_error") and self.cue is None:
            raise ValueError(f"primary.metric {self.primary.metric!r} needs a cue; use target_error or worst_subclass_error")
        if self.primary.metric == "target_error" and self.cue is not None:
            raise ValueError("primary.metric 'target_error' is for designs without a cue; use hard_error or easy_error")
        if self.primary.cell is not None and self.primary.cell not in cell_names(self):
            raise ValueError(f"primary.cell {self.primary.cell!r} must be one of {cell_names(self)}")
        return self


#: Defaults of each design (merged under the user's settings). Sized for <= 30 min on 2 CPU
#: cores with the 3 default seeds (measured figures in docs/results/<design>/).
DESIGNS: dict[str, dict[str, Any]] = {
    # confusable: the coarse task needs fine distinctions (T-shirt vs Shirt...), so a 4x4 cue is
    # much easier than the object features, the theory's regime; rho 1 = the paper's setting
    # (every training image has the common feature, hard samples only at test)
    "bridge": {"groupings": ["confusable"], "cue": {"rho": 1.0, "strength": 1.0, "size": 4, "leak": 0.0},
               "primary": {"metric": "hard_error", "protocol": "probe"}},
    "bridge-phase": {"groupings": ["confusable"], "cue": {"size": 4, "leak": 0.0}, "cue_rho": [0.5, 1.0],
                     "cue_strength": [0.25, 1.0], "protocols": ["map", "probe"],
                     "primary": {"metric": "hard_error", "protocol": "probe", "cell": "confusable/rho1-s1"}},
    "groupings": {"groupings": ["natural4", "natural2", "random", "confusable"], "transfer_per_class": [100],
                  "primary": {"metric": "target_error", "protocol": "probe", "cell": "confusable"}},
    "fewshot": {"groupings": ["confusable"], "transfer_per_class": [10, 100, 1000], "protocols": ["probe", "finetune"],
                "primary": {"metric": "target_error", "protocol": "probe", "transfer_per_class": 10}},
}
QUICK_DESIGN = {  # seconds: for tests and smoke runs, not for conclusions
    "seeds": [0, 1], "pretrain_size": 400, "val_size": 100, "test_size": 200,
    "model": {"name": "cnn", "options": {"width": 8}}, "pretrain": {"epochs": 1}, "transfer": {"epochs": 1},
    "transfer_min_steps": 2,
}
QUICK_SIZES = {"bridge": {"transfer_per_class": [20]},
               "bridge-phase": {"cue_rho": [0.5, 1.0], "cue_strength": [1.0], "transfer_per_class": [20]},
               "groupings": {"groupings": ["natural4", "confusable"], "transfer_per_class": [20]},
               "fewshot": {"transfer_per_class": [2, 20], "primary": {"transfer_per_class": 2}}}


def design_config(design: str, overrides: Mapping[str, Any] | None = None, *, quick: bool = False) -> DesignConfig:
    """The design's defaults (``DESIGNS``), then the quick sizes, then ``overrides``."""
    from granularity.utils.config import deep_merge

    if design not in DESIGNS:
        from granularity.errors import unknown_name

        raise unknown_name("design", design, DESIGNS)
    raw = deep_merge({"design": design}, DESIGNS[design])
    if quick:
        raw = deep_merge(raw, quick_preset(design))
    return DesignConfig.build(deep_merge(raw, dict(overrides or {})))


def _num(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True)
class Cell:
    name: str
    grouping: str
    cue: CueConfig | None


def cells(cfg: DesignConfig) -> list[Cell]:
    """Every point of the design's pretraining axes: grouping x (rho x strength)."""
    out = []
    for g in cfg.groupings:
        if cfg.cue is None:
            out.append(Cell(g, g, None))
            continue
        for rho, st in itertools.product(cfg.cue_rho or [cfg.cue.rho], cfg.cue_strength or [cfg.cue.strength]):
            out.append(Cell(f"{g}/rho{_num(rho)}-s{_num(st)}", g, cfg.cue.model_copy(update={"rho": rho, "strength": st})))
    return out


def cell_names(cfg: DesignConfig) -> list[str]:
    return [c.name for c in cells(cfg)]


def transfers(cfg: DesignConfig) -> list[tuple[str, str, int | None]]:
    """``(folder, protocol, images per target class)`` of every transfer of one pretrained net."""
    out: list[tuple[str, str, int | None]] = []
    for protocol in cfg.protocols:
        if protocol == "map":
            out.append(("map", "map", None))
        else:
            out += [(f"{protocol}-n{k}", protocol, k) for k in sorted(cfg.transfer_per_class)]
    return out


def _folder_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text)


def unit_dir(out: Path, cell: Cell, seed: int, arm: str) -> Path:
    return out / "runs" / _folder_name(cell.name) / f"seed{seed}" / arm


def load(cfg: DesignConfig) -> Any:
    from granularity.data import load_dataset

    return load_dataset(cfg.dataset, root=cfg.data_root)


def plan(cfg: DesignConfig, dataset: Any) -> Plan:
    """One unit per (cell, seed, arm): its pretraining and every transfer; both arms of a
    (cell, seed) share its data (one group)."""
    check_design(cfg, dataset)
    done = tuple(f"{t}/result.json" for t, _, _ in transfers(cfg))
    units = [Unit(arm, s, c, str(unit_dir(Path(), c, s, arm)), group=f"{c.name}/seed{s}", done=done)
             for c in cells(cfg) for s in cfg.seeds for arm in ARMS]
    return Plan(cells(cfg), units, {"main": dataset})


def trainer(cfg: DesignConfig, plan: Plan):
    """Train one unit (:func:`run_unit`); the data of its (cell, seed) is built once for both arms."""
    from granularity.engine.run import resolve_device

    device = resolve_device(cfg.device)
    built: dict[str, CellData] = {}

    def train(unit: Unit, folder: Path) -> None:
        if unit.group not in built:
            built.clear()
            built[unit.group] = build_cell_data(cfg, unit.config, unit.seed, plan.data["main"])
        run_unit(cfg, built[unit.group], unit.arm, unit.seed, folder, device)

    return train


def dry_run(cfg: DesignConfig) -> str:
    n = len(cells(cfg)) * len(cfg.seeds) * len(ARMS)
    return (f"{n} pretraining runs ({len(cells(cfg))} cells x {len(cfg.seeds)} seeds x {len(ARMS)} arms), "
            f"{n * len(transfers(cfg))} transfers")


# the `granularity study` options of the paired designs -> the key each sets (their data set is Fashion-MNIST)
FLAGS = {"seeds": "seeds", "data_root": "data_root", "train_size": "pretrain_size", "device": "device",
         "groupings": "groupings", "protocol": "protocols", "model": "model.name", "epochs": "pretrain.epochs",
         "transfer_epochs": "transfer.epochs"}


def cli_extra(given: Mapping[str, Any]) -> dict[str, Any]:
    """``--protocol P``: only P is run, so it is the primary one; ``--grouping``: the default
    primary cell may not be among them (the first cell then)."""
    out: dict[str, Any] = {"primary": {}}
    if "protocol" in given:
        out = {"protocols": [given["protocol"]], "primary": {"protocol": given["protocol"]}}
    if "groupings" in given:
        out["primary"]["cell"] = None
    return out


def quick_preset(design: str) -> dict[str, Any]:
    from granularity.utils.config import deep_merge

    return deep_merge(QUICK_DESIGN, QUICK_SIZES[design])


def check_design(cfg: DesignConfig, dataset: Any) -> None:
    """Checks that need the data set: grouping names, split sizes."""
    from granularity.data.hierarchies import parse_grouping

    leaves = list(dataset.leaf_names)
    y = dataset.train.y.cpu().numpy()
    for g in cfg.groupings:
        garr, _ = parse_grouping(g, leaves, seed=cfg.seeds[0])
        smallest = np.bincount(garr[y]).min()
        k = max(cfg.transfer_per_class) if set(cfg.protocols) - {"map"} else 0
        if k + cfg.val_size + cfg.pretrain_size > len(y) or k > smallest:
            raise GranularityError(
                f"The splits do not fit the {len(y)} training images (grouping {g!r}, smallest target class {smallest}): "
                f"pretrain_size {cfg.pretrain_size} + val_size {cfg.val_size} + transfer_per_class {k} per class; lower them."
            )
    if cfg.test_size is not None and cfg.test_size > len(dataset.test):
        raise GranularityError(f"The 'test_size' parameter must be at most {len(dataset.test)}. Got {cfg.test_size} instead.")


# ---------------------------------------------------------------------------------------------
# Data of one (cell, seed): splits, target labels, cues
# ---------------------------------------------------------------------------------------------
@dataclass
class CellData:
    group: np.ndarray  # leaf -> target class
    n_groups: int
    x_pre: torch.Tensor
    leaf_pre: np.ndarray
    x_transfer: torch.Tensor  # in draw order: per-class prefixes are the smaller sizes
    leaf_transfer: np.ndarray
    evals: dict[str, tuple[torch.Tensor, np.ndarray]]  # name -> (images, leaf labels)
    cue_counts: dict[str, Any]


def _rng(seed: int, what: str) -> np.random.Generator:
    salt = {"pretrain": 11, "transfer": 12, "val": 13}[what]
    return np.random.default_rng([int(seed), salt])


def build_cell_data(cfg: DesignConfig, cell: Cell, seed: int, dataset: Any) -> CellData:
    """The seed's splits of the training file (pretrain / transfer / val, disjoint), the fixed
    test subset, target labels of the cell's grouping and, with a cue, the cued images."""
    from granularity.data.base import stratified_indices
    from granularity.data.cues import apply_cues, cue_patterns, plant
    from granularity.data.hierarchies import parse_grouping
    from granularity.data.splits import disjoint_splits

    group, names = parse_grouping(cell.grouping, list(dataset.leaf_names), seed=seed)
    g = len(names)
    x_all, y_all = dataset.train.x.cpu(), dataset.train.y.cpu().numpy()
    k = max(cfg.transfer_per_class) if set(cfg.protocols) - {"map"} else 0
    sp = disjoint_splits(group[y_all], y_all, transfer_per_class=k, val=cfg.val_size, pretrain=cfg.pretrain_size, seed=seed)
    te = np.arange(len(dataset.test)) if cfg.test_size is None else np.asarray(stratified_indices(dataset.test.y, cfg.test_size, 0))
    x_te, y_te = dataset.test.x.cpu()[te], dataset.test.y.cpu().numpy()[te]
    parts = {n: (x_all[sp[n]], y_all[sp[n]]) for n in ("pretrain", "transfer", "val")}
    counts: dict[str, Any] = {}
    if cell.cue is None:
        evals = {"test": (x_te, y_te), "val": parts["val"]}
    else:
        c = cell.cue
        pats = cue_patterns(g, c.size, cfg.cue_seed)

        def cued(x, leaf, what):
            planted, _, counts[what] = plant(x, group[leaf], g, c, pats, _rng(seed, what))  # the data option's path too
            return planted

        parts["pretrain"] = (cued(*parts["pretrain"], "pretrain"), parts["pretrain"][1])
        if cfg.transfer_cue:
            parts["transfer"] = (cued(*parts["transfer"], "transfer"), parts["transfer"][1])
        own = lambda x, leaf: apply_cues(x, group[leaf], pats, c.strength, c.corner)  # noqa: E731 - easy: every image its own cue
        xv, yv = parts["val"]
        evals = {"test_easy": (own(x_te, y_te), y_te), "test_hard": (x_te, y_te),
                 "val_easy": (own(xv, yv), yv), "val_hard": (xv, yv)}
    return CellData(group, g, parts["pretrain"][0], parts["pretrain"][1], parts["transfer"][0], parts["transfer"][1],
                    evals, counts)


# ---------------------------------------------------------------------------------------------
# One unit: pretrain one arm, transfer by every protocol and size
# ---------------------------------------------------------------------------------------------
def _stage_for(stage: StageConfig, n: int, min_steps: int) -> StageConfig:
    """``stage`` with enough epochs for ``min_steps`` optimiser steps on ``n`` images."""
    per_epoch = max(1, -(-n // stage.batch_size))
    return stage.model_copy(update={"epochs": max(stage.epochs, math.ceil(min_steps / per_epoch))})


def _fresh_model(cfg: DesignConfig, shape, n_classes: int, seed: int, device):
    """The unit's model (the same backbone draw for both arms), in the engine's memory layout for
    float32 on ``device`` (channels-last on the CPU, where oneDNN's convolutions and pooling are
    fastest in it; :func:`~granularity.engine.train.engine_layout`)."""
    from granularity.engine.train import engine_layout
    from granularity.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the backbone is drawn first, with a 1-way head: the same for every arm
        model = create_model(cfg.model.name, tuple(shape), 1, **cfg.model.options)
        torch.manual_seed(seed + 1)
        model.reset_head(n_classes)
    return engine_layout(model.to(device), torch.device(device), False)


def _train(model, x, y, norm, stage: StageConfig, seed: int, what: str, device) -> dict[str, float]:
    from granularity.engine.fused_group import epoch_fn
    from granularity.engine.train import epoch_generator, make_optimizer, make_scheduler, train_epoch

    params = model.parameters()
    opt = make_optimizer(params, stage)
    sched = make_scheduler(opt, stage, -(-len(y) // stage.batch_size))
    m: dict[str, float] = {}
    for epoch in range(1, stage.epochs + 1):
        train = epoch_fn(train_epoch)  # in a fused group (runner.execute_units): trained with the other units
        m = train(model, x, torch.as_tensor(y), norm, stage, opt, sched, epoch_generator(seed, what, epoch), device)
    return m


def run_unit(cfg: DesignConfig, data: CellData, arm: str, seed: int, folder: Path, device) -> None:
    """Pretrain ``arm`` (or load its finished pretraining) and run every missing transfer."""
    from granularity.engine.fused_group import current_fused_with
    from granularity.engine.train import Normaliser
    from granularity.utils.io import write_bytes_atomic

    folder.mkdir(parents=True, exist_ok=True)
    todo = [t for t in transfers(cfg) if not (folder / t[0] / "result.json").exists()]
    if not todo:
        return
    src = data.group[data.leaf_pre] if arm == "target" else data.leaf_pre
    n_src = data.n_groups if arm == "target" else len(data.group)
    norm = Normaliser(data.x_pre)
    model = _fresh_model(cfg, data.x_pre.shape[1:], n_src, seed, device)
    ckpt = folder / "pretrain.pt"
    if ckpt.exists():
        model.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True))
    else:
        t0 = time.perf_counter()
        m = _train(model, data.x_pre.to(device), src, norm, cfg.pretrain, seed, "pretrain", device)
        import io

        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        write_bytes_atomic(ckpt, lambda fh: fh.write(buf.getvalue()))
        fused = current_fused_with()  # its seconds are then the group's wall time
        write_json(folder / "pretrain.json", {**m, "seconds": time.perf_counter() - t0, "n_images": len(src),
                                              "num_classes": n_src, "cue_counts": data.cue_counts,
                                              **({"fused_with": fused} if fused is not None else {})})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gmap = np.arange(data.n_groups) if arm == "target" else data.group
    for name, protocol, k in todo:
        t0 = time.perf_counter()
        preds, extra = _transfer(cfg, data, model, state, gmap, norm, protocol, k, seed, device)
        fused = current_fused_with()  # trained in a fused group of K (runner.execute_units), else absent
        _write_transfer(folder / name, data, preds, {"protocol": protocol, "transfer_per_class": k, "arm": arm, "seed": seed,
                                                     "seconds": time.perf_counter() - t0, **extra,
                                                     **({"fused_with": fused} if fused is not None else {})})


def _restore(model, state: dict, device) -> None:
    """The pretrained weights (and pretraining head) back into ``model``, whatever was trained since."""
    if model.num_classes != state["head.weight"].shape[0]:
        with torch.random.fork_rng(devices=[]):
            model.reset_head(int(state["head.weight"].shape[0]))  # overwritten by the state just below
    model.load_state_dict(state)
    model.to(device)


def _transfer(cfg, data: CellData, model, state, gmap, norm, protocol: str, k: int | None, seed: int, device):
    """Target predictions on every evaluation set after one transfer."""
    from granularity.data.splits import per_class_prefix
    from granularity.engine.fused_group import predict_fn
    from granularity.engine.train import group_logits, predict

    predict = predict_fn(predict)  # in a fused group (runner.execute_units): evaluated with the other units
    extra: dict[str, Any] = {}
    _restore(model, state, device)
    if protocol == "map":
        model.eval()
        fn = lambda xs: group_logits(model(xs).float().cpu(), gmap, data.n_groups)  # noqa: E731
        return {n: predict(fn, x, norm, 1000, device).argmax(1).numpy() for n, (x, _) in data.evals.items()}, extra
    order = np.arange(len(data.leaf_transfer))
    idx = per_class_prefix(order, data.group[data.leaf_transfer], k)
    x_t, y_t = data.x_transfer[idx].to(device), data.group[data.leaf_transfer[idx]]
    stage = _stage_for(cfg.transfer, len(idx), cfg.transfer_min_steps)
    extra.update(n_transfer=int(len(idx)), epochs=stage.epochs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)  # the same fresh head for both arms
        model.reset_head(data.n_groups)
    model.to(device)
    if protocol == "finetune":
        extra.update(_train(model, x_t, y_t, norm, stage, seed, "transfer", device))
        model.eval()
        return {n: predict(model, x, norm, 1000, device).argmax(1).numpy() for n, (x, _) in data.evals.items()}, extra
    model.eval()
    feats = lambda x: predict(model.forward_features, x, norm, 1000, device).to(device)  # noqa: E731
    ident = lambda z: z  # noqa: E731
    extra.update(_train(model.head, feats(x_t), y_t, ident, stage.model_copy(update={"augment": False}), seed, "transfer", device))
    model.head.eval()
    return {n: predict(model.head, feats(x), None, 1000, device).argmax(1).numpy() for n, (x, _) in data.evals.items()}, extra


def _write_transfer(folder: Path, data: CellData, preds: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    from granularity.utils.io import write_npz

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for n, (_, leaf) in data.evals.items():
        arrays[f"pred_{n}"] = preds[n].astype(np.int16)
        arrays[f"leaf_{n}"] = leaf.astype(np.int16)
        arrays[f"target_{n}"] = data.group[leaf].astype(np.int16)
    write_npz(folder / "predictions.npz", **arrays)
    errs = {n: float(np.mean(preds[n] != data.group[leaf])) for n, (_, leaf) in data.evals.items()}
    write_json(folder / "result.json", {**info, "errors": errs})  # last: its presence marks the unit done
