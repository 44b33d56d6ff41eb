"""Whole runs trained as fused groups: K ``run_transfer`` calls in K threads, their training
epochs met and run as one fused epoch (:func:`granularity.engine.fused.train_epoch_fused`).

Each run keeps everything of its own: its run folder, config, data, labels, model, optimiser,
scheduler, checkpoints (written by its own :class:`~granularity.engine.stages.Run` after its own
steps), evaluation and ``result.json``. Only the epoch's training steps are shared: every
member's thread asks :func:`epoch_fn` for the function that trains an epoch; inside a group it
is a rendezvous that waits until every live member of the group has arrived at a training epoch
(or finished), then trains the compatible ones (same number of steps, batch size, augmentation,
label smoothing, input shape, resume step and a model with a fused form, see
:func:`granularity.models.fused.fuse_reason`) as one fused model and each other one alone, and
hands every member its own metrics. A member whose step callback raises (an interrupted run)
or whose loss is not finite leaves the group at that step; the others continue from it exactly.

A SIGKILL of the process loses no finished run (its result.json is written) and each unfinished
run resumes from its own last checkpoint, fused again or alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

_LOCAL = threading.local()


@dataclass
class _Call:
    """One member's ``train_epoch`` call (its arguments) and, once run, its outcome."""

    args: dict[str, Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    fused_with: int = 1


@dataclass
class FusedGroup:
    """The rendezvous of ``size`` member threads (see the module docstring).

    The threads take turns: exactly one runs at a time (``running``), in member order, until it
    asks for a training epoch or finishes; the last one to get there trains every waiting
    epoch, then the members go on again in order. So the members' own code never runs
    concurrently (torch's global RNG, which a run seeds around its model's initialisation,
    is never shared between two runs at once) and every run sees what it would see alone."""

    size: int
    cond: threading.Condition = field(default_factory=threading.Condition)
    ready: list[int] = field(default_factory=list)  # members that may run, in turn order
    running: int | None = None
    waiting: dict[int, _Call] = field(default_factory=dict)
    fused_with: dict[int, int] = field(default_factory=dict)  # member -> the largest group it trained in
    reasons: dict[int, str] = field(default_factory=dict)  # member -> why an epoch of it ran alone

    def __post_init__(self) -> None:
        self.ready = list(range(self.size))
        self.running = 0 if self.size else None

    def _wait_turn(self, i: int) -> None:  # with the lock held
        while self.running != i:
            self.cond.wait()

    def _pass_turn(self) -> None:  # with the lock held; trains the waiting epochs when no one else can run
        if not self.ready and self.waiting:
            calls, self.waiting = self.waiting, {}
            self.cond.release()
            try:
                _execute(calls, self)
            finally:
                self.cond.acquire()
                for c in calls.values():
                    if not c.done:  # _execute itself failed: nobody may wait forever
                        c.error, c.done = c.error or RuntimeError("the fused group failed"), True
            self.ready = sorted(calls)
        self.running = self.ready[0] if self.ready else None
        self.cond.notify_all()

    def enter(self, i: int) -> None:
        _LOCAL.member = (self, i)
        with self.cond:
            self._wait_turn(i)

    def leave(self, i: int) -> None:
        _LOCAL.member = None
        with self.cond:
            if i in self.ready:
                self.ready.remove(i)
            self._pass_turn()

    def submit(self, i: int, args: dict[str, Any]) -> Any:
        """Member ``i``'s epoch: wait for the others, train (possibly in this thread), return
        its metrics or raise its error."""
        call = _Call(args)
        with self.cond:
            self.waiting[i] = call
            self.ready.remove(i)
            self._pass_turn()
            self._wait_turn(i)
        self.fused_with[i] = max(self.fused_with.get(i, 1), call.fused_with)
        if call.error is not None:
            raise call.error
        return call.result


def current_fused_with() -> int | None:
    """The largest fused group the calling member thread has trained in (None outside a group)."""
    member = getattr(_LOCAL, "member", None)
    return None if member is None else member[0].fused_with.get(member[1], 1)


def epoch_fn(solo: Callable[..., Any]) -> Callable[..., Any]:
    """What trains one epoch for the calling thread: ``solo`` (``train_epoch``) outside a group,
    else the group's rendezvous with the same signature."""
    member = getattr(_LOCAL, "member", None)
    if member is None:
        return solo
    group, i = member

    def fused_epoch(net, x, y, norm, stage, opt, sched, gen, device, bf16=False, on_step=None, dist=None,
                    label="training", start=None):
        args = dict(kind="train", net=net, x=x, y=y, norm=norm, stage=stage, opt=opt, sched=sched, gen=gen, device=device,
                    bf16=bf16, on_step=on_step, dist=dist, label=label, start=start, solo=solo)
        return group.submit(i, args)

    return fused_epoch


def levels_fn(solo: Callable[..., Any]) -> Callable[..., Any]:
    """What evaluates at every level for the calling thread: ``solo`` (``predict_levels``)
    outside a group, else the group's rendezvous (the members' models evaluated as one)."""
    member = getattr(_LOCAL, "member", None)
    if member is None:
        return solo
    group, i = member

    def fused_levels(fn, x, norm, batch, device, maps, sizes, bf16=False):
        args = dict(kind="predict", net=fn, x=x, norm=norm, batch=batch, device=device, maps=maps, sizes=sizes, bf16=bf16,
                    solo=solo)
        return group.submit(i, args)

    return fused_levels


def predict_fn(solo: Callable[..., Any]) -> Callable[..., Any]:
    """What predicts for the calling thread: ``solo`` (``engine.train.predict``) outside a group,
    else the group's rendezvous: a model (or its ``forward_features``) of every member that
    predicts at the same time is evaluated as one fused model."""
    member = getattr(_LOCAL, "member", None)
    if member is None:
        return solo
    group, i = member

    def fused_predict(fn, x, norm, batch, device, bf16=False):
        owner = getattr(fn, "__self__", None)
        features = isinstance(owner, torch.nn.Module) and getattr(fn, "__name__", "") == "forward_features"
        args = dict(kind="logits", net=owner if features else fn, fn=fn, features=features, x=x, norm=norm, batch=batch,
                    device=device, bf16=bf16, solo=solo)
        return group.submit(i, args)

    return fused_predict


def _key(a: dict[str, Any]) -> tuple | None:
    """What members must share to train as one fused epoch (None: this one trains alone)."""
    from granularity.engine.train import bf16_active

    x = a["x"]
    if not isinstance(x, torch.Tensor) or not isinstance(a["net"], torch.nn.Module):
        return None
    head = (a["kind"], str(a["device"]), bf16_active(a["device"], a["bf16"]), tuple(x.shape[1:]), x.dtype)
    if a["kind"] == "predict":
        return head
    if a["kind"] == "logits":
        return (*head, a["features"])
    st, start, dist = a["stage"], a["start"], a["dist"]
    if (dist is not None and dist.enabled) or not isinstance(a["y"], torch.Tensor):
        return None
    return (*head, st.batch_size, st.augment, st.label_smoothing, len(a["y"]), None if start is None else int(start["step"]))


def _solo(call: _Call) -> None:
    a = call.args
    try:
        if a["kind"] == "predict":
            call.result = a["solo"](a["net"], a["x"], a["norm"], a["batch"], a["device"], a["maps"], a["sizes"], a["bf16"])
        elif a["kind"] == "logits":
            call.result = a["solo"](a["fn"], a["x"], a["norm"], a["batch"], a["device"], a["bf16"])
        else:
            call.result = a["solo"](a["net"], a["x"], a["y"], a["norm"], a["stage"], a["opt"], a["sched"], a["gen"],
                                    a["device"], a["bf16"], a["on_step"], dist=a["dist"], label=a["label"], start=a["start"])
    except BaseException as exc:  # noqa: BLE001 - handed to the member's own thread
        call.error = exc


def _fused_predict(calls: dict[int, _Call], idx: Sequence[int]) -> None:
    """Members ``idx``'s evaluations (``predict_levels`` or ``predict``) through one fused model in eval mode."""
    from granularity.engine.fused import predict_fused
    from granularity.engine.train import group_logits
    from granularity.models.fused import fuse

    a = [calls[i].args for i in idx]
    model = fuse([x["net"] for x in a])

    def levels(k: int, z: torch.Tensor) -> dict[int, torch.Tensor]:  # as predict_levels does per batch
        maps, sizes = a[k]["maps"], a[k]["sizes"]
        m = z.max(dim=1, keepdim=True).values
        shared = ((z - m).exp(), m)
        return {lv: group_logits(z, gm, sizes[lv], shared) for lv, gm in maps.items() if gm is not None}

    logits = a[0]["kind"] == "logits"  # predict: the logits (or the features) themselves
    features = logits and a[0]["features"]
    try:
        outs = predict_fused(model.forward_features if features else model, [x["x"] for x in a], [x["norm"] for x in a],
                             a[0]["device"], a[0]["bf16"], widths=None if features else model.num_classes,
                             reduce=None if logits else levels)
        for i, o in zip(idx, outs):
            calls[i].result = o
    except BaseException as exc:  # noqa: BLE001 - handed to the members' own threads
        for i in idx:
            calls[i].error = exc
    finally:
        model.release()


# members fused as one share a head padded to the largest: a head of many classes (one per
# training image, say) next to small ones would multiply their logits' memory traffic, so it
# trains alone once it is over HEAD_RATIO x the smallest head of its part and over HEAD_FREE classes
HEAD_RATIO, HEAD_FREE = 4, 256


def _head_size(net: Any) -> int | None:
    head = net if isinstance(net, torch.nn.Linear) else getattr(net, "head", None)
    return int(head.out_features) if isinstance(head, torch.nn.Linear) else None


def head_parts(sizes: Sequence[int | None]) -> list[list[int]]:
    """Indices into ``sizes`` (head classes; None: unknown) in parts whose padded head costs
    little: by size, a new part once a head is over ``HEAD_FREE`` classes and over
    ``HEAD_RATIO`` x the part's smallest; unknown sizes in one part of their own."""
    known = sorted((n, j) for j, n in enumerate(sizes) if n is not None)
    parts: list[list[int]] = []
    low = 0
    for n, j in known:
        if not parts or (n > HEAD_FREE and n > HEAD_RATIO * low):
            parts.append([])
            low = n
        parts[-1].append(j)
    unknown = [j for j, n in enumerate(sizes) if n is None]
    return [sorted(p) for p in parts] + ([unknown] if unknown else [])


def _execute(calls: dict[int, _Call], group: FusedGroup) -> None:
    """Train every waiting member's epoch: fused where they share a key and a fused form."""
    from granularity.models.fused import fuse_reason

    parts: dict[Any, list[int]] = {}
    for i, c in sorted(calls.items()):
        k = _key(c.args)
        parts.setdefault(k if k is not None else ("alone", i), []).append(i)
    split: list[tuple[Any, list[int], str | None]] = []
    for key, idx in parts.items():
        if key[0] == "alone" or len(idx) == 1 or (key[0] == "logits" and key[-1]):  # features: no head involved
            split.append((key, idx, None))
            continue
        heads = [_head_size(calls[i].args["net"]) for i in idx]
        for part in head_parts(heads):
            alone = None
            if len(part) == 1:
                others = sorted({heads[j] for j in range(len(idx)) if j != part[0]}, key=lambda n: (n is None, n))
                alone = (f"its head of {heads[part[0]]} classes and the others' {others} differ more than {HEAD_RATIO}x "
                         f"(padded to the largest, the logits would cost more than fusing gains)")
            split.append((key, [idx[j] for j in part], alone))
    for key, idx, alone in split:
        why = fuse_reason([calls[i].args["net"] for i in idx]) if len(idx) > 1 and key[0] != "alone" else alone or "alone"
        if why is not None:
            for i in idx:
                if why != "alone":
                    group.reasons[i] = why
                _solo(calls[i])
        elif key[0] in ("predict", "logits"):
            _fused_predict(calls, idx)
        else:
            _fused(calls, idx)
        for i in idx:
            calls[i].done = True


class _Left(Exception):
    """Members' step callbacks raised after step ``step`` (their errors are in their calls)."""

    def __init__(self, left: list[int], step: int) -> None:
        super().__init__(f"members {left} left after step {step}")
        self.left, self.step = left, step


def _fused(calls: dict[int, _Call], idx: Sequence[int]) -> None:
    """Members ``idx`` as one fused epoch; a member that diverges or whose callback raises
    leaves, and the others go on from that step."""
    from granularity.engine.fused import Member, MembersDiverged, train_epoch_fused
    from granularity.models.fused import fuse

    alive = list(idx)
    starts = [calls[i].args["start"] for i in alive] if calls[alive[0]].args["start"] is not None else None
    while len(alive) > 1:
        a = [calls[i].args for i in alive]
        for i in alive:
            calls[i].fused_with = max(calls[i].fused_with, len(alive))
        model = fuse([x["net"] for x in a])
        try:
            ms = train_epoch_fused(model, [Member(x["x"], x["y"], x["norm"]) for x in a], a[0]["stage"],
                                   [x["opt"] for x in a], [x["sched"] for x in a], [x["gen"] for x in a], a[0]["device"],
                                   a[0]["bf16"], _callbacks(calls, alive), a[0]["label"], starts)
            for i, m in zip(alive, ms):
                calls[i].result = m
            return
        except MembersDiverged as exc:
            gone, starts = [alive[k] for k in exc.failed], [exc.starts[k] for k in range(len(alive)) if k not in exc.failed]
            for k, i in zip(exc.failed, gone):  # the message a run alone gives
                calls[i].error = FloatingPointError(f"non-finite training loss ({exc.losses[k]}) at step {exc.step + 1} "
                                                    f"of {calls[i].args['label']}")
        except _Left as exc:
            gone = exc.left
            starts = [{"step": exc.step, "totals": calls[i].args["_totals"], "gen_state": calls[i].args["gen"].get_state()}
                      for i in alive if i not in gone]
        except BaseException as exc:  # noqa: BLE001 - e.g. out of memory: every member of the group gets it
            for i in alive:
                calls[i].error = exc
            return
        finally:
            model.release()
        alive = [i for i in alive if i not in gone]
        for i in alive:  # the permutation is drawn again from the epoch generator's seed, then its state set
            calls[i].args["gen"].manual_seed(calls[i].args["gen"].initial_seed())
    if alive:  # one member left: it goes on alone from the same step
        call = calls[alive[0]]
        call.args["start"] = starts[0] if starts is not None else None
        _solo(call)


def _callbacks(calls: dict[int, _Call], alive: list[int]) -> Callable[[dict], None]:
    """One ``on_step`` for the fused epoch that calls each member's own with its own position;
    members whose callback raises leave after this step (:class:`_Left`)."""

    def on_step(pos: dict) -> None:
        left = []
        for k, i in enumerate(alive):
            a = calls[i].args
            a["_totals"] = list(pos["totals"][k])
            if a["on_step"] is None:
                continue
            try:
                a["on_step"]({"step": pos["step"], "n_steps": pos["n_steps"], "images": pos["images"],
                              "totals": list(pos["totals"][k]), "gen": pos["gens"][k]})
            except BaseException as exc:  # noqa: BLE001 - raised in the member's own thread
                calls[i].error = exc
                left.append(i)
        if left:
            raise _Left(left, pos["step"])

    return on_step


def run_group(tasks: Sequence[Callable[[], Any]]) -> list[tuple[Any, BaseException | None, dict[str, Any]]]:
    """Run ``tasks`` (each one run, e.g. a ``run_transfer`` call) as one fused group, one thread
    each. Returns per task ``(result, error, {"fused_with": K, "reason": why an epoch ran alone})``."""
    group = FusedGroup(len(tasks))
    out: list[list[Any]] = [[None, None] for _ in tasks]

    def work(i: int) -> None:
        group.enter(i)
        try:
            out[i][0] = tasks[i]()
        except BaseException as exc:  # noqa: BLE001 - returned to the caller
            out[i][1] = exc
        finally:
            group.leave(i)

    threads = [threading.Thread(target=work, args=(i,), name=f"fused-member-{i}", daemon=True) for i in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [(r, e, {"fused_with": group.fused_with.get(i, 1), "reason": group.reasons.get(i)})
            for i, (r, e) in enumerate(out)]


def activation_bytes(model: torch.nn.Module, input_shape: Sequence[int], batch: int) -> int:
    """Bytes one training step of ``model`` holds for its activations at ``batch`` (every leaf
    module's float32 output, kept for the backward pass, and as much again for its gradient),
    measured with one eval-mode image; plus weights, gradients and two optimiser buffers."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(out, torch.Tensor) and not list(m.children()):
            total[0] += out[0].numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return int(2 * 4 * total[0] * batch + 4 * 4 * sum(p.numel() for p in model.parameters()))


def run_bytes(config: Any, input_shape: Sequence[int] | None) -> int:
    """A run's training memory for sizing fused groups: its model's activations at its
    pretraining batch size (:func:`activation_bytes`), from a config with ``model`` and
    ``pretrain`` (a transfer or design config); 256 MiB when the config names no model, the
    input shape is unknown or the model cannot be probed with it (token ids)."""
    from granularity.errors import GranularityError
    from granularity.models import create_model

    if getattr(config, "model", None) is None or input_shape is None or not hasattr(config, "pretrain"):
        return 256 * 2**20
    try:
        with torch.random.fork_rng(devices=[]):
            solo = create_model(config.model.name, tuple(input_shape), 1, **config.model.options)
        return activation_bytes(solo, tuple(input_shape), config.pretrain.batch_size)
    except (GranularityError, RuntimeError, TypeError, ValueError):  # e.g. a text model probed with pixels
        return 256 * 2**20


def group_sizes(n: int, per_run: int, budget: int, cap: int) -> list[int]:
    """Sizes of the fused groups for ``n`` runs of ``per_run`` bytes each within ``budget``
    bytes and at most ``cap`` runs a group, as equal as they can be."""
    k = max(1, min(cap, budget // max(per_run, 1), n))
    groups = -(-n // k)
    return [n // groups + (1 if i < n % groups else 0) for i in range(groups)] if n else []


def default_budget(device: torch.device | None = None) -> int:
    """The memory fused training may use by default: a quarter of what is available (at most
    4 GiB on the CPU), 2 GiB when that cannot be read."""
    from granularity.utils.device import available_memory

    free = available_memory(device or torch.device("cpu"))
    if free is None:
        return 2 * 2**30
    return int(free // 4 if device is not None and device.type == "cuda" else min(free // 4, 4 * 2**30))
