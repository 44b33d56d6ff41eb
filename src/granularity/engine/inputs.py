"""A run's inputs, prepared in one place: the data set (loaded, subsetted, rare classes, the
validation hold-out), every check that needs only the config and the data (:func:`check_plan`:
target level, source, protocol, memory), then the labels at every level, the source labels
(k-means embeddings computed once per training set), the level maps and the inputs on the
device (:class:`RunData`). The stage loop (:mod:`granularity.engine.stages`) reads only
:class:`RunData`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from granularity.engine.config import TransferConfig
from granularity.engine.distributed import DistContext
from granularity.engine.embeddings import compute_embeddings
from granularity.engine.labels import SourceLabels, build_source_labels, check_source, group_map
from granularity.engine.train import Normaliser, Streamed
from granularity.errors import GranularityError
from granularity.utils.device import available_memory


def prepare_data(cfg: TransferConfig, dataset: Any | None = None) -> Any:
    """The run's data set: loaded (unless given), subsetted, rare classes applied."""
    if dataset is None:
        from granularity.data import load_dataset

        dataset = load_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    dataset.info = {**dataset.info, "loaded": {"train": len(dataset.train), "test": len(dataset.test)}}
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


def data_sizes(ds: Any, n_val: int) -> dict[str, int]:
    """Rows a run uses per split, and how many the data set had (before ``train_size`` /
    ``test_size`` / ``rare``): recorded in result.json's ``dataset`` and printed at the start."""
    loaded = ds.info.get("loaded", {})
    return {"n_train": len(ds.train), "n_test": len(ds.test), "n_val": n_val,
            "n_train_loaded": int(loaded.get("train", len(ds.train) + n_val)), "n_test_loaded": int(loaded.get("test", len(ds.test)))}


def sizes_line(sizes: dict[str, int]) -> str:
    """``data: train 800 of 24541 rows, test 6135 of 6135, validation 0`` (the run's first line)."""
    return (f"data: train {sizes['n_train']} of {sizes['n_train_loaded']} rows, test {sizes['n_test']} of "
            f"{sizes['n_test_loaded']}, validation {sizes['n_val']}")


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


@dataclass
class RunData:
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
    def build(cls, cfg: TransferConfig, dataset: Any, dctx: DistContext, embeddings_cache: dict | None) -> RunData:
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

        src = build_source_labels(cfg.source, hier, leaf_tr, cfg.target, embeddings, cfg.seed, check=False)  # check_plan did
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


