"""The training loop: in-memory tensors, explicit generators, per-step schedules.

No DataLoader: the whole (subset of the) data set sits in memory as tensors (on the device when
it is a GPU), batches are index slices of one permutation drawn from an explicit generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from granularity.engine.augment import random_crop_flip
from granularity.engine.config import StageConfig


class Normaliser:
    """uint8 images -> standardised float; float tables -> standardised float."""

    def __init__(self, x: torch.Tensor, mean=None, std=None) -> None:
        self.image = x.dtype == torch.uint8
        scale = 255.0 if self.image else 1.0
        if mean is None or std is None:
            xs = x[: min(len(x), 10000)].float() / scale
            dims = (0, 2, 3) if xs.ndim == 4 else (0,)
            mean, std = xs.mean(dims), xs.std(dims)
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        std = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1).clamp_min(1e-6)
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
        self.mean, self.std, self.scale = mean.reshape(shape), std.reshape(shape), scale

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        m, s = self.mean.to(xb.device), self.std.to(xb.device)
        return (xb.float() / self.scale - m) / s


def make_optimizer(params, stage: StageConfig) -> torch.optim.Optimizer:
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(
        params, lr=stage.lr, momentum=stage.momentum, nesterov=stage.nesterov and stage.momentum > 0,
        weight_decay=stage.weight_decay,
    )


def make_scheduler(opt: torch.optim.Optimizer, stage: StageConfig, steps_per_epoch: int):
    """Per-step LambdaLR: linear warm-up, then cosine to 0 / x0.1 at 50% and 75% / constant."""
    total = max(1, stage.epochs * steps_per_epoch)
    warm = int(round(stage.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        if stage.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if stage.schedule == "step":
            return 0.01 if t >= 0.75 else 0.1 if t >= 0.5 else 1.0
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, stage: str, epoch: int) -> torch.Generator:
    """A generator for one epoch's shuffle and augmentation, derived from (seed, stage, epoch),
    so a resumed run draws exactly what an uninterrupted one would."""
    salt = {"pretrain": 1, "transfer": 2, "embed": 3}[stage]
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt * 10_007 + int(epoch)) % (2**63))


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    stage: StageConfig,
    opt: torch.optim.Optimizer,
    sched,
    gen: torch.Generator,
    device: torch.device,
    bf16: bool = False,
    on_step: Callable[[int], None] | None = None,
    dist=None,
) -> dict[str, float]:
    """One pass over ``(x, y)`` in shuffled batches; returns mean loss and accuracy.

    ``dist`` (a :class:`granularity.engine.distributed.DistContext` with ``world_size > 1``;
    ``model`` then wrapped in DistributedDataParallel): every rank draws the same permutation and
    augmentation of the global batch and trains on its contiguous chunk of it, with the loss
    scaled so DDP's averaged gradient is the global batch's mean; metrics are summed over ranks.
    """
    model.train()
    n = len(y)
    perm = torch.randperm(n, generator=gen)
    image = x.ndim == 4
    pad = 4 if image and x.shape[-1] >= 32 else 2
    world = dist.world_size if dist is not None and dist.enabled else 1
    tot_loss, tot_correct, seen = 0.0, 0, 0
    for step, start in enumerate(range(0, n, stage.batch_size)):
        idx = perm[start : start + stage.batch_size].to(x.device)
        # a batch of one breaks BatchNorm, and every rank needs an image: drop the ragged tail
        if len(idx) < max(2, world) and seen:
            break
        xb = norm(x[idx].to(device, non_blocking=True))
        yb = y[idx].to(device, non_blocking=True)
        if image and stage.augment:
            xb = random_crop_flip(xb, pad, gen)  # the global batch: same draws as one process
        if world > 1:
            lo, hi = dist.shard_bounds(len(idx))
            xb, yb, n_global = xb[lo:hi], yb[lo:hi], len(idx)
        with autocast(device, bf16):
            logits = model(xb)
            if world > 1:  # sum * world / global batch: DDP's mean over ranks = the global mean
                loss_sum = F.cross_entropy(logits.float(), yb, label_smoothing=stage.label_smoothing, reduction="sum")
                loss = loss_sum * (world / n_global)
            else:
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=stage.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tot_loss += float(loss_sum.detach()) if world > 1 else float(loss.detach()) * len(idx)
        tot_correct += int((logits.argmax(1) == yb).sum())
        seen += len(yb)
        if on_step is not None:
            on_step(step)
    if world > 1:
        tot_loss, tot_correct, seen = dist.all_reduce_sum([tot_loss, tot_correct, seen])
    return {"train_loss": tot_loss / max(seen, 1), "train_acc": tot_correct / max(seen, 1)}


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor] | None,
    batch: int,
    device: torch.device,
    bf16: bool = False,
) -> torch.Tensor:
    """``fn`` applied in batches; returns float32 on the CPU."""
    outs = []
    for start in range(0, len(x), batch):
        xb = x[start : start + batch].to(device)
        if norm is not None:
            xb = norm(xb)
        with autocast(device, bf16):
            outs.append(fn(xb).float().cpu())
    return torch.cat(outs)


def group_logits(logits: torch.Tensor, gmap: np.ndarray, num_groups: int) -> torch.Tensor:
    """Coarse logits from fine logits: ``logsumexp`` over the fine classes of each group, i.e.
    the log of the group's summed softmax probability (up to a shared constant).
    ``gmap[c] = -1`` leaves class ``c`` out; an empty group gets ``-inf``."""
    gm = torch.as_tensor(gmap, dtype=torch.int64)
    keep = gm >= 0
    z = logits[:, keep]  # (N, K')
    m = z.max(dim=1, keepdim=True).values  # (N, 1), for a stable exp
    onehot = F.one_hot(gm[keep], num_groups).to(z.dtype)  # (K', G)
    return torch.log((z - m).exp() @ onehot) + m  # (N, G)


@torch.no_grad()
def predict_levels(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor] | None,
    batch: int,
    device: torch.device,
    maps: dict[int, np.ndarray | None],
    sizes: dict[int, int],
    bf16: bool = False,
) -> dict[int, torch.Tensor]:
    """Logits at every level ``lv`` with a map (``group_logits`` of ``fn``'s logits), batch by
    batch, so a head with many classes (one per sample) never holds ``(N, K)`` logits at once."""
    outs: dict[int, list[torch.Tensor]] = {lv: [] for lv, gm in maps.items() if gm is not None}
    for start in range(0, len(x), batch):
        xb = x[start : start + batch].to(device)
        if norm is not None:
            xb = norm(xb)
        with autocast(device, bf16):
            z = fn(xb).float().cpu()  # (B, K)
        for lv in outs:
            outs[lv].append(group_logits(z, maps[lv], sizes[lv]))  # (B, G_lv)
    return {lv: torch.cat(v) for lv, v in outs.items()}
