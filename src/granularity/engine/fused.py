"""K independent runs trained as one fused model (:mod:`granularity.models.fused`).

:func:`train_epoch_fused` is :func:`~granularity.engine.train.train_epoch` for K runs at once:
each run draws its own permutation, augmentation and dropout from its own generators (the very
draws it makes alone), normalises with its own statistics, and has its own optimiser and
scheduler (its own learning rate and schedule position). The loss backpropagated is the sum of
the K per-run mean losses, so each run's gradient is the gradient of its own loss; SGD, momentum,
weight decay and AdamW are per run. A run alone and the same run fused with others therefore
compute the same numbers up to float rounding (grouped convolutions and batched matmuls sum in
another order); ``tests/engine/test_fused.py`` holds the tolerances.

A run whose loss is not finite stops its group before that step's backward pass: the group's
BatchNorm statistics are put back as they were before the step and :class:`MembersDiverged`
carries, for every other run, the ``start`` that continues the epoch at that step, so the
survivors (fused again without the diverged runs) go on exactly as if it had never been there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from granularity.engine.augment import random_crop_flip
from granularity.engine.config import StageConfig
from granularity.engine.train import CPU_EVAL_CHUNK, _epoch_batches, autocast, draws_random
from granularity.models.fused import FusedModel


@dataclass
class Member:
    """One run of a fused group: its training inputs and labels (in memory; same length and
    batch size in every run of the group) and its normaliser."""

    x: torch.Tensor
    y: torch.Tensor
    norm: Callable[[torch.Tensor], torch.Tensor]


class MembersDiverged(FloatingPointError):
    """Runs ``failed`` (indices into the group) had a non-finite loss at step ``step`` (0-based)
    of the epoch; ``starts[k]`` continues the epoch there for every other run k."""

    def __init__(self, failed: list[int], step: int, losses: list[float], starts: dict[int, dict], label: str):
        self.failed, self.step, self.starts, self.losses = failed, step, starts, losses
        what = ", ".join(f"run {k}: {losses[k]}" for k in failed)
        super().__init__(f"non-finite training loss ({what}) at step {step + 1} of {label}")


def step_generators(gens: Sequence[torch.Generator], step: int, device: torch.device | None = None) -> list[torch.Generator]:
    """Per-run generators on ``device`` for the in-model draws (dropout) of one step: each
    seeded as :func:`~granularity.engine.train.step_rng` seeds torch's generator for that run
    alone (rank 0), so on the CPU a fused run draws its solo masks (CUDA's dropout kernel draws
    differently from ``bernoulli_``: the same distribution, other masks)."""
    dev = device if device is not None else torch.device("cpu")
    return [torch.Generator(device=dev).manual_seed((g.initial_seed() * 1_000_033 + int(step) * 101 + 1) % (2**63))
            for g in gens]


def fused_losses(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Per-run mean cross-entropy ``(K,)`` of logits ``(K, B, n_max)`` (``-inf`` padding) and labels
    ``(K, B)``; ``valid`` ``(K, n_max)`` marks each run's classes (label smoothing spreads over
    those only, as cross-entropy does over a solo head)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, y[..., None])[..., 0]  # (K, B)
    if smoothing > 0:
        n = valid.sum(1, keepdim=True).to(logp.dtype)  # (K, 1)
        smooth = -logp.masked_fill(~valid[:, None, :], 0.0).sum(-1) / n  # (K, B)
        nll = (1 - smoothing) * nll + smoothing * smooth
    return nll.mean(1)


def _bn_state(model: FusedModel) -> list[tuple[torch.Tensor, ...]]:
    return [(bn.mean.clone(), bn.var.clone(), bn.count.clone()) for bn in model._bns.values()]


def _load_bn_state(model: FusedModel, state) -> None:
    for bn, (m, v, c) in zip(model._bns.values(), state):
        bn.mean.copy_(m), bn.var.copy_(v), bn.count.copy_(c)


def _check_group(model: FusedModel, members: Sequence[Member], stage: StageConfig, opts, scheds, gens) -> None:
    if not (model.k == len(members) == len(opts) == len(scheds) == len(gens)):
        raise ValueError(f"a fused group of {model.k} runs got {len(members)} members, {len(opts)} optimisers, "
                         f"{len(scheds)} schedulers and {len(gens)} generators")
    if len({len(m.y) for m in members}) != 1 or len({tuple(m.x.shape[1:]) for m in members}) != 1:
        raise ValueError("every run of a fused group needs the same number and shape of training inputs")


def _batch(members: Sequence[Member], batches, step: int, stage: StageConfig, gens, device, pad: int, image: bool):
    """Run k's batch ``step``, normalised and augmented with its own generator: ``(K, B, ...)``
    inputs and ``(K, B)`` labels."""
    xs, ys = [], []
    for k, mem in enumerate(members):
        idx = batches[k][step].to(mem.x.device)
        xb = mem.norm(mem.x[idx].to(device, non_blocking=True))
        if image and stage.augment:
            xb = random_crop_flip(xb, pad, gens[k])
        xs.append(xb)
        ys.append(mem.y[idx].to(device, non_blocking=True))
    return torch.stack(xs), torch.stack(ys)


def train_epoch_fused(model: FusedModel, members: Sequence[Member], stage: StageConfig, opts, scheds,
                      gens: Sequence[torch.Generator], device: torch.device, bf16: bool | str = False,
                      on_step: Callable[[dict], None] | None = None, label: str = "training",
                      starts: Sequence[dict] | None = None) -> list[dict[str, float]]:
    """One epoch of every run of ``model`` (see the module docstring); run k's metrics at ``[k]``.

    ``opts``/``scheds``: each run's optimiser and scheduler over its solo model's parameters
    (``model.members[k]``); ``gens``: each run's epoch generator. ``on_step`` gets
    ``{"step", "n_steps", "images", "totals": [run k's running sums], "gens"}`` after every step;
    ``starts`` (every run's mid-epoch ``{"step", "totals", "gen_state"}``, as for
    :func:`~granularity.engine.train.train_epoch`) continues the epoch after that step.
    Raises :class:`MembersDiverged` when a run's loss is not finite.
    """
    _check_group(model, members, stage, opts, scheds, gens)
    model.train()
    image = members[0].x.ndim == 4
    pad = 4 if image and members[0].x.shape[-1] >= 32 else 2
    plan = [_epoch_batches(len(m.y), stage.batch_size, g, None, 1)[0] for m, g in zip(members, gens)]
    n_steps = len(plan[0])
    totals = [[0.0, 0, 0, 0] for _ in members]
    first = 0
    if starts is not None:
        first = int(starts[0]["step"])
        if any(int(s["step"]) != first for s in starts):
            raise ValueError("every run of a fused group must resume at the same step")
        totals = [list(s["totals"]) for s in starts]
        for g, s in zip(gens, starts):
            g.set_state(s["gen_state"])
    seeded = any(draws_random(m) for m in model.members)
    for step in range(first, n_steps):
        gen_before = [g.get_state() for g in gens]
        xb, yb = _batch(members, plan, step, stage, gens, device, pad, image)
        bn_before = _bn_state(model)
        with autocast(device, bf16):
            logits = model(xb, step_generators(gens, step, xb.device) if seeded else None)
            losses = fused_losses(logits, yb, model.valid, stage.label_smoothing)
        vals = losses.detach().tolist()
        bad = [k for k, v in enumerate(vals) if not math.isfinite(v)]
        if bad:
            _load_bn_state(model, bn_before)
            keep = {k: {"step": step, "totals": list(totals[k]), "gen_state": gen_before[k]}
                    for k in range(model.k) if k not in bad}
            raise MembersDiverged(bad, step, vals, keep, label)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # each run's gradient is that of its own mean loss
        for opt, sched in zip(opts, scheds):
            opt.step()
            sched.step()
        correct = (logits.argmax(-1) == yb).sum(1).tolist()
        for k, tot in enumerate(totals):
            n = yb.shape[1]
            tot[0] += vals[k] * n
            tot[1] += int(correct[k])
            tot[2] += n
        if on_step is not None:
            on_step({"step": step + 1, "n_steps": n_steps, "images": totals[0][2], "totals": [list(t) for t in totals],
                     "gens": gens})
    return [{"train_loss": t[0] / max(t[2], 1), "train_acc": t[1] / max(t[2], 1)} for t in totals]


@torch.no_grad()
def predict_fused(fn: Callable[[torch.Tensor], torch.Tensor], xs: Sequence[Any], norms: Sequence[Callable | None],
                  device: torch.device, bf16: bool | str = False, widths: Sequence[int] | None = None,
                  chunk: int | None = None, reduce: Callable[[int, torch.Tensor], Any] | None = None) -> list[Any]:
    """``fn`` (a fused model in eval mode, or its ``forward_features``) over each run's inputs
    ``xs[k]`` normalised by ``norms[k]``, in chunks of ``chunk`` rows per run (by default on the
    CPU ``2 * CPU_EVAL_CHUNK / K`` rows, at least 8, so that a fused chunk of about 256 rows stays
    in cache as a solo chunk does; 1024 on a GPU); returns run k's
    float32 CPU outputs ``(len(xs[k]), widths[k])`` (all columns when ``widths`` is None). Runs
    with fewer rows are padded with their first rows (eval mode: rows do not interact).
    ``reduce(k, chunk_outputs)``: applied to each chunk of run k as it comes (a tensor or a
    dict of tensors, concatenated over the chunks), so wide outputs are never held whole."""
    chunk = chunk or (max(8, 2 * CPU_EVAL_CHUNK // len(xs)) if device.type == "cpu" else 1024)
    n_max = max(len(x) for x in xs)
    outs: list[list[torch.Tensor]] = [[] for _ in xs]
    with autocast(device, bf16):
        for s in range(0, n_max, chunk):
            parts, rows = [], []
            for x, norm in zip(xs, norms):
                xc = x[s : s + chunk].to(device)
                rows.append(len(xc))
                want = min(chunk, n_max - s)
                if len(xc) < want:  # a run with fewer rows: pad with a repeated row (its outputs are dropped)
                    src = xc if len(xc) else x[:1].to(device)
                    xc = torch.cat([xc, src[:1].expand(want - len(xc), *src.shape[1:])])
                parts.append(norm(xc) if norm is not None else xc)
            z = fn(torch.stack(parts)).float()  # (K, chunk, width)
            for k, r in enumerate(rows):
                if r:
                    zk = z[k, :r, : widths[k] if widths is not None else z.shape[-1]].cpu()
                    outs[k].append(zk if reduce is None else reduce(k, zk))
    return [_concat(o) for o in outs]


def _concat(parts: list[Any]) -> Any:
    if not parts:
        return torch.empty(0)
    if isinstance(parts[0], dict):
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return torch.cat(parts)


def train_runs(models: Sequence[torch.nn.Module], members: Sequence[Member], stage: StageConfig | Sequence[StageConfig],
               seeds: Sequence[int], what: str, device: torch.device, bf16: bool | str = False, fuse: bool = True
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``stage.epochs`` epochs of every run k (``models[k]`` on ``members[k]``, epoch generators
    from ``seeds[k]`` and stage name ``what``), fused when the models allow it (and ``fuse``),
    else one after the other with :func:`~granularity.engine.train.train_epoch`. ``stage``: one
    for all, or one per run (its own optimiser settings and learning rate; fused only when they
    agree on epochs, batch size, augmentation and label smoothing). Returns each run's
    last-epoch metrics (a diverged run: ``{"failed": message}``; the others go on unchanged)
    and ``{"fused": bool, "fused_with": K, "reason": why not}``."""
    from granularity.engine.train import epoch_generator, make_optimizer, make_scheduler, train_epoch
    from granularity.models.fused import fuse as fuse_models, fuse_reason

    stages = list(stage) if isinstance(stage, Sequence) else [stage] * len(models)
    stage = stages[0]
    opts = [make_optimizer(m.parameters(), st) for m, st in zip(models, stages)]
    scheds = [make_scheduler(o, st, -(-len(mem.y) // st.batch_size)) for o, st, mem in zip(opts, stages, members)]
    why = "turned off" if not fuse else fuse_reason(models) or _members_reason(members) or _stages_reason(stages)
    out: list[dict[str, Any]] = [{} for _ in models]
    if why is not None or len(models) == 1:
        for k, (m, mem, st) in enumerate(zip(models, members, stages)):
            for epoch in range(1, st.epochs + 1):
                try:
                    out[k] = train_epoch(m, mem.x, mem.y, mem.norm, st, opts[k], scheds[k],
                                         epoch_generator(seeds[k], what, epoch), device, bf16, label=f"{what} epoch {epoch}")
                except FloatingPointError as exc:
                    out[k] = {"failed": str(exc)}
                    break
        return out, {"fused": False, "fused_with": 1, "reason": why or "a single run"}
    alive = list(range(len(models)))
    for epoch in range(1, stage.epochs + 1):
        starts = None
        while alive:
            group = fuse_models([models[k] for k in alive])
            try:
                ms = train_epoch_fused(group, [members[k] for k in alive], stage, [opts[k] for k in alive],
                                       [scheds[k] for k in alive], [epoch_generator(seeds[k], what, epoch) for k in alive],
                                       device, bf16, label=f"{what} epoch {epoch}", starts=starts)
                group.release()
                for k, m in zip(alive, ms):
                    out[k] = m
                break
            except MembersDiverged as exc:
                group.release()
                for i in exc.failed:
                    out[alive[i]] = {"failed": str(exc)}
                starts = [exc.starts[i] for i in range(len(alive)) if i not in exc.failed]
                alive = [k for i, k in enumerate(alive) if i not in exc.failed]
    return out, {"fused": True, "fused_with": len(models), "reason": None}


def _members_reason(members: Sequence[Member]) -> str | None:
    """Why these runs' data cannot share one fused loop (None: they can)."""
    if len({len(m.y) for m in members}) != 1:
        return "the runs have different numbers of training inputs"
    if len({(tuple(m.x.shape[1:]), m.x.dtype) for m in members}) != 1:
        return "the runs' inputs differ in shape or dtype"
    return None


def _stages_reason(stages: Sequence[StageConfig]) -> str | None:
    """Why these runs' stages cannot share one fused loop (None: they can)."""
    if len({(st.epochs, st.batch_size, st.augment, st.label_smoothing) for st in stages}) != 1:
        return "the runs' stages differ in epochs, batch size, augmentation or label smoothing"
    return None
