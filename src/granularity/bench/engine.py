"""Figure 4: the real-data engine's training throughput on Fashion-MNIST with the default CNN,
against the model's bare forward + backward + step loop on tensors already in memory (same
batch size, model, optimiser), and peak RSS of a default run in a fresh process."""

from __future__ import annotations

import copy
import shutil
import tempfile
from typing import Any

import torch
from torch.nn import functional as F

from granularity.bench.common import Ceilings, interleaved, median, peak_rss, spread


def _data(n: int, device: torch.device):
    from granularity.data import load_dataset

    ds = load_dataset("fashion-mnist")
    return ds.train.x[:n].to(device), ds.train.y[:n].to(device)


def bench_engine(device: torch.device, tiny: bool = False, images: int | None = None, repeats: int = 9,
                 ceilings: Ceilings | None = None) -> dict[str, Any]:
    """Like for like: the engine without augmentation (the bare loop has none) in float32 against
    the bare loop in float32, and (where the hardware has bf16) the engine with ``bf16=True``
    (autocast) against the bare loop under the same autocast; every model in the layout the
    engine picks for the device (:func:`~granularity.engine.train.channels_last_active`:
    channels-last on the CPU in both precisions). The engine with its default augmentation is
    timed too, for reference (more work than the bare loop), and so is the float32 bare loop in
    PyTorch's default layout (``bare_nchw``), for the layout's own speed-up."""
    from granularity.engine.config import TransferConfig
    from granularity.engine.train import (Normaliser, autocast, bf16_active, channels_last_active, engine_layout,
                                          make_optimizer, make_scheduler, train_epoch)
    from granularity.models import create_model

    n = images or (512 if tiny else 2560)
    repeats = 1 if tiny else repeats
    x, y = _data(n, device)
    cfg = TransferConfig()
    stage = cfg.pretrain  # the default pretraining stage: SGD + Nesterov momentum, cosine, augmentation
    B = stage.batch_size
    norm = Normaliser(x)
    torch.manual_seed(0)
    base = create_model(cfg.model.name, tuple(x.shape[1:]), 10, **cfg.model.options).to(device)
    bf16 = bf16_active(device, True)
    names = ("engine", "engine_no_aug", "bare", "bare_nchw") + (
        ("engine_bf16", "engine_bf16_no_aug", "bare_bf16") if bf16 else ())
    # every side in the layout engine.run picks for its precision; bare_nchw in PyTorch's default one
    models = {k: copy.deepcopy(base) if k == "bare_nchw" else engine_layout(copy.deepcopy(base), device, "bf16" in k)
              for k in names}
    opts = {k: make_optimizer(m.parameters(), stage) for k, m in models.items()}
    steps = -(-n // B)
    scheds = {k: make_scheduler(o, stage.model_copy(update={"epochs": 10**6}), steps) for k, o in opts.items()}
    no_aug = stage.model_copy(update={"augment": False})
    # the bare loop: batches already normalised, shuffled and on the device
    xf = norm(x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(device)
    batches = [(xf[perm[i : i + B]], y[perm[i : i + B]]) for i in range(0, n, B)]
    gen = torch.Generator().manual_seed(1)

    def engine_side(key: str, st, low: bool):
        def run():
            train_epoch(models[key], x, y, norm, st, opts[key], scheds[key], gen, device, bf16=low)
        return run

    def bare_loop(key: str, low: bool):
        def run():
            m, opt = models[key], opts[key]
            m.train()
            for xb, yb in batches:
                with autocast(device, low):
                    loss = F.cross_entropy(m(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    fns = {"engine": engine_side("engine", stage, False), "engine_no_aug": engine_side("engine_no_aug", no_aug, False),
           "bare": bare_loop("bare", False), "bare_nchw": bare_loop("bare_nchw", False)}
    if bf16:
        fns.update(engine_bf16=engine_side("engine_bf16", stage, True),
                   engine_bf16_no_aug=engine_side("engine_bf16_no_aug", no_aug, True), bare_bf16=bare_loop("bare_bf16", True))
    t = interleaved(fns, repeats, device, ceilings=ceilings)
    out = _ratios(t, n, {"model": cfg.model.name, "batch_size": B, "images": n, "optimizer": stage.optimizer,
                         "channels_last": {"float32": channels_last_active(device, False),
                                           "bfloat16": channels_last_active(device, True)}})
    args = {"device": str(device), "tiny": tiny}
    out["run_rss"] = peak_rss("engine_run", args)
    if not tiny:
        out["idle_rss"] = peak_rss("idle", {})  # the interpreter with torch imported, for reference
    # like for like (the same work, layout and precision): the engine without augmentation
    value = min(out["ratio_no_augment"], out.get("ratio_bf16_no_augment", out["ratio_no_augment"]))
    out.update({"target": 1.0, "value": value, "met": bool(value >= 1.0)})
    return out


def _ratios(t: dict[str, list[float]], n: int, head: dict[str, Any]) -> dict[str, Any]:
    """Images/s of each side (medians of the interleaved samples ``t``) and the engine/bare ratios."""
    ips = {k: n / median(v) for k, v in t.items()}
    out: dict[str, Any] = {
        **head, "images_per_s": ips, "samples": t, "spread": {k: spread(v) for k, v in t.items()},
        "ratio": ips["engine"] / ips["bare"], "ratio_no_augment": ips["engine_no_aug"] / ips["bare"],
        "ratio_no_augment_rounds": _round_ratios(t, "engine_no_aug", "bare"),
    }
    if "bare_nchw" in ips:
        out["layout_speedup"] = ips["bare"] / ips["bare_nchw"]
    if "bare_bf16" in ips:
        out["ratio_bf16"] = ips["engine_bf16"] / ips["bare_bf16"]
        out["ratio_bf16_no_augment"] = ips["engine_bf16_no_aug"] / ips["bare_bf16"]
        out["ratio_bf16_no_augment_rounds"] = _round_ratios(t, "engine_bf16_no_aug", "bare_bf16")
        out["bf16_speedup"] = ips["engine_bf16"] / ips["engine"]
    return out


def _round_ratios(t: dict[str, list[float]], engine: str, bare: str) -> dict[str, float]:
    """The engine/bare speed ratio of each interleaved round (the two ran back to back), and
    their median, min and max: how far the like-for-like ratio moves from round to round."""
    r = [b / e for e, b in zip(t[engine], t[bare])]
    return {"median": median(r), "min": float(min(r)), "max": float(max(r)), "n": len(r)}


def engine_run(device: str, tiny: bool) -> dict[str, Any]:
    """A default ``run_transfer`` (10,000 training images, default CNN), reduced to one epoch of
    pretraining and one of transfer: peak memory does not depend on the number of epochs. Run by
    the peak-RSS subprocess. (There is no study entry point yet; a study runs these in turn.)"""
    import time

    from granularity.engine.run import run_transfer

    over: dict[str, Any] = {"device": device, "pretrain": {"epochs": 1}, "transfer": {"epochs": 1}}
    if tiny:
        over.update({"train_size": 256, "test_size": 256, "save_checkpoints": False})
    tmp = tempfile.mkdtemp(prefix="granularity-bench-")
    try:
        t0 = time.perf_counter()
        res = run_transfer(over, tmp)
        return {"config": over, "seconds": time.perf_counter() - t0,
                "target_acc": res.get("target_acc"), "n_train": res.get("dataset", {}).get("n_train")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
