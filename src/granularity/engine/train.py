"""The training loop: in-memory tensors or streamed images, explicit generators, per-step schedules.

In memory, the whole (subset of the) data set sits in tensors (on the device when it is a GPU)
and batches are index slices of one permutation drawn from an explicit generator. A data set
too large for memory is wrapped in :class:`Streamed`: a ``DataLoader`` over its lazy Dataset
whose batch sampler yields exactly the same permutation's batches, so both paths train on the
same batches with the same augmentation draws (normalisation and augmentation run per batch on
the device in both).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from granularity.engine.augment import random_crop_flip
from granularity.engine.config import StageConfig
from granularity.utils.device import bf16_fast


class _Batches(Sampler):
    """A batch sampler that yields given lists of indices in the given order."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Streamed:
    """Images streamed from a lazy ``Dataset`` of ``(uint8 (C, S, S), label)`` items.

    Stands in for the in-memory ``uint8 (N, C, S, S)`` tensor in :func:`train_epoch`,
    :func:`predict` and :func:`predict_levels`: it has ``len``, ``shape``, ``ndim``, ``dtype``
    and row slices (``x[a:b]``, for the per-rank slices under DDP). Pixels are decoded by
    ``workers`` DataLoader processes (0: in this process); ``pin_memory`` for CUDA copies.
    """

    ndim = 4
    dtype = torch.uint8

    def __init__(self, dataset: Dataset, shape: tuple[int, ...], workers: int = 0, pin_memory: bool = False) -> None:
        self.data = dataset
        self.shape = (len(dataset), *(int(s) for s in shape))
        self.workers = int(workers)
        self.pin_memory = bool(pin_memory)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> Streamed:
        if not isinstance(rows, slice):
            raise TypeError("Streamed supports row slices only")
        idx = list(range(len(self)))[rows]
        return Streamed(Subset(self.data, idx), self.shape[1:], self.workers, self.pin_memory)

    def to(self, device=None) -> Streamed:  # batches are moved by the training loop
        return self

    def load(self, batches: list[list[int]]):
        """An iterator over the uint8 image batches ``batches`` (lists of row indices), in order."""
        loader = DataLoader(self.data, batch_sampler=_Batches(batches), num_workers=self.workers,
                            pin_memory=self.pin_memory, persistent_workers=False)
        return (xb for xb, _ in loader)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images decoded into memory."""
        n = min(n, len(self))
        return torch.cat(list(self.load([list(range(s, min(s + 256, n))) for s in range(0, n, 256)])))


def _row_batches(x, batch: int):
    """``x`` in consecutive row batches (index slices, or a streamed pass)."""
    if isinstance(x, Streamed):
        return x.load([list(range(s, min(s + batch, len(x)))) for s in range(0, len(x), batch)])
    return (x[s : s + batch] for s in range(0, len(x), batch))


class Normaliser:
    """uint8 images -> standardised float; float tables -> standardised float.

    ``mean``/``std``: the training split's statistics (``RealDataset.normalisation_stats``);
    without them they are computed here over every row of ``x`` by the same
    :func:`~granularity.data.base.channel_stats` (one streamed pass for :class:`Streamed`)."""

    def __init__(self, x: torch.Tensor, mean=None, std=None) -> None:
        self.image = x.dtype == torch.uint8
        scale = 255.0 if self.image else 1.0
        if mean is None or std is None:
            from granularity.data.base import channel_stats

            mean, std = channel_stats(_row_batches(x, 4096) if isinstance(x, Streamed) else x)
        mean = torch.as_tensor(np.asarray(torch.as_tensor(mean).cpu(), dtype=np.float32)).reshape(-1)
        std = torch.as_tensor(np.asarray(torch.as_tensor(std).cpu(), dtype=np.float32)).reshape(-1).clamp_min(1e-6)
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


def bf16_active(device: torch.device, bf16: bool | str) -> bool:
    """bf16 autocast runs where asked for (``True`` or ``"auto"``) and the hardware has a fast
    bf16 path (a CUDA card with bf16, or a CPU with AVX512-BF16/AMX); elsewhere float32."""
    if bf16 not in (True, False, "auto"):
        raise ValueError(f"bf16 must be True, False or 'auto'. Got {bf16!r} instead.")
    return bf16 is not False and bf16_fast(device)


def channels_last_active(device: torch.device, bf16: bool | str) -> bool:
    """Whether the engine trains and evaluates a channels-last (NHWC) model: on the CPU in every
    precision, where oneDNN's convolutions are fastest in that layout (float32 too), and on CUDA
    under bf16 autocast; float32 on CUDA keeps PyTorch's default layout. Models without 4-D
    weights are unchanged by it. The layout changes only the order of the convolutions' sums."""
    return device.type == "cpu" or bf16_active(device, bf16)


def engine_layout(model: nn.Module, device: torch.device, bf16: bool | str) -> nn.Module:
    """``model`` in the memory layout the engine trains and evaluates it in
    (:func:`channels_last_active`)."""
    return model.to(memory_format=torch.channels_last) if channels_last_active(device, bf16) else model


def autocast(device: torch.device, bf16: bool | str):
    if bf16_active(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, stage: str, epoch: int) -> torch.Generator:
    """A generator for one epoch's shuffle and augmentation, derived from (seed, stage, epoch),
    so a resumed run draws exactly what an uninterrupted one would."""
    salt = {"pretrain": 1, "transfer": 2, "embed": 3}[stage]
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt * 10_007 + int(epoch)) % (2**63))


@functools.cache
def _deterministic_types() -> frozenset[type]:
    """torch.nn modules whose forward draws no random numbers (exact types: a subclass may
    override ``forward``)."""
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
    from torch.nn.parallel import DistributedDataParallel

    return frozenset({
        nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, NonDynamicallyQuantizableLinear, nn.Bilinear,
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
        nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softmax, nn.LogSoftmax, nn.Identity,
        nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d, nn.Flatten, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Embedding,
        nn.EmbeddingBag, DistributedDataParallel,
    })


def draws_random(model: nn.Module) -> bool:
    """Whether a training forward pass of ``model`` may draw from torch's global RNG. False only
    when every submodule is known not to: a deterministic torch.nn type (exact type), dropout
    or attention with p = 0, or a class of ours that declares ``forward_draws_random = False``
    in its own body (its forward code draws nothing; its submodules are checked here). Any
    other module counts as random, so :func:`step_rng` seeds it."""
    known = _deterministic_types()
    for m in model.modules():
        kind = type(m)
        if kind in known or kind.__dict__.get("forward_draws_random") is False:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and kind.__module__ == "torch.nn.modules.dropout" and m.p == 0:
            continue
        if kind is nn.MultiheadAttention and m.dropout == 0:
            continue
        return True
    return False


@contextmanager
def step_rng(epoch_gen: torch.Generator, step: int, rank: int, device: torch.device, needed: bool = True):
    """torch's global RNG (what dropout and other in-model draws use) seeded from (the epoch
    generator's seed, step, rank) for one forward pass, and restored afterwards: a step's
    draws depend on nothing that ran before it, so a fresh process and a resumed run draw the
    same, and the caller's global RNG is left as it was. ``needed=False`` (a model that draws
    nothing, :func:`draws_random`): nothing to seed, and the per-step fork is skipped."""
    if not needed:
        yield
        return
    seed = (epoch_gen.initial_seed() * 1_000_033 + int(step) * 101 + int(rank) + 1) % (2**63)
    on_cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if on_cuda else []):
        torch.default_generator.manual_seed(seed)
        if on_cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _epoch_batches(n: int, batch_size: int, gen: torch.Generator, dist, world: int):
    """One epoch's global batches (index tensors of one permutation drawn from ``gen``) and
    this rank's ``(lo, hi)`` rows of each. A batch of one breaks BatchNorm, and every rank
    needs an image: the ragged tail is dropped then (never the first batch)."""
    perm = torch.randperm(n, generator=gen)
    batches = [perm[s : s + batch_size] for s in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(2, world):
        batches.pop()
    return batches, [dist.shard_bounds(len(b)) if world > 1 else (0, len(b)) for b in batches]


def _loss(logits: torch.Tensor, yb: torch.Tensor, smoothing: float, world: int, n_global: int):
    """The loss to backpropagate and this rank's summed loss (a float). With ``world > 1``:
    sum * world / global batch, so DDP's mean over ranks is the global batch's mean."""
    if world > 1:
        loss_sum = F.cross_entropy(logits.float(), yb, label_smoothing=smoothing, reduction="sum")
        return loss_sum * (world / n_global), float(loss_sum.detach())
    loss = F.cross_entropy(logits.float(), yb, label_smoothing=smoothing)
    return loss, float(loss.detach()) * n_global


def _fetch(x, y, idx: torch.Tensor, lo: int, hi: int, x_iter, norm, device: torch.device):
    """One training batch on ``device``, normalised: the global batch's rows ``idx`` of ``x``,
    or, streamed (``x_iter`` given), this rank's rows ``lo:hi`` of it, decoded next by ``x_iter``."""
    if x_iter is not None:
        return norm(next(x_iter).to(device, non_blocking=True)), y[idx[lo:hi]].to(device, non_blocking=True)
    idx = idx.to(x.device)
    return norm(x[idx].to(device, non_blocking=True)), y[idx].to(device, non_blocking=True)


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
    bf16: bool | str = False,
    on_step: Callable[[dict], None] | None = None,
    dist=None,
    label: str = "training",
    start: dict | None = None,
) -> dict[str, float]:
    """One pass over ``(x, y)`` in shuffled batches; returns mean loss and accuracy.

    ``dist`` (a :class:`granularity.engine.distributed.DistContext` with ``world_size > 1``;
    ``model`` then wrapped in DistributedDataParallel): every rank draws the same permutation and
    augmentation of the global batch and trains on its contiguous chunk of it, with the loss
    scaled so DDP's averaged gradient is the global batch's mean; metrics are summed over ranks.

    ``on_step`` is called after every step with ``{"step": steps done, "n_steps", "images": rows
    seen by this rank, "totals": the running sums, "gen": the epoch generator}``; ``start`` (a
    mid-epoch checkpoint's ``{"step", "totals", "gen_state"}``) continues the epoch after that
    step: the permutation is drawn again, then the generator is set to its state after the step,
    so the rest of the epoch draws what an uninterrupted one would.

    A non-finite loss raises ``FloatingPointError`` naming ``label`` (e.g. "pretrain epoch 2"):
    at once in one process; under DDP the count of such steps is summed with the metrics at the
    end of the epoch, so every rank raises at the same point (none waits in a collective).
    """
    model.train()
    image = x.ndim == 4
    pad = 4 if image and x.shape[-1] >= 32 else 2
    world = dist.world_size if dist is not None and dist.enabled else 1
    batches, bounds = _epoch_batches(len(y), stage.batch_size, gen, dist, world)
    first = 0
    tot_loss, tot_correct, seen, bad = 0.0, 0, 0, 0
    if start is not None:  # resume after step start["step"] of this epoch
        first = int(start["step"])
        tot_loss, tot_correct, seen, bad = start["totals"]
        gen.set_state(start["gen_state"])
    streamed = isinstance(x, Streamed)
    seeded = draws_random(model)  # False: the forward draws nothing, no per-step RNG fork
    if streamed:  # decode only this rank's rows of each global batch, in the same order
        x_iter = x.load([b[lo:hi].tolist() for b, (lo, hi) in list(zip(batches, bounds))[first:]])
    for step, (idx, (lo, hi)) in enumerate(zip(batches, bounds)):
        if step < first:
            continue
        xb, yb = _fetch(x, y, idx, lo, hi, x_iter if streamed else None, norm, device)
        if image and stage.augment:
            # draws for the global batch (same as one process); applied to this rank's rows
            xb = random_crop_flip(xb, pad, gen, rows=(lo, hi, len(idx)) if streamed else None)
        n_global = len(idx)
        if world > 1 and not streamed:
            xb, yb = xb[lo:hi], yb[lo:hi]
        with autocast(device, bf16), step_rng(gen, step, dist.rank if world > 1 else 0, device, seeded):
            logits = model(xb)
            loss, step_loss = _loss(logits, yb, stage.label_smoothing, world, n_global)
        if not math.isfinite(step_loss):
            bad += 1
            if world == 1:
                raise FloatingPointError(f"non-finite training loss ({step_loss}) at step {step + 1} of {label}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tot_loss += step_loss
        tot_correct += int((logits.argmax(1) == yb).sum())
        seen += len(yb)
        if on_step is not None:
            on_step({"step": step + 1, "n_steps": len(batches), "images": seen,
                     "totals": [tot_loss, tot_correct, seen, bad], "gen": gen})
    if world > 1:
        tot_loss, tot_correct, seen, bad = dist.all_reduce_sum([tot_loss, tot_correct, seen, bad])
        if bad > 0:
            raise FloatingPointError(f"non-finite training loss in {int(bad)} step(s) of {label} (summed over ranks)")
    return {"train_loss": tot_loss / max(seen, 1), "train_acc": tot_correct / max(seen, 1)}


# On the CPU an evaluation batch is fed to the model in chunks of this many rows: activations of
# a chunk stay in cache (2-4x fewer CPU-seconds per image than 1000-image batches for the default
# CNN); in eval mode a row's output does not depend on the other rows, so chunking changes at
# most the float rounding (a kernel may block another row count differently), never run to run.
CPU_EVAL_CHUNK = 128


def _forward(fn: Callable[[torch.Tensor], torch.Tensor], xb: torch.Tensor, norm, device: torch.device,
             bf16: bool | str) -> torch.Tensor:
    """``fn(norm(xb))`` in float32 on the CPU, in cache-sized chunks when ``device`` is the CPU."""
    xb = xb.to(device)
    step = CPU_EVAL_CHUNK if device.type == "cpu" else len(xb)
    outs = []
    with autocast(device, bf16):
        for s in range(0, len(xb), max(step, 1)):
            xc = xb[s : s + step]
            outs.append(fn(norm(xc) if norm is not None else xc).float().cpu())
    return outs[0] if len(outs) == 1 else torch.cat(outs)


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor] | None,
    batch: int,
    device: torch.device,
    bf16: bool | str = False,
) -> torch.Tensor:
    """``fn`` applied in batches; returns float32 on the CPU."""
    return torch.cat([_forward(fn, xb, norm, device, bf16) for xb in _row_batches(x, batch)])


def group_logits(logits: torch.Tensor, gmap: np.ndarray, num_groups: int, exp_shift=None) -> torch.Tensor:
    """Coarse logits from fine logits: ``logsumexp`` over the fine classes of each group, i.e.
    the log of the group's summed softmax probability (up to a shared constant).
    ``gmap[c] = -1`` leaves class ``c`` out; an empty group gets ``-inf``. ``exp_shift``: the
    pair ``(exp(logits - m), m)`` with ``m`` the row max over all classes, computed once and
    shared by several maps (one exp per logit instead of one per map); used when ``gmap``
    keeps every class."""
    gm = torch.as_tensor(gmap, dtype=torch.int64)
    keep = gm >= 0
    onehot = F.one_hot(gm[keep], num_groups).to(logits.dtype)  # (K', G)
    if exp_shift is not None and bool(keep.all()):
        e, m = exp_shift
    else:
        z = logits[:, keep]  # (N, K')
        m = z.max(dim=1, keepdim=True).values  # (N, 1), for a stable exp
        e = (z - m).exp()
    return torch.log(e @ onehot) + m  # (N, G)


@torch.no_grad()
def predict_levels(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor] | None,
    batch: int,
    device: torch.device,
    maps: dict[int, np.ndarray | None],
    sizes: dict[int, int],
    bf16: bool | str = False,
) -> dict[int, torch.Tensor]:
    """Logits at every level ``lv`` with a map (``group_logits`` of ``fn``'s logits), batch by
    batch, so a head with many classes (one per sample) never holds ``(N, K)`` logits at once."""
    outs: dict[int, list[torch.Tensor]] = {lv: [] for lv, gm in maps.items() if gm is not None}
    for xb in _row_batches(x, batch):
        z = _forward(fn, xb, norm, device, bf16)  # (B, K)
        m = z.max(dim=1, keepdim=True).values
        shared = ((z - m).exp(), m)  # one exp for every level whose map keeps all classes
        for lv in outs:
            outs[lv].append(group_logits(z, maps[lv], sizes[lv], shared))  # (B, G_lv)
    return {lv: torch.cat(v) for lv, v in outs.items()}


class EpochProgress:
    """Steps/s, images/s and ETA inside one epoch, for people (results are in the files): a
    tqdm bar on a terminal, else one line every ``every_s`` seconds on stderr. ``world``
    processes each see a slice of every batch, so images count ``world`` times this rank's."""

    def __init__(self, label: str, n_steps: int, first_step: int = 0, first_images: int = 0, every_s: float = 30.0,
                 world: int = 1, stream=None) -> None:
        import sys
        import time

        self.label, self.n_steps, self.first, self.every_s, self.world = label, n_steps, first_step, every_s, world
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.images0 = first_images  # images of this epoch seen before this invocation (a resumed epoch)
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=n_steps, initial=first_step, desc=label, unit="step", file=self.stream,
                            leave=False, dynamic_ncols=True)

    def rates(self, step: int, images: int, now: float) -> tuple[float, float, float]:
        """``(steps/s, images/s, seconds left)`` over this invocation's steps of the epoch."""
        dt = max(now - self.t0, 1e-9)
        done = step - self.first
        sps = done / dt
        ips = (images - self.images0) * self.world / dt
        return sps, ips, (self.n_steps - step) / sps if sps > 0 else float("inf")

    def update(self, pos: dict) -> None:
        import time

        now = time.perf_counter()
        self.n_steps = pos["n_steps"]  # the loop's count (a ragged last batch of one may be dropped)
        sps, ips, eta = self.rates(pos["step"], pos["images"], now)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{ips:.0f} img/s", refresh=False)
            if pos["step"] >= self.n_steps:
                self.bar.close()
            return
        if now - self.last >= self.every_s and pos["step"] < self.n_steps:
            self.last = now
            print(f"{self.label}: step {pos['step']}/{self.n_steps}, {sps:.2f} steps/s, {ips:.0f} images/s, "
                  f"ETA {eta:.0f}s", file=self.stream, flush=True)
