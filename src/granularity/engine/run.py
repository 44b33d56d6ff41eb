"""One run: pretrain on a source label function, transfer to the target level, evaluate.

Every run folder holds ``config.json`` (resolved config), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (model, optimiser, scheduler, RNG states, epoch, metrics; written
atomically every epoch), ``result.json`` (final metrics), ``predictions.npz`` (target
prediction and margin per test image, for hard-sample analyses) and ``env.json``.
Calling :func:`run_transfer` again on the same folder continues from the last checkpoint and
ends with the same result as an uninterrupted run (bit for bit on the CPU), or returns the
finished result at once.

The run is three rooms: this module (the public API and the run's outline), the inputs
(:mod:`granularity.engine.inputs`: data, checks, labels, device tensors, prepared once) and the
stage loop (:mod:`granularity.engine.stages`: pretraining, transfer, evaluation, final files).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from granularity.engine.config import TransferConfig
from granularity.engine.distributed import DistContext, init_distributed
from granularity.engine.folder import RunFolder
from granularity.engine.inputs import (  # noqa: F401 (estimate_memory, num_source_classes: API)
    RunData,
    check_plan,
    data_sizes,
    estimate_memory,
    holdout_validation,
    num_source_classes,
    prepare_data,
    sizes_line,
)
from granularity.engine.stages import Run
from granularity.errors import RunFailedError
from granularity.utils.device import resolve_device


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
    data = RunData.build(cfg, prepared, dctx, embeddings_cache)
    if progress and dctx.is_main:  # what the run uses, before any training (issue 30)
        print(f"[{out.name}] {sizes_line(data_sizes(data.ds, 0 if data.y_val is None else len(data.y_val)))}", flush=True)
    run = Run(cfg, data, dctx, folder, progress, stop_after_steps)
    run.restore(resumed)
    run.pretrain()
    final = run.transfer()
    return run.finish(final, t_start)


