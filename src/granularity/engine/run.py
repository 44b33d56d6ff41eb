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

import io
import time
from contextlib import contextmanager
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granularity.engine.config import TransferConfig
from granularity.engine.distributed import DistContext, init_distributed
from granularity.engine.embeddings import compute_embeddings
from granularity.engine.labels import SourceLabels, build_source_labels, group_map, parse_source
from granularity.engine.train import (
    Normaliser,
    Streamed,
    epoch_generator,
    predict_levels,
    make_optimizer,
    make_scheduler,
    predict,
    train_epoch,
)
from granularity.errors import GranularityError
from granularity.utils.io import (
    append_jsonl,
    check_writable,
    environment,
    read_json,
    write_bytes_atomic,
    write_json,
    write_npz,
)


class _Interrupt(KeyboardInterrupt):
    """Raised by the test hook ``stop_after_steps`` to simulate a killed run."""


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise GranularityError("The 'device' parameter is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_data(cfg: TransferConfig, dataset: Any | None = None) -> Any:
    """The run's data set: loaded (unless given), subsetted, rare classes applied."""
    if dataset is None:
        from granularity.data import load_dataset

        dataset = load_dataset(cfg.dataset, root=cfg.data_root)
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


def rare_leaf_ids(cfg: TransferConfig, leaf_names: list[str]) -> list[int]:
    if cfg.rare is None:
        return []
    return sorted({leaf_names.index(c) if isinstance(c, str) else int(c) for c in cfg.rare.classes})


def available_memory(device: torch.device) -> int | None:
    """Bytes free for the run's tensors on ``device`` (None: unknown, no check). Tests
    monkeypatch this to simulate a small machine."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def num_source_classes(cfg: TransferConfig, hierarchy: Any, n_train: int) -> int:
    """Classes of the pretraining head, known before any label function is computed
    (k-means: at most K)."""
    kind, k = parse_source(cfg.source)
    depth = int(hierarchy.depth)
    if kind in ("target", "level", "leaf"):
        return int(hierarchy.num_classes({"target": cfg.target, "leaf": depth}.get(kind, k)))
    if kind == "per-sample":
        return int(n_train)
    return int(k)


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
    hier = ds.hierarchy
    depth = int(hier.depth)
    if cfg.target > depth:
        raise GranularityError(
            f"The 'target' parameter must be a hierarchy level in [1, {depth}] for data set {cfg.dataset!r}. Got {cfg.target} instead."
        )
    kind, k = parse_source(cfg.source)
    n_target = int(hier.num_classes(cfg.target))
    n_train = len(ds.train)
    if kind == "level" and k > depth:
        raise GranularityError(
            f"The source level in {cfg.source!r} must be in the range [1, {depth}] for data set {cfg.dataset!r}. Got {k} instead."
        )
    if kind == "kmeans-within" and k < n_target:
        raise GranularityError(
            f"The 'source' parameter {cfg.source!r} needs at least one cluster per target class: K >= {n_target} "
            f"(target level {cfg.target} has {n_target} classes). Got K={k} instead."
        )
    if kind in ("kmeans-within", "kmeans-global", "random") and k > n_train:
        raise GranularityError(
            f"The 'source' parameter {cfg.source!r} asks for more classes than training images ({n_train}, 'train_size'). Got K={k} instead."
        )
    if cfg.transfer.mode == "map":
        level = {"target": cfg.target, "leaf": depth}.get(kind, k) if kind in ("target", "level", "leaf") else None
        if kind in ("kmeans-global", "random") or (level is not None and level < cfg.target):
            what = f"level {level} is coarser than the target level {cfg.target}" if level is not None else "its classes cut across target classes"
            raise GranularityError(
                f"The 'transfer.mode' 'map' needs source labels that nest in the target level, but 'source' {cfg.source!r} "
                f"does not ({what}); use --mode finetune or linear, or a source at level >= {cfg.target}."
            )
    if kind in ("kmeans-within", "kmeans-global") and cfg.embedding == "pca" and _streams(ds.train):
        raise GranularityError(
            f"The 'embedding' 'pca' needs all training pixels in memory, but this data set streams its "
            f"{n_train} training images from disk; use embedding 'cnn' or a .npy file of embeddings for source {cfg.source!r}."
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
    ds = prepare_data(cfg, dataset)
    return {"config": cfg.to_dict(), "device": str(device), **check_plan(cfg, ds, memory_limit=memory_limit, device=device)}


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


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, lambda fh: fh.write(buf.getvalue()))


def run_transfer(
    config: TransferConfig | Mapping[str, Any],
    out: str | Path,
    *,
    dataset: Any | None = None,
    embeddings_cache: dict | None = None,
    progress: bool = False,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Run (or resume, or return the finished) pretrain -> transfer run in folder ``out``.

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
    with _tf32(dctx.device, cfg.tf32), _deterministic(cfg.deterministic):
        return _run_transfer(cfg, Path(out), dctx, dataset, embeddings_cache, progress, stop_after_steps)


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
    rec: dict[str, Any] = {"bf16_autocast": cfg.bf16 and cuda, "tf32": cfg.tf32 and cuda}
    if cfg.deterministic:
        rec["deterministic_algorithms"] = True
    if (cfg.bf16 or cfg.tf32) and not cuda:
        rec["note"] = "bf16/tf32 apply on CUDA only; this run computed in float32 on the CPU"
    return rec


def _run_transfer(cfg: TransferConfig, out: Path, dctx: DistContext, dataset, embeddings_cache, progress,
                  stop_after_steps) -> dict[str, Any]:
    cfg_d = cfg.to_dict()
    device = dctx.device
    ckpt_path = out / "checkpoint.pt"

    def open_folder() -> tuple[str, Any]:
        """Rank 0 only: a finished result, or the checkpoint to resume from (or None)."""
        check_writable(out)
        started = ckpt_path.exists() or (out / "result.json").exists()
        if started and (out / "config.json").exists():  # a folder that failed before training is reused
            old = read_json(out / "config.json")
            if old != cfg_d:
                diff = sorted(k for k in set(old) | set(cfg_d) if old.get(k) != cfg_d.get(k))
                raise GranularityError(
                    f"Run folder {str(out)!r} holds a run with another config (differs in {', '.join(diff)}); "
                    "choose another --out or delete the folder."
                )
            if (out / "result.json").exists():
                return "done", read_json(out / "result.json")
        write_json(out / "config.json", cfg_d)
        write_json(out / "env.json", {**environment(str(device)), "world_size": dctx.world_size})
        if not ckpt_path.exists():
            if (out / "metrics.jsonl").exists():
                (out / "metrics.jsonl").unlink()
            return "run", None
        # the other ranks get rank 0's copy (CPU tensors), so the folder need not be shared
        ckpt = torch.load(ckpt_path, map_location="cpu" if dctx.enabled else device, weights_only=False)
        # metrics.jsonl may hold a line of the epoch that was cut; rewrite it from the checkpoint
        write_bytes_atomic(out / "metrics.jsonl", lambda fh: None)
        for rec in ckpt.get("history", []):
            append_jsonl(out / "metrics.jsonl", rec)
        return "run", ckpt

    kind, resumed = dctx.on_main(open_folder)
    if kind == "done":
        return resumed
    t_start = time.perf_counter()

    # ---- data and labels -----------------------------------------------------------------
    ds = prepare_data(cfg, dataset)
    # refused before decoding images, building labels or a model: contradictory settings, and
    # runs whose tensors would not fit (e.g. per-sample labels on a huge training set)
    check_plan(cfg, ds, device=device)
    hier = ds.hierarchy
    leaf_tr = ds.train.y.cpu().numpy()
    leaf_te = ds.test.y.cpu().numpy()
    lv_tr, lv_te = _level_labels(hier, leaf_tr), _level_labels(hier, leaf_te)
    n_target = int(hier.num_classes(cfg.target))

    def embeddings() -> np.ndarray:
        key = (cfg.dataset, cfg.train_size, cfg.data_seed, str(cfg.rare), cfg.embedding, cfg.target)
        cache = embeddings_cache if embeddings_cache is not None else {}
        if key not in cache:
            # streamed: "cnn" trains and predicts from streamed batches, a .npy needs only the length
            x_emb = _inputs(ds.train, ds, cfg, device) if _streams(ds.train) else ds.train.x
            cache[key] = compute_embeddings(cfg.embedding, x_emb, lv_tr[cfg.target], n_target, cfg.data_seed, device)
        return cache[key]

    src: SourceLabels = build_source_labels(cfg.source, hier, leaf_tr, cfg.target, embeddings, cfg.seed)
    if dctx.enabled:  # k-means of GPU embeddings may differ in the last bit between GPUs: rank 0's labels
        src.labels = dctx.broadcast_object(src.labels)
    if cfg.transfer.mode == "map" and group_map(src.labels, lv_tr[cfg.target], src.num_classes) is None:
        raise GranularityError(
            f"Transfer mode 'map' needs source labels that nest in the target level; {cfg.source!r} does not. Use 'finetune' or 'linear'."
        )
    x_tr, x_te = _inputs(ds.train, ds, cfg, device), _inputs(ds.test, ds, cfg, device)
    if getattr(ds, "input_kind", None) == "tokens":  # token ids: no normalisation (and, being 2-D, no augmentation)
        norm = _identity
    else:
        mean = getattr(ds, "mean", None) if getattr(ds, "is_image", x_tr.ndim == 4) else None
        std = getattr(ds, "std", None) if mean is not None else None
        norm = Normaliser(x_tr, None if mean is None else mean.cpu(), None if std is None else std.cpu())
    y_src = torch.as_tensor(src.labels)
    y_tgt = torch.as_tensor(lv_tr[cfg.target])
    # source class -> class at each level, where the source labels nest in that level
    src_maps = {lv: group_map(src.labels, lv_tr[lv], src.num_classes) for lv in lv_tr}
    tgt_maps = {lv: group_map(lv_tr[cfg.target], lv_tr[lv], n_target) for lv in lv_tr}

    from granularity.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # model init without touching the caller's global RNG
        model = create_model(cfg.model.name, tuple(x_tr.shape[1:]), src.num_classes, **cfg.model.options).to(device)
    model = dctx.convert_batchnorm(model)  # world_size > 1: statistics of the global batch

    # ---- evaluation ------------------------------------------------------------------------
    sizes = {lv: int(hier.num_classes(lv)) for lv in lv_te}

    def evaluate(level_logits: dict[int, torch.Tensor]) -> dict[str, float]:
        return {f"acc_level{lv}": float((z.argmax(1).numpy() == lv_te[lv]).mean()) for lv, z in sorted(level_logits.items())}

    def test_levels(maps: dict[int, np.ndarray | None], fn=None, x=None, normalise=True) -> dict[int, torch.Tensor]:
        model.eval()
        # world_size > 1: each rank predicts its slice of the test set, the rows are gathered
        return dctx.map_rows(lambda xs: predict_levels(fn or model, xs, norm if normalise else None,
                                                       cfg.eval_batch_size, device, maps, sizes, cfg.bf16),
                             x_te if x is None else x)

    # ---- checkpoint / resume ---------------------------------------------------------------
    state: dict[str, Any] = {"stage": "pretrain", "epoch": 0, "history": [], "pretrain_final": {}}
    if resumed is not None:  # read by rank 0 in open_folder (metrics.jsonl already rewritten there)
        if resumed["stage"] == "transfer" and cfg.transfer.mode != "map":  # "map" keeps the source head
            with torch.random.fork_rng(devices=[]):
                model.reset_head(n_target)
        model.load_state_dict(resumed["model"])
        state.update({k: resumed[k] for k in ("stage", "epoch", "history", "pretrain_final") if k in resumed})

    steps = [0]

    def on_step(_: int) -> None:
        steps[0] += 1
        if stop_after_steps is not None and steps[0] >= stop_after_steps:
            raise _Interrupt(f"stopped after {steps[0]} steps (test hook)")

    def checkpoint(opt, sched) -> None:
        # rank 0 only, from the unwrapped model: the same file as a one-process run's
        if cfg.save_checkpoints and dctx.is_main:
            _save_checkpoint(
                ckpt_path,
                {
                    **state,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict() if opt is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    # shuffles and augmentation use per-epoch generators derived from (seed, stage,
                    # epoch), so resuming needs no generator state; the global states are kept
                    # for inspection only
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                    "config": cfg_d,
                },
            )

    def log_epoch(stage: str, epoch: int, train_m: dict, level_logits: dict, seconds: float, n_imgs: int):
        rec = {"stage": stage, "epoch": epoch, **train_m, **evaluate(level_logits), "seconds": seconds,
               "images_per_s": n_imgs / max(seconds, 1e-9)}
        state["history"].append(rec)
        if not dctx.is_main:
            return
        append_jsonl(out / "metrics.jsonl", rec)
        if progress:
            accs = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k.startswith(("acc_", "train_")))
            print(f"[{out.name}] {stage} epoch {epoch}: {accs} ({seconds:.1f}s)", flush=True)

    def load_opt(opt, sched) -> None:
        if resumed is not None and resumed["stage"] == state["stage"] and resumed["optimizer"] is not None:
            opt.load_state_dict(resumed["optimizer"])
            sched.load_state_dict(resumed["scheduler"])

    # ---- stage 1: pretraining on the source labels ----------------------------------------
    p = cfg.pretrain
    steps_per_epoch = -(-len(y_src) // p.batch_size)
    if state["stage"] == "pretrain":
        opt = make_optimizer(model.parameters(), p)
        sched = make_scheduler(opt, p, steps_per_epoch)
        load_opt(opt, sched)
        net = dctx.wrap(model)  # DistributedDataParallel when world_size > 1
        for epoch in range(state["epoch"] + 1, p.epochs + 1):
            t0 = time.perf_counter()
            tm = train_epoch(net, x_tr, y_src, norm, p, opt, sched, epoch_generator(cfg.seed, "pretrain", epoch),
                             device, cfg.bf16, on_step, dist=dctx)
            dt = time.perf_counter() - t0
            log_epoch("pretrain", epoch, tm, test_levels(src_maps), dt, len(y_src))
            state["epoch"] = epoch
            checkpoint(opt, sched)
        # switch to the transfer stage
        last = state["history"][-1] if p.epochs > 0 else {}  # the last pretraining epoch's evaluation
        state["pretrain_final"] = {k: v for k, v in last.items() if k.startswith("acc_level")}
        state["stage"], state["epoch"] = "transfer", 0
        if cfg.transfer.mode != "map":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)  # fresh head, reproducibly
                model.reset_head(n_target)
        resumed = None
        checkpoint(None, None)
    pretrain_final = state["pretrain_final"]

    # ---- stage 2: transfer to the target ---------------------------------------------------
    t = cfg.transfer
    if t.mode == "map":
        final = test_levels({lv: src_maps[lv] for lv in tgt_maps if tgt_maps[lv] is not None})
    elif t.mode == "finetune":
        opt = make_optimizer(model.parameters(), t)
        sched = make_scheduler(opt, t, -(-len(y_tgt) // t.batch_size))
        load_opt(opt, sched)
        net = dctx.wrap(model)  # after reset_head: the new head's parameters
        for epoch in range(state["epoch"] + 1, t.epochs + 1):
            t0 = time.perf_counter()
            tm = train_epoch(net, x_tr, y_tgt, norm, t, opt, sched, epoch_generator(cfg.seed, "transfer", epoch),
                             device, cfg.bf16, on_step, dist=dctx)
            log_epoch("transfer", epoch, tm, test_levels(tgt_maps), time.perf_counter() - t0, len(y_tgt))
            state["epoch"] = epoch
            checkpoint(opt, sched)
        final = test_levels(tgt_maps)
    else:  # linear probe: the backbone is frozen, so its features are computed once
        model.eval()
        feats = lambda xs: predict(model.forward_features, xs, norm, cfg.eval_batch_size, device, cfg.bf16)  # noqa: E731
        f_tr, f_te = dctx.map_rows(feats, x_tr).to(device), dctx.map_rows(feats, x_te).to(device)
        opt = make_optimizer(model.head.parameters(), t)
        sched = make_scheduler(opt, t, -(-len(y_tgt) // t.batch_size))
        load_opt(opt, sched)
        no_aug = t.model_copy(update={"augment": False})
        head = dctx.wrap(model.head)
        for epoch in range(state["epoch"] + 1, t.epochs + 1):
            t0 = time.perf_counter()
            tm = train_epoch(head, f_tr, y_tgt, lambda z: z, no_aug, opt, sched,
                             epoch_generator(cfg.seed, "transfer", epoch), device, False, on_step, dist=dctx)
            log_epoch("transfer", epoch, tm, test_levels(tgt_maps, model.head, f_te, False), time.perf_counter() - t0, len(y_tgt))
            state["epoch"] = epoch
            checkpoint(opt, sched)
        final = test_levels(tgt_maps, model.head, f_te, False)

    # ---- final metrics -----------------------------------------------------------------------
    logits = final[cfg.target]  # (N_test, n_target)
    result = summarise(logits, lv_te[cfg.target], leaf_te, list(ds.leaf_names), rare_leaf_ids(cfg, list(ds.leaf_names)))
    result.update(
        {
            "levels": evaluate(final),
            "pretrain_levels": pretrain_final,
            "source": cfg.source,
            "source_family": src.family,
            "num_source_classes": src.num_classes,
            "label_function_meta": src.meta,
            "target_level": cfg.target,
            "num_target_classes": n_target,
            "transfer_mode": t.mode,
            "hierarchy_hash": getattr(hier, "content_hash", None),
            "dataset": {"name": ds.name, "version": getattr(ds, "version", None), "n_train": len(leaf_tr), "n_test": len(leaf_te)},
            "model": {"name": cfg.model.name, "params": int(sum(p.numel() for p in model.parameters()))},
            "seed": cfg.seed,
            "device": str(device),
            "world_size": dctx.world_size,
            "precision": _precision(cfg, device),
            "seconds": time.perf_counter() - t_start,  # this invocation (a resumed run: the rest only)
            "train_seconds": sum(r["seconds"] for r in state["history"]),
        }
    )
    probs = torch.softmax(logits, 1)
    y = torch.as_tensor(lv_te[cfg.target])
    p_true = probs.gather(1, y[:, None])[:, 0]
    other = probs.clone()
    other[torch.arange(len(y)), y] = -1.0
    margin = (p_true - other.max(1).values).numpy()  # > 0 iff correct
    if dctx.is_main:
        write_npz(out / "predictions.npz", pred=logits.argmax(1).numpy().astype(np.int32), margin=margin.astype(np.float32),
                  y_target=lv_te[cfg.target].astype(np.int32), y_leaf=leaf_te.astype(np.int32))
        write_json(out / "result.json", result)
        if ckpt_path.exists() and not cfg.save_checkpoints:
            ckpt_path.unlink()
    dctx.barrier()  # every rank returns once the run folder is complete
    return result


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
