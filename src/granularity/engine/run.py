"""One run: pretrain on a source label function, transfer to the target level, evaluate.

Every run folder holds ``config.json`` (resolved config), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (model, optimiser, scheduler, RNG states, epoch, metrics; written
atomically every epoch), ``result.json`` (final metrics), ``predictions.npz`` (target
prediction and margin per test image, for hard-sample analyses) and ``env.json``.
Calling :func:`run_transfer` again on the same folder continues from the last checkpoint and
ends with the same result as an uninterrupted run (bit for bit on the CPU), or returns the
finished result at once.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granularity.engine.config import StageConfig, TransferConfig
from granularity.engine.distributed import DistContext, init_distributed
from granularity.engine.embeddings import compute_embeddings
from granularity.engine.folder import RunFolder
from granularity.engine.labels import SourceLabels, build_source_labels, check_source, group_map
from granularity.engine.train import (
    EpochProgress,
    Normaliser,
    Streamed,
    bf16_active,
    channels_last_active,
    engine_layout,
    epoch_generator,
    predict_levels,
    make_optimizer,
    make_scheduler,
    predict,
    train_epoch,
)
from granularity.errors import GranularityError, RunFailedError
from granularity.utils.device import available_memory, resolve_device  # noqa: F401 (resolve_device: API)


class _Interrupt(KeyboardInterrupt):
    """Raised by the test hook ``stop_after_steps`` to simulate a killed run."""


def prepare_data(cfg: TransferConfig, dataset: Any | None = None) -> Any:
    """The run's data set: loaded (unless given), subsetted, rare classes applied."""
    if dataset is None:
        from granularity.data import load_dataset

        dataset = load_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    if cfg.train_size is not None and cfg.train_size > len(dataset.train):
        raise GranularityError(
            f"The 'train_size' parameter must be at most the training set size {len(dataset.train)} (set it with --train-size). Got {cfg.train_size} instead."
        )
    if cfg.test_size is not None and cfg.test_size > len(dataset.test):
        raise GranularityError(
            f"The 'test_size' parameter must be at most the test set size {len(dataset.test)}. Got {cfg.test_size} instead."
        )
    if (cfg.train_size is not None and cfg.train_size < len(dataset.train)) or (
        cfg.test_size is not None and cfg.test_size < len(dataset.test)
    ):
        dataset = dataset.subset(train=cfg.train_size, test=cfg.test_size, seed=cfg.data_seed)
    if cfg.rare is not None:
        from granularity.data import make_rare

        idx = make_rare(dataset, cfg.rare.classes, cfg.rare.keep_fraction, seed=cfg.data_seed)
        dataset = dataset.select(train=idx, rare=cfg.rare.to_dict())
    return dataset


def holdout_validation(cfg: TransferConfig, ds: Any) -> tuple[Any, Any]:
    """``(ds without the validation rows, the validation split or None)`` for ``cfg.val_size``."""
    if cfg.val_size is None:
        return ds, None
    from granularity.data.base import stratified_indices

    n = len(ds.train)
    if cfg.val_size > n // 2:
        raise GranularityError(
            f"The 'val_size' parameter must be at most half the training images ({n // 2} of {n}). Got {cfg.val_size} instead."
        )
    val_idx = stratified_indices(ds.train.y, cfg.val_size, cfg.data_seed + 7919)  # its own stream: not the subset's
    keep = np.setdiff1d(np.arange(n), np.asarray(val_idx))
    return ds.select(train=keep, val_size=cfg.val_size), ds.train.take(val_idx)


def rare_leaf_ids(cfg: TransferConfig, leaf_names: list[str]) -> list[int]:
    if cfg.rare is None:
        return []
    return sorted({leaf_names.index(c) if isinstance(c, str) else int(c) for c in cfg.rare.classes})


def num_source_classes(cfg: TransferConfig, hierarchy: Any, n_train: int) -> int:
    """Classes of the pretraining head, known before any label function is computed."""
    return cfg.source.num_classes(hierarchy, cfg.target, n_train)


def _streams(split: Any) -> bool:
    return not getattr(split, "in_memory", True)


def estimate_memory(cfg: TransferConfig, ds: Any, n_classes: int) -> int:
    """Bytes the run holds at its peak: the training and test inputs as float32 on the device,
    weights + gradients + two optimiser buffers, a batch's logits (forward, softmax, gradient)
    and the per-sample label arrays. A lower bound that counts what grows with the data set
    and the number of classes; activations of a batch are left out (small for these models).
    A streamed split (images decoded from disk per batch) counts only the batches in flight:
    two per DataLoader worker (its prefetch) plus the one being trained on."""
    from granularity.models import create_model

    shape = tuple(int(s) for s in ds.input_shape)
    per_input = int(np.prod(shape)) * 4
    n_tr, n_te = len(ds.train), len(ds.test)
    batch = max(cfg.pretrain.batch_size, cfg.transfer.batch_size)
    in_flight = (2 * max(cfg.workers, 1) + 1) * per_input
    data = sum(
        min(n, (batch if i == 0 else cfg.eval_batch_size)) * in_flight if _streams(split) else n * per_input
        for i, (split, n) in enumerate(((ds.train, n_tr), (ds.test, n_te)))
    )
    with torch.random.fork_rng(devices=[]):
        backbone = create_model(cfg.model.name, shape, 1, **cfg.model.options)
    n_feat = int(getattr(backbone, "num_features", 0))
    params = sum(p.numel() for p in backbone.parameters()) + n_feat * (n_classes - 1)
    weights = 4 * params * 4  # (params, grads, momentum / Adam's two moments)
    logits = 3 * batch * n_classes * 4 + cfg.eval_batch_size * n_classes * 4
    labels = 8 * n_tr * (int(ds.hierarchy.depth) + 2)
    return int(data + weights + logits + labels)


def check_plan(cfg: TransferConfig, ds: Any, *, memory_limit: int | None = None, device: torch.device | None = None) -> dict[str, Any]:
    """Every check that needs only the config and the (subsetted) data set, before any label
    function, model or epoch runs. Returns what a dry run prints (classes, memory estimate)."""
    hier, src = ds.hierarchy, cfg.source
    depth = int(hier.depth)
    if cfg.target > depth:
        raise GranularityError(
            f"The 'target' parameter must be a hierarchy level in [1, {depth}] for data set {cfg.dataset!r}. Got {cfg.target} instead."
        )
    n_target = int(hier.num_classes(cfg.target))
    n_train = len(ds.train)
    check_source(src, hier, cfg.target, n_train, cfg.dataset)
    if cfg.transfer.protocol == "map":
        level = src.level(cfg.target, depth)
        if src.kind in ("kmeans-global", "random") or (level is not None and level < cfg.target):
            what = f"level {level} is coarser than the target level {cfg.target}" if level is not None else "its classes cut across target classes"
            raise GranularityError(
                f"The 'transfer.protocol' 'map' needs source labels that nest in the target level, but 'source' {str(src)!r} "
                f"does not ({what}); use --protocol finetune or probe, or a source at level >= {cfg.target}."
            )
    if src.kind in ("kmeans-within", "kmeans-global") and cfg.embedding == "pca" and _streams(ds.train):
        raise GranularityError(
            f"The 'embedding' 'pca' needs all training pixels in memory, but this data set streams its "
            f"{n_train} training images from disk; use embedding 'cnn' or a .npy file of embeddings for source {str(src)!r}."
        )
    n_src = num_source_classes(cfg, hier, n_train)
    need = estimate_memory(cfg, ds, n_src)
    limit = memory_limit if memory_limit is not None else available_memory(device or torch.device("cpu"))
    if limit is not None and need > 0.8 * limit:
        raise GranularityError(
            f"This run needs about {need / 2**30:.2f} GiB of memory ({n_train} training images, {n_src} source classes) "
            f"but {limit / 2**30:.2f} GiB is available; lower 'train_size', choose a source with fewer classes or a smaller model."
        )
    return {"num_target_classes": n_target, "num_source_classes": n_src, "n_train": n_train, "n_test": len(ds.test),
            "input_shape": list(ds.input_shape), "memory_estimate_bytes": need, "memory_limit_bytes": limit}


def plan_transfer(config: TransferConfig | Mapping[str, Any], *, dataset: Any | None = None,
                  memory_limit: int | None = None) -> dict[str, Any]:
    """Validate a run without training: the config, the data set (name, root, sizes), the
    source label function against the hierarchy, the target level, the memory estimate.
    Raises :class:`GranularityError` (one line) for anything :func:`run_transfer` would refuse."""
    cfg = config if isinstance(config, TransferConfig) else TransferConfig.build(config)
    device = resolve_device(cfg.device)
    ds, val = holdout_validation(cfg, prepare_data(cfg, dataset))
    plan = check_plan(cfg, ds, memory_limit=memory_limit, device=device)
    return {"config": cfg.to_dict(), "device": str(device), **plan, "n_val": 0 if val is None else len(val)}


def _inputs(split: Any, ds: Any, cfg: TransferConfig, device: torch.device) -> Any:
    """In memory: the inputs resident on the device (batches are index slices). Streamed: a
    :class:`Streamed` view whose batches a DataLoader decodes (``cfg.workers`` processes)."""
    if _streams(split):
        return Streamed(split.dataset, tuple(ds.input_shape), cfg.workers, pin_memory=device.type == "cuda")
    return split.x.to(device)


def _identity(xb: torch.Tensor) -> torch.Tensor:
    return xb


def _level_labels(hierarchy: Any, leaf: np.ndarray) -> dict[int, np.ndarray]:
    return {lv: np.asarray(hierarchy.relabel(leaf, lv), dtype=np.int64) for lv in range(1, int(hierarchy.depth) + 1)}


def run_transfer(
    config: TransferConfig | Mapping[str, Any],
    out: str | Path,
    *,
    dataset: Any | None = None,
    embeddings_cache: dict | None = None,
    progress: bool = False,
    stop_after_steps: int | None = None,
    track: str | list[str] | None = None,
    track_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume, or return the finished) pretrain -> transfer run in folder ``out``.

    ``track`` ("tensorboard", "mlflow" or both): log every ``metrics.jsonl`` record live, then
    the config as params and config/result as artifacts, into ``track_dir`` (default
    ``<out>/tracking``); off by default, never part of the run's config or id.

    Parameters
    ----------
    config : TransferConfig or mapping
        The run; a mapping is validated with one-line errors.
    out : path
        Run folder; created if missing. A folder holding a run of another config is an error.
    dataset : RealDataset, optional
        The full data set, already loaded (saves loading it once per run in a study); the
        config's ``train_size``/``test_size``/``rare`` are still applied.
    embeddings_cache : dict, optional
        Shared between runs on the same training set so k-means embeddings are computed once.
    progress : bool
        Print one line per epoch (for people; results are in the files).
    stop_after_steps : int, optional
        Test hook: raise ``KeyboardInterrupt`` after that many optimiser steps (a killed run).

    Returns
    -------
    dict
        The content of ``result.json``.

    Examples
    --------
    >>> run_transfer({"source": "leaf", "target": 2, "train_size": 2000}, "runs/leaf")  # doctest: +SKIP

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the run is data-parallel: see
    :mod:`granularity.engine.distributed` and ``docs/distributed.md``. Only rank 0 touches
    ``out``; every rank returns the result.
    """
    cfg = config if isinstance(config, TransferConfig) else TransferConfig.build(config)
    dctx = init_distributed(resolve_device(cfg.device))
    tracker = None
    if track and dctx.is_main:
        from granularity.tracking import open_tracker

        tracker = open_tracker(track, track_dir or Path(out) / "tracking", Path(out).name)
    with _tf32(dctx.device, cfg.tf32), _deterministic(cfg.deterministic):
        try:
            return _run_transfer(cfg, Path(out), dctx, dataset, embeddings_cache, progress, stop_after_steps, tracker)
        except FloatingPointError as exc:  # a diverged run: fail with its reason, never record chance metrics
            folder = RunFolder(Path(out), cfg.to_dict(), dctx.is_main)
            folder.tracker = tracker
            path = folder.fail(str(exc))
            raise RunFailedError(f"transfer run stopped: {exc}; lower the learning rate (recorded in {path}).") from None


@contextmanager
def _tf32(device: torch.device, on: bool):
    """TF32 matmuls and cuDNN convolutions on CUDA while the run lasts (process-wide flags,
    restored afterwards); ``on=False`` means full float32 there."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(on)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextmanager
def _deterministic(on: bool):
    """``torch.use_deterministic_algorithms(True)`` and ``cudnn.benchmark = False`` (cuDNN's
    deterministic kernels) while the run lasts; process-wide flags, restored afterwards."""
    if not on:
        yield
        return
    import os

    # cuBLAS needs a fixed workspace for deterministic matmuls; read when cuBLAS starts
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old[1], old[2]


def _precision(cfg: TransferConfig, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    bf16 = bf16_active(device, cfg.bf16)
    rec: dict[str, Any] = {"bf16_autocast": bf16, "channels_last": channels_last_active(device, cfg.bf16),
                           "tf32": cfg.tf32 and cuda}
    if cfg.deterministic:
        rec["deterministic_algorithms"] = True
    notes = []
    if cfg.bf16 is True and not bf16:  # asked for explicitly ("auto" falls back silently)
        notes.append(f"bf16 needs a fast bf16 path (CUDA with bf16, or a CPU with AVX512-BF16/AMX); this {device.type} computed in float32")
    if cfg.tf32 and not cuda:
        notes.append("tf32 applies on CUDA only")
    if notes:
        rec["note"] = "; ".join(notes)
    return rec


def _run_transfer(cfg: TransferConfig, out: Path, dctx: DistContext, dataset, embeddings_cache, progress,
                  stop_after_steps, tracker=None) -> dict[str, Any]:
    folder = RunFolder(out, cfg.to_dict(), dctx.is_main)
    folder.tracker = tracker  # TensorBoard/MLflow (granularity.tracking), or None
    t_start = time.perf_counter()
    # the data first: a folder finished or begun on other data is refused, never returned or resumed
    prepared = prepare_data(cfg, dataset)

    def open_folder():
        from granularity.data.fingerprint import data_fingerprint

        fp = data_fingerprint(prepared, cfg.data_options, cfg.data_root if dataset is None else None)
        return folder.open(dctx.device, dctx.world_size, "cpu" if dctx.enabled else None, data=fp)

    # the other ranks get rank 0's copy of the checkpoint (CPU tensors): no shared folder needed
    kind, resumed = dctx.on_main(open_folder)
    if kind == "done":
        return resumed
    data = _RunData.build(cfg, prepared, dctx, embeddings_cache)
    run = _Run(cfg, data, dctx, folder, progress, stop_after_steps)
    run.restore(resumed)
    run.pretrain()
    final = run.transfer()
    return run.finish(final, t_start)


@dataclass
class _RunData:
    """A run's inputs, labels at every level, source labels and level maps."""

    ds: Any
    leaf_tr: np.ndarray
    leaf_te: np.ndarray
    lv_tr: dict[int, np.ndarray]
    lv_te: dict[int, np.ndarray]
    n_target: int
    norm: Normaliser
    src: SourceLabels
    x_tr: Any
    x_te: Any
    src_maps: dict[int, np.ndarray | None]  # source class -> class at each level it nests in
    tgt_maps: dict[int, np.ndarray | None]
    x_val: Any = None  # the validation split (cfg.val_size), or None
    y_val: np.ndarray | None = None  # its target-level labels
    # other versions of the same rows, "test" / "val" -> {name: inputs} (a planted cue's easy and
    # hard images, granularity.data.cues): evaluated with the final model, reported per name
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: TransferConfig, dataset: Any, dctx: DistContext, embeddings_cache: dict | None) -> _RunData:
        device = dctx.device
        ds, val = holdout_validation(cfg, dataset)  # dataset: prepare_data's output
        # refused before decoding images, building labels or a model: contradictory settings, and
        # runs whose tensors would not fit (e.g. per-sample labels on a huge training set)
        check_plan(cfg, ds, device=device)
        hier = ds.hierarchy
        leaf_tr, leaf_te = ds.train.y.cpu().numpy(), ds.test.y.cpu().numpy()
        lv_tr, lv_te = _level_labels(hier, leaf_tr), _level_labels(hier, leaf_te)
        n_target = int(hier.num_classes(cfg.target))
        # images and tables alike: the whole training split's statistics (computed once per data set)
        if getattr(ds, "input_kind", None) == "tokens":  # token ids: no normalisation (2-D: no augmentation)
            norm = _identity
        else:
            norm = Normaliser(ds.train.x if not _streams(ds.train) else _inputs(ds.train, ds, cfg, device),
                              *ds.normalisation_stats(cfg.workers))

        def embeddings() -> np.ndarray:
            # the loader options too: a planted cue (or another image size) gives other pixels
            key = (cfg.dataset, cfg.data_root, repr(sorted(cfg.data_options.items())), cfg.train_size, cfg.data_seed,
                   str(cfg.rare), cfg.embedding, cfg.target)
            cache = embeddings_cache if embeddings_cache is not None else {}
            if key not in cache:
                # streamed: "cnn" trains and predicts from streamed batches, a .npy needs only the length
                x_emb = _inputs(ds.train, ds, cfg, device) if _streams(ds.train) else ds.train.x
                cache[key] = compute_embeddings(cfg.embedding, x_emb, lv_tr[cfg.target], n_target, cfg.data_seed,
                                                device, norm=norm)
            return cache[key]

        src = build_source_labels(cfg.source, hier, leaf_tr, cfg.target, embeddings, cfg.seed)
        if dctx.enabled:  # k-means of GPU embeddings may differ in the last bit between GPUs: rank 0's labels
            src.labels = dctx.broadcast_object(src.labels)
        if cfg.transfer.protocol == "map" and group_map(src.labels, lv_tr[cfg.target], src.num_classes) is None:
            raise GranularityError(
                f"Transfer protocol 'map' needs source labels that nest in the target level; {str(cfg.source)!r} does not. Use 'finetune' or 'probe'."
            )
        return cls(ds, leaf_tr, leaf_te, lv_tr, lv_te, n_target, norm, src,
                   _inputs(ds.train, ds, cfg, device), _inputs(ds.test, ds, cfg, device),
                   {lv: group_map(src.labels, lv_tr[lv], src.num_classes) for lv in lv_tr},
                   {lv: group_map(lv_tr[cfg.target], lv_tr[lv], n_target) for lv in lv_tr},
                   None if val is None else _inputs(val, ds, cfg, device),
                   None if val is None else np.asarray(hier.relabel(val.y.cpu().numpy(), cfg.target), dtype=np.int64),
                   {part: {k: v.to(device) for k, v in getattr(split, "variants", {}).items()}
                    for part, split in (("test", ds.test), ("val", val)) if split is not None and getattr(split, "variants", None)})


class _Run:
    """One run's model, state and stages. Every training stage (pretraining, fine-tuning, the
    linear probe) goes through :meth:`train_stage`; ``state`` is what a checkpoint resumes."""

    def __init__(self, cfg: TransferConfig, data: _RunData, dctx: DistContext, folder: RunFolder, progress: bool,
                 stop_after_steps: int | None) -> None:
        from granularity.models import create_model

        self.cfg, self.d, self.dctx, self.folder = cfg, data, dctx, folder
        self.device, self.progress, self.stop_after_steps = dctx.device, progress, stop_after_steps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # model init without touching the caller's global RNG
            model = create_model(cfg.model.name, tuple(data.x_tr.shape[1:]), data.src.num_classes, **cfg.model.options)
        model = dctx.convert_batchnorm(model.to(self.device))  # world_size > 1: statistics of the global batch
        self.model = engine_layout(model, self.device, cfg.bf16)  # NHWC: the CPU's fast convolutions, CUDA's under bf16
        self.sizes = {lv: int(data.ds.hierarchy.num_classes(lv)) for lv in data.lv_te}
        self.state: dict[str, Any] = {"stage": "pretrain", "epoch": 0, "history": [], "pretrain_final": {}}
        self.resumed: dict[str, Any] | None = None
        self.steps = 0
        self.meter: EpochProgress | None = None  # progress inside the current epoch (progress=True, rank 0)
        self._opt_sched: tuple[Any, Any] = (None, None)  # the stage's optimiser and scheduler, for step checkpoints
        self.val_logits: torch.Tensor | None = None  # target logits on the validation split (val_size)
        self.pretrain_eval: dict[int, torch.Tensor] | None = None  # the last pretraining epoch's test logits

    # ---- checkpoint / resume ---------------------------------------------------------------
    def restore(self, resumed: dict[str, Any] | None) -> None:
        """Model and state from a checkpoint (read by rank 0; metrics.jsonl already rewritten)."""
        self.resumed = resumed
        if resumed is None:
            return
        if resumed["stage"] == "transfer" and self.cfg.transfer.protocol != "map":  # "map" keeps the source head
            with torch.random.fork_rng(devices=[]):
                self.model.reset_head(self.d.n_target)
        self.model.load_state_dict(resumed["model"])
        self.state.update({k: resumed[k] for k in ("stage", "epoch", "history", "pretrain_final", "partial") if k in resumed})

    def checkpoint(self, opt, sched) -> None:
        """Rank 0, from the unwrapped model: the same file as a one-process run's."""
        if not self.cfg.save_checkpoints:
            return
        self.folder.checkpoint({
            **self.state,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            # every draw comes from generators derived from (seed, stage, epoch[, step]), so
            # resuming needs no generator state; the global states are kept for inspection only
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": self.folder.cfg_d,
        })

    def _on_step(self, pos: dict) -> None:
        self.steps += 1
        if self.meter is not None:
            self.meter.update(pos)
        every = self.cfg.checkpoint_every_steps
        # mid-epoch checkpoints in one process (under DDP each rank's running sums differ)
        if every and not self.dctx.enabled and pos["step"] % every == 0 and pos["step"] < pos["n_steps"]:
            self.state["partial"] = {"epoch": self.state["epoch"] + 1, "step": pos["step"],
                                     "totals": list(pos["totals"]), "gen_state": pos["gen"].get_state()}
            self.checkpoint(*self._opt_sched)
        if self.stop_after_steps is not None and self.steps >= self.stop_after_steps:
            raise _Interrupt(f"stopped after {self.steps} steps (test hook)")

    # ---- evaluation ------------------------------------------------------------------------
    def accuracies(self, level_logits: dict[int, torch.Tensor]) -> dict[str, float]:
        return {f"acc_level{lv}": float((z.argmax(1).numpy() == self.d.lv_te[lv]).mean())
                for lv, z in sorted(level_logits.items())}

    def test_levels(self, maps: dict[int, np.ndarray | None], fn=None, x=None, normalise=True) -> dict[int, torch.Tensor]:
        self.model.eval()
        norm = self.d.norm if normalise else None
        # world_size > 1: each rank predicts its slice of the test set, the rows are gathered
        return self.dctx.map_rows(lambda xs: predict_levels(fn or self.model, xs, norm, self.cfg.eval_batch_size,
                                                            self.device, maps, self.sizes, self.cfg.bf16),
                                  self.d.x_te if x is None else x)

    def log_epoch(self, stage: str, epoch: int, train_m: dict, level_logits: dict, seconds: float, n_imgs: int) -> None:
        rec = {"stage": stage, "epoch": epoch, **train_m, **self.accuracies(level_logits), "seconds": seconds,
               "images_per_s": n_imgs / max(seconds, 1e-9)}
        self.state["history"].append(rec)
        self.folder.log(rec)
        if self.progress and self.dctx.is_main:
            accs = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k.startswith(("acc_", "train_")))
            print(f"[{self.folder.out.name}] {stage} epoch {epoch}: {accs} ({seconds:.1f}s)", flush=True)

    # ---- the one training loop -------------------------------------------------------------
    def train_stage(self, name: str, stage: StageConfig, params, net: torch.nn.Module, x, y: torch.Tensor,
                    norm: Callable, evaluate: Callable[[], dict[int, torch.Tensor]], bf16: bool
                    ) -> dict[int, torch.Tensor] | None:
        """Epochs ``state['epoch'] + 1 .. stage.epochs`` of stage ``name`` ("pretrain" or
        "transfer"): train, evaluate, log, checkpoint; the optimiser and scheduler resume from
        the checkpoint when it was written in this stage. Returns the last epoch's evaluation
        (None when no epoch ran), so that a caller needing the final model's test logits does
        not evaluate the same model again."""
        opt = make_optimizer(params, stage)
        sched = make_scheduler(opt, stage, -(-len(y) // stage.batch_size))
        r = self.resumed
        if r is not None and r["stage"] == self.state["stage"] and r["optimizer"] is not None:
            opt.load_state_dict(r["optimizer"])
            sched.load_state_dict(r["scheduler"])
        net = self.dctx.wrap(net)  # DistributedDataParallel when world_size > 1
        self._opt_sched = (opt, sched)
        n_steps = -(-len(y) // stage.batch_size)
        last = None
        for epoch in range(self.state["epoch"] + 1, stage.epochs + 1):
            part = self.state.get("partial")
            start = part if part is not None and part["epoch"] == epoch else None
            label = f"{name} epoch {epoch}"
            if self.progress and self.dctx.is_main:
                self.meter = EpochProgress(f"[{self.folder.out.name}] {label}", n_steps, start["step"] if start else 0,
                                           start["totals"][2] if start else 0, self.cfg.progress_every_s, self.dctx.world_size)
            t0 = time.perf_counter()
            tm = train_epoch(net, x, y, norm, stage, opt, sched, epoch_generator(self.cfg.seed, name, epoch), self.device,
                             bf16, self._on_step, dist=self.dctx, label=label, start=start)
            dt = time.perf_counter() - t0
            self.meter = None
            # the last epoch's evaluation is the stage's result; earlier ones only fill metrics.jsonl
            last = evaluate() if self.cfg.eval_every_epoch or epoch == stage.epochs else {}
            # a resumed epoch: seconds and images/s of the steps this invocation trained
            self.log_epoch(name, epoch, tm, last, dt, len(y) - (start["totals"][2] if start else 0))
            self.state["epoch"], self.state["partial"] = epoch, None
            self.checkpoint(opt, sched)
        return last

    # ---- stages ----------------------------------------------------------------------------
    def pretrain(self) -> None:
        """Stage 1, pretraining on the source labels; then the switch to the transfer stage."""
        if self.state["stage"] != "pretrain":
            return
        cfg, d, p = self.cfg, self.d, self.cfg.pretrain
        self.pretrain_eval = self.train_stage("pretrain", p, self.model.parameters(), self.model, d.x_tr,
                                              torch.as_tensor(d.src.labels), d.norm, lambda: self.test_levels(d.src_maps),
                                              cfg.bf16)
        last = self.state["history"][-1] if p.epochs > 0 else {}  # the last pretraining epoch's evaluation
        self.state["pretrain_final"] = {k: v for k, v in last.items() if k.startswith("acc_level")}
        self.state["stage"], self.state["epoch"] = "transfer", 0
        if cfg.transfer.protocol != "map":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)  # fresh head, reproducibly
                self.model.reset_head(d.n_target)
        self.resumed = None
        self.checkpoint(None, None)

    def transfer(self) -> dict[int, torch.Tensor]:
        """Stage 2, transfer to the target; returns the final test logits at every level."""
        cfg, d, t, model = self.cfg, self.d, self.cfg.transfer, self.model
        y_tgt = torch.as_tensor(d.lv_tr[cfg.target])
        if t.protocol == "map":
            if d.x_val is not None:
                self.val_logits = self.test_levels({cfg.target: d.src_maps[cfg.target]}, x=d.x_val)[cfg.target]
            levels = {lv: d.src_maps[lv] for lv in d.tgt_maps if d.tgt_maps[lv] is not None}
            pre = self.pretrain_eval  # the pretrained model's last evaluation, when it ran in this process
            if pre is not None and all(lv in pre for lv, gm in levels.items() if gm is not None):
                return {lv: pre[lv] for lv, gm in levels.items() if gm is not None}  # the same model: no second pass
            return self.test_levels(levels)
        if t.protocol == "finetune":
            last = self.train_stage("transfer", t, model.parameters(), model, d.x_tr, y_tgt, d.norm,
                                    lambda: self.test_levels(d.tgt_maps), cfg.bf16)
            if d.x_val is not None:
                self.val_logits = self.test_levels({cfg.target: d.tgt_maps[cfg.target]}, x=d.x_val)[cfg.target]
            return last if last is not None else self.test_levels(d.tgt_maps)  # the last epoch evaluated it
        # linear probe: the backbone is frozen, so its features are computed once
        model.eval()
        feats = lambda xs: predict(model.forward_features, xs, d.norm, cfg.eval_batch_size, self.device, cfg.bf16)  # noqa: E731
        f_tr, f_te = self.dctx.map_rows(feats, d.x_tr).to(self.device), self.dctx.map_rows(feats, d.x_te).to(self.device)
        probe = lambda: self.test_levels(d.tgt_maps, model.head, f_te, False)  # noqa: E731
        last = self.train_stage("transfer", t.model_copy(update={"augment": False}), model.head.parameters(),
                                model.head, f_tr, y_tgt, lambda z: z, probe, False)
        if d.x_val is not None:
            f_val = self.dctx.map_rows(feats, d.x_val).to(self.device)
            self.val_logits = self.test_levels({cfg.target: d.tgt_maps[cfg.target]}, model.head, f_val, False)[cfg.target]
        return last if last is not None else probe()

    def target_logits(self, x: Any) -> torch.Tensor:
        """Target logits of the final model on inputs ``x``, computed as for the validation split."""
        cfg, d, t = self.cfg, self.d, self.cfg.target
        if cfg.transfer.protocol == "map":
            return self.test_levels({t: d.src_maps[t]}, x=x)[t]
        if cfg.transfer.protocol == "finetune":
            return self.test_levels({t: d.tgt_maps[t]}, x=x)[t]
        self.model.eval()
        feats = lambda xs: predict(self.model.forward_features, xs, d.norm, cfg.eval_batch_size, self.device, cfg.bf16)  # noqa: E731
        return self.test_levels({t: d.tgt_maps[t]}, self.model.head, self.dctx.map_rows(feats, x).to(self.device), False)[t]

    def variant_figures(self, result: dict[str, Any]) -> None:
        """Target error on the other versions of the test and validation rows (``d.variants``):
        ``result["variants"][name]`` (per fine class too), ``result[f"{name}_error"]`` and
        ``result["val"][f"{name}_error"]``; a planted cue's settings and counts as ``result["cue"]``."""
        cfg, d = self.cfg, self.d
        names = list(d.ds.leaf_names)
        result["variants"] = {}
        for name, x in sorted(d.variants.get("test", {}).items()):
            fig = summarise(self.target_logits(x), d.lv_te[cfg.target], d.leaf_te, names, rare_leaf_ids(cfg, names))
            result["variants"][name] = fig
            result[f"{name}_error"] = fig["target_error"]
        for name, x in sorted(d.variants.get("val", {}).items()):
            ok = self.target_logits(x).argmax(1).numpy() == d.y_val
            result["val"][f"{name}_error"] = float(1 - ok.mean())
        if "cue" in d.ds.info:
            result["cue"] = d.ds.info["cue"]

    # ---- final files -----------------------------------------------------------------------
    def finish(self, final: dict[int, torch.Tensor], t_start: float) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        logits = final[cfg.target]  # (N_test, n_target)
        y_tgt = d.lv_te[cfg.target]
        result = self.result(final, logits)
        result["seconds"] = time.perf_counter() - t_start  # this invocation (a resumed run: the rest only)
        result["train_seconds"] = sum(r["seconds"] for r in self.state["history"])
        self.folder.finish(result, {"pred": logits.argmax(1).numpy().astype(np.int32),
                                    "margin": _margins(logits, y_tgt).astype(np.float32),
                                    "y_target": y_tgt.astype(np.int32), "y_leaf": d.leaf_te.astype(np.int32)},
                           keep_checkpoint=cfg.save_checkpoints)
        self.dctx.barrier()  # every rank returns once the run folder is complete
        return result

    def result(self, final: dict[int, torch.Tensor], logits: torch.Tensor) -> dict[str, Any]:
        cfg, d, ds = self.cfg, self.d, self.d.ds
        names = list(ds.leaf_names)
        result = summarise(logits, d.lv_te[cfg.target], d.leaf_te, names, rare_leaf_ids(cfg, names))
        result.update({
            "levels": self.accuracies(final),
            "pretrain_levels": self.state["pretrain_final"],
            "source": str(cfg.source),
            "source_family": d.src.family,
            "num_source_classes": d.src.num_classes,
            "label_function_meta": d.src.meta,
            "target_level": cfg.target,
            "num_target_classes": d.n_target,
            "protocol": cfg.transfer.protocol,  # "transfer_mode" in results of before the rename
            "hierarchy_hash": getattr(ds.hierarchy, "content_hash", None),
            "data": self.folder.data,  # the data fingerprint (granularity.data.fingerprint)
            "dataset": {"name": ds.name, "version": getattr(ds, "version", None), "n_train": len(d.leaf_tr),
                        "n_test": len(d.leaf_te)},
            "model": {"name": cfg.model.name, "params": int(sum(p.numel() for p in self.model.parameters()))},
            "seed": cfg.seed,
            "device": str(self.device),
            "world_size": self.dctx.world_size,
            "precision": _precision(cfg, self.device),
        })
        if d.y_val is not None:  # selection figures: the validation split held out of training
            ok = self.val_logits.argmax(1).numpy() == d.y_val
            result["val"] = {"target_error": float(1 - ok.mean()), "target_acc": float(ok.mean()), "n": int(len(ok))}
        if self.d.variants:
            self.variant_figures(result)
        return result


def _margins(logits: torch.Tensor, y_target: np.ndarray) -> np.ndarray:
    """Softmax probability of the true class minus the largest other one (> 0 iff correct)."""
    probs = torch.softmax(logits, 1)
    y = torch.as_tensor(y_target)
    p_true = probs.gather(1, y[:, None])[:, 0]
    other = probs.clone()
    other[torch.arange(len(y)), y] = -1.0
    return (p_true - other.max(1).values).numpy()

def summarise(logits: torch.Tensor, y_target: np.ndarray, y_leaf: np.ndarray, leaf_names: list[str],
              rare: list[int]) -> dict[str, Any]:
    """Target error overall, per fine (leaf) class, and on rare subclasses versus the rest."""
    correct = logits.argmax(1).numpy() == y_target
    per_fine = {}
    for c, name in enumerate(leaf_names):
        sel = y_leaf == c
        if sel.any():
            per_fine[name] = float(correct[sel].mean())
    out: dict[str, Any] = {"target_acc": float(correct.mean()), "target_error": float(1 - correct.mean()),
                           "per_fine_class_target_acc": per_fine}
    if rare:
        is_rare = np.isin(y_leaf, rare)
        out["rare_classes"] = [leaf_names[c] for c in rare]
        out["rare_error"] = float(1 - correct[is_rare].mean()) if is_rare.any() else float("nan")
        out["common_error"] = float(1 - correct[~is_rare].mean()) if (~is_rare).any() else float("nan")
    return out
