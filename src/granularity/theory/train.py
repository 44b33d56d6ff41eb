"""The simulator's one engine: pretraining at a level, transfer protocols, evaluation and
feature-alignment measurements, for a batch of seeds trained as one computation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from granularity.theory.config import SimConfig
from granularity.theory.data import HierarchicalMultiView, Samples, derive_seeds, generator
from granularity.theory.model import PatchCNN, activation, relu_backward_, sum_patches
from granularity.utils.device import resolve_device  # noqa: F401 (re-exported: theory.experiment, bench)

# indices into derive_seeds(seed, 6)
_DICT, _TRAIN, _TEST, _INIT, _ORDER, _HEAD = range(6)


def stream_seed(subseed: int, offset: int = 0) -> int:
    """The seed of one random stream of a run: ``subseed + offset`` modulo 2**32.

    The run's seed enters whole through ``derive_seeds`` (a SeedSequence); each stream then
    keeps 32 bits, exactly what torch's ``manual_seed`` kept of the 63-bit sub-seed before
    ``generator`` honoured every bit. Keeping it explicit keeps every stored result bit-identical.
    """
    return (subseed + offset) & 0xFFFFFFFF


def per_seed(fn: Callable, *items) -> list:
    """``[fn(*args) for args in zip(*items)]``, run in up to ``torch.get_num_threads()`` threads.

    For drawing the seeds' samples: each seed draws from its own generator and distribution,
    so the result is the sequential one exactly, and the draws (torch's normal sampling is
    serial per generator) of several seeds run side by side."""
    args = list(zip(*items))
    workers = min(len(args), torch.get_num_threads())
    if workers <= 1:
        return [fn(*a) for a in args]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: fn(*a), args))


def log_steps(steps: int, points: int) -> np.ndarray:
    """0 plus ``points`` log-spaced steps in [1, steps] (unique ints)."""
    return np.unique(np.concatenate([[0], np.geomspace(1, steps, points).round().astype(int)]))


@dataclass
class SeedBatch:
    """Per-seed distributions and training sets of a batch of seeds."""

    seeds: list[int]
    dists: list[HierarchicalMultiView]
    train: list[Samples]
    subseeds: list[list[int]]
    device: torch.device
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, cfg: SimConfig, seeds: list[int], device: torch.device) -> SeedBatch:
        cfg.check_hard_level()  # a config changed after validation must not mislabel easy as hard
        subseeds = [derive_seeds(s, 6) for s in seeds]
        dists = [HierarchicalMultiView(cfg.data, stream_seed(ss[_DICT])) for ss in subseeds]
        d = cfg.data
        X = torch.empty(len(seeds), cfg.train.n_train, d.P, d.d)  # drawn in place: no stacked copy
        train = per_seed(lambda dist, ss, out: dist.sample(cfg.train.n_train, generator(stream_seed(ss[_TRAIN])),
                                                           hard=d.train_hard_fraction, out=out), dists, subseeds, X)
        sb = cls(seeds, dists, train, subseeds, device)
        sb._cache["x"] = X.to(device)
        return sb

    def generators(self, which: int, offset: int = 0) -> list[torch.Generator]:
        """One generator per seed for stream ``which`` (an index into the sub-seeds) + ``offset``."""
        return [generator(stream_seed(ss[which], offset)) for ss in self.subseeds]

    @property
    def x(self) -> torch.Tensor:
        """The training sets stacked over seeds, (S, n, P, d): drawn into this stack by
        :meth:`build` (each seed's ``train[i].x`` is a view of its slot); pretraining, probe and
        finetune all read it."""
        if "x" not in self._cache:
            self._cache["x"] = torch.stack([t.x for t in self.train]).to(self.device)
        return self._cache["x"]

    def labels(self, level: int) -> torch.Tensor:
        key = ("labels", level)
        if key not in self._cache:
            self._cache[key] = torch.stack([t.label(level) for t in self.train]).to(self.device)  # (S, n)
        return self._cache[key]

    def dictionary(self) -> torch.Tensor:
        return torch.stack([d.dictionary for d in self.dists]).to(self.device)  # (S, M, d)

    def test_stream(self, n: int, hard: bool, chunk: int = 2048):
        """Chunks of test samples stacked over seeds; regenerated identically on every call."""
        gens = self.generators(_TEST, 1 if hard else 0)
        cfg = self.dists[0].cfg
        done = 0
        while done < n:
            size = min(chunk, n - done)
            x = torch.empty(len(gens), size, cfg.P, cfg.d)  # each seed's draw lands in its slot
            parts = per_seed(lambda dist, g, out: dist.sample(size, g, hard=hard, out=out), self.dists, gens, x)
            yield x.to(self.device), torch.stack([p.labels for p in parts]).to(self.device)
            done += size


@dataclass
class Pretrained:
    level: int
    model: PatchCNN
    align_steps: np.ndarray
    alignment: np.ndarray  # (S, T, N, M) <w_r, v> at align_steps
    curve: list[dict] = field(default_factory=list)  # per logged step: step, loss (S,), acc (S,)


class BatchOrder:
    """Per step, (S, B) indices: each seed walks its own random permutations (epochs).

    Its state (current permutations, position, generator states) can be saved and restored, so
    a resumed run draws exactly the batches an uninterrupted run would.
    """

    def __init__(self, n: int, batch: int | None, gens: list[torch.Generator]):
        self.n, self.gens = n, gens
        self.batch = None if batch is None or batch >= n else batch
        self.perms: list[torch.Tensor] | None = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.batch is None:
            return torch.arange(self.n).expand(len(self.gens), self.n)
        if self.perms is None or self.pos + self.batch > self.n:
            self.perms = [torch.randperm(self.n, generator=g) for g in self.gens]
            self.pos = 0
        idx = torch.stack([p[self.pos : self.pos + self.batch] for p in self.perms])
        self.pos += self.batch
        return idx

    def state_dict(self) -> dict:
        return {"perms": self.perms, "pos": self.pos, "gens": [g.get_state() for g in self.gens]}

    def load_state_dict(self, state: dict) -> None:
        self.perms, self.pos = state["perms"], state["pos"]
        for g, st in zip(self.gens, state["gens"]):
            g.set_state(st)


def _batches(n: int, batch: int | None, steps: int, gens: list[torch.Generator]):
    order = BatchOrder(n, batch, gens)
    for _ in range(steps):
        yield order.next()


class Gather:
    """Minibatches ``X[s, idx[s]]`` of every seed, copied by one ``index_select`` into a buffer
    reused from step to step (advanced indexing would allocate (S, B, P, d) every step). Rows
    are gathered as flat (P*d,) vectors: ``index_select`` copies those faster than (P, d) blocks."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor):
        S, n = X.shape[:2]
        self.item = tuple(X.shape[2:])
        self.X = X.reshape(S * n, -1)  # (S*n, P*d), a view of the contiguous stack
        self.Y = Y.reshape(S * n)
        self.S, self.n = S, n
        self.offset = (torch.arange(S, device=X.device) * n)[:, None]  # (S, 1)
        self._buf: torch.Tensor | None = None

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        S, B = idx.shape
        flat = (idx + self.offset).reshape(-1)  # (S*B,)
        shape = (S * B, self.X.shape[1])
        if self._buf is None or self._buf.shape != shape:
            self._buf = torch.empty(shape, dtype=self.X.dtype, device=self.X.device)
        x = torch.index_select(self.X, 0, flat, out=self._buf)
        return x.view(S, B, *self.item), self.Y[flat].view(S, B)


def pretrain(cfg: SimConfig, sb: SeedBatch, level: int, progress: Callable[[int], None] | None = None,
             checkpoint: Callable[[dict], None] | None = None, every: int = 0,
             resume: dict | None = None, every_s: float | None = None) -> Pretrained:
    """Train S models (one per seed) on the level-``level`` labels with SGD.

    ``checkpoint(state)`` is called every ``every`` steps (or, with ``every=0`` and
    ``every_s``, at the first step after ``every_s`` seconds since the last call) with the full
    training state; passing that state back as ``resume`` continues bit-identically to an
    uninterrupted run, wherever it was saved.
    """
    S = len(sb.seeds)
    outputs = cfg.data.nodes_per_level[level - 1]
    init_gens = sb.generators(_INIT, level)
    model = PatchCNN(S, outputs, cfg.data.d, cfg.model, init_gens, sb.device)
    gather = Gather(model.cast(sb.x), sb.labels(level))  # bf16: one cast of the set, not one per step
    D = sb.dictionary()
    tc = cfg.train
    marks = set(log_steps(tc.steps, tc.log_points).tolist())
    log_every = max(1, tc.steps // 100)
    align, align_steps, curve = [], [], []
    order = BatchOrder(tc.n_train, tc.batch_size, sb.generators(_ORDER, level))
    run_loss = torch.zeros(S, device=sb.device)
    run_acc = torch.zeros(S, device=sb.device)
    count, start = 0, 0
    if resume is not None:
        model.W.copy_(resume["W"]), model.a.copy_(resume["a"])
        order.load_state_dict(resume["order"])
        run_loss.copy_(resume["run_loss"]), run_acc.copy_(resume["run_acc"])
        count, start = resume["count"], resume["step"]
        align, align_steps, curve = list(resume["align"]), list(resume["align_steps"]), list(resume["curve"])
        if progress is not None:
            progress(start)
    last_save = time.monotonic()
    for step in range(start, tc.steps):
        due = (step % every == 0) if every else (every_s is not None and time.monotonic() - last_save >= every_s)
        if checkpoint is not None and due and step > start:
            last_save = time.monotonic()
            checkpoint({"step": step, "W": model.W, "a": model.a, "order": order.state_dict(),
                        "run_loss": run_loss, "run_acc": run_acc, "count": count,
                        "align": align, "align_steps": align_steps, "curve": curve})
        if step in marks:
            align.append(torch.bmm(model.W, D.transpose(1, 2)).cpu())  # (S, N, M)
            align_steps.append(step)
        loss, acc = model.step(*gather(order.next().to(sb.device)), tc.lr, tc.weight_decay)
        run_loss += loss
        run_acc += acc
        count += 1
        if (step + 1) % log_every == 0 or step + 1 == tc.steps:
            curve.append({"step": step + 1, "loss": (run_loss / count).tolist(), "acc": (run_acc / count).tolist()})
            run_loss.zero_(), run_acc.zero_()
            count = 0
            if not all(np.isfinite(curve[-1]["loss"])):
                raise FloatingPointError(f"non-finite training loss at step {step + 1} (level {level}); lower train.lr")
        if progress is not None:
            progress(1)
    align.append(torch.bmm(model.W, D.transpose(1, 2)).cpu())
    align_steps.append(tc.steps)
    return Pretrained(level, model, np.asarray(align_steps), torch.stack(align, 1).numpy(), curve)


# ---------------------------------------------------------------------------------------------
# transfer protocols


@dataclass
class Head:
    """A linear head on the (frozen or fine-tuned) neuron features: logits = H' @ w + b."""

    W: torch.Tensor  # (S, N, d) first layer (frozen copy for probe, fine-tuned for finetune)
    w: torch.Tensor  # (S, N, O)
    b: torch.Tensor  # (S, O)
    mean: torch.Tensor | None = None  # (S, 1, N) feature standardisation (probe)
    std: torch.Tensor | None = None


def _features(model: PatchCNN, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    if not W.requires_grad:
        return model.hidden(x, W)  # in place, no activation derivative
    S, B, P, d = x.shape
    pre = torch.bmm(model.cast(x).reshape(S, B * P, d), model.cast(W).transpose(1, 2))
    if model.bias:
        pre = pre + model.bias
    act = torch.relu(pre) if model.cfg.activation == "relu" else activation(pre, model.cfg)[0]
    return act.view(S, B, P, -1).sum(2, dtype=torch.float32 if act.dtype == torch.bfloat16 else act.dtype)  # (S, B, N)


def _head_logits(model: PatchCNN, head: Head, x: torch.Tensor, H: torch.Tensor | None = None) -> torch.Tensor:
    """The head's logits on ``x``; ``H``: the features of ``x`` under ``head.W`` if known."""
    H = _features(model, x, head.W) if H is None else H
    if head.mean is not None:
        H = (H - head.mean) / head.std
    return torch.baddbmm(head.b[:, None, :], H, head.w)  # (S, B, O)


def linear_probe(cfg: SimConfig, sb: SeedBatch, pre: Pretrained, target: int) -> Head:
    """Freeze the first layer; fit a fresh linear head on standardised neuron activations with
    full-batch Adam (per-parameter, so seeds stay independent)."""
    model = pre.model
    X, Y = sb.x, sb.labels(target)
    with torch.no_grad():
        H = torch.cat([_features(model, X[:, i : i + 512], model.W) for i in range(0, X.shape[1], 512)], 1)
    mean = H.mean(1, keepdim=True)
    std = H.std(1, keepdim=True) + 1e-6
    Hn = (H - mean) / std
    S, _, N = H.shape
    O = cfg.data.nodes_per_level[target - 1]
    w = torch.zeros(S, N, O, device=sb.device, requires_grad=True)
    b = torch.zeros(S, O, device=sb.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=cfg.transfer.probe_lr)
    # bf16 runs take the fast gradients (equal to autograd's up to rounding); float32 runs keep
    # autograd's exact arithmetic, so that they reproduce stored results bit for bit
    HnT = Hn.transpose(1, 2).contiguous() if model.cdtype == torch.bfloat16 else None  # (S, N, n)
    for _ in range(cfg.transfer.probe_steps):
        opt.zero_grad(set_to_none=True)
        if HnT is not None:
            w.grad, b.grad = _probe_grads(Hn, HnT, w, b, Y)
        else:
            _head_loss(torch.baddbmm(b[:, None, :], Hn, w), Y).backward()
        opt.step()
    return Head(model.W, w.detach(), b.detach(), mean, std)


def _probe_grads(Hn: torch.Tensor, HnT: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                 Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the probe's loss (sum over seeds of each seed's mean cross-entropy of
    ``Hn @ w + b``) with respect to ``w`` (S, N, O) and ``b`` (S, O): what autograd gives for
    ``baddbmm(b[:, None, :], Hn, w)``, with the thin O-column products computed from the
    transposed side (``w^T Hn^T``, ``g^T Hn``), 5-8x faster than in their own layout. The
    same sums; the BLAS may order a sum's terms differently for some shapes (bit-identical for
    O = 2, 3 in tests, not for O = 4), so only bf16 runs use it."""
    S, _, O = Hn.shape[0], Hn.shape[1], w.shape[2]
    with torch.no_grad():
        logits = torch.baddbmm(b[:, :, None], w.transpose(1, 2), HnT).transpose(1, 2)  # (S, n, O)
    logits.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, O), Y.reshape(-1), reduction="none")
    (g,) = torch.autograd.grad(loss.view(S, -1).mean(1).sum(), logits)
    return torch.bmm(g.transpose(1, 2), Hn).transpose(1, 2).contiguous(), g.sum(1)


def finetune(cfg: SimConfig, sb: SeedBatch, pre: Pretrained, target: int) -> Head:
    """Train every weight on the target labels from the pretrained first layer with a fresh
    (zero) linear head, by minibatch SGD."""
    model = pre.model
    X, Y = sb.x, sb.labels(target)
    S = len(sb.seeds)
    O = cfg.data.nodes_per_level[target - 1]
    W = model.W.clone()
    w = torch.zeros(S, model.N, O, device=sb.device, requires_grad=True)
    b = torch.zeros(S, O, device=sb.device, requires_grad=True)
    lr = cfg.transfer.finetune_lr
    order = sb.generators(_HEAD, target)
    gather = Gather(model.cast(X), Y)
    if model.cfg.activation != "relu":
        W.requires_grad_(True)
        opt = torch.optim.SGD([W, w, b], lr=lr)
    for idx in _batches(cfg.train.n_train, cfg.train.batch_size, cfg.transfer.finetune_steps, order):
        xb, yb = gather(idx.to(sb.device))
        if model.cfg.activation == "relu":
            _finetune_step_relu(model, W, w, b, xb, yb, lr)
            continue
        opt.zero_grad(set_to_none=True)
        _head_loss(_head_logits(model, Head(W, w, b), xb), yb).backward()
        opt.step()
    return Head(W.detach(), w.detach(), b.detach())


def _head_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over seeds of each seed's mean cross-entropy (seeds' gradients stay independent)."""
    S, _, O = logits.shape
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, O), y.reshape(-1), reduction="none")
    return loss.view(S, -1).mean(1).sum()


def _finetune_step_relu(model: PatchCNN, W: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                        x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
    """One SGD step of fine-tuning a ReLU model: autograd for the small head (logits from the
    features H), the first layer's forward and backward by hand in the model's reused
    (S, B*P, N) buffer, as in :meth:`PatchCNN.step`. The arithmetic is autograd's (the same
    bmm with the same operand layouts for dL/dW, the same ReLU mask, ``p -= lr * grad`` as
    ``torch.optim.SGD``), so float32 results are bit-identical to the full-autograd loop. With
    bf16 operands dL/dW is computed as the pretraining step computes it, (S, N, d) into a reused
    buffer, which W takes in its own layout: no (S, d, N) tensor each step and no transposed
    float32 update (the same products and float32 sums, one bf16 rounding per element)."""
    S, B, P, d = x.shape
    x = model.cast(x)
    pre = model._pre(x, W, out=model._workspace("pre", (S, B * P, model.N), x)).view(S, B, P, model.N)
    H = sum_patches(pre, relu=True).requires_grad_(True)  # (S, B, N); float32 ReLUs pre in place
    dH, dw, db = torch.autograd.grad(_head_loss(torch.baddbmm(b[:, None, :], H, w), y), [H, w, b])
    dpre = relu_backward_(pre, model.cast(dH)).view(S, B * P, model.N)
    x2 = x.reshape(S, B * P, d)
    if x.dtype == torch.bfloat16:  # (S, N, d), as PatchCNN.step
        dW = torch.bmm(dpre.transpose(1, 2), x2, out=model._workspace("dW", (S, model.N, d), x))
    else:  # (S, d, N): autograd's bmm backward, bit for bit
        dW = torch.bmm(x2.transpose(1, 2), dpre).transpose(1, 2)
    with torch.no_grad():
        W.add_(dW, alpha=-lr)
        w.add_(dw, alpha=-lr)
        b.add_(db, alpha=-lr)


# ---------------------------------------------------------------------------------------------
# evaluation


# Test samples are drawn in chunks of 2048 (the draw depends on the chunking) and fed to the
# models in row blocks of this many: the (S, rows*P, N) activations of a block stay in cache
# instead of a buffer of hundreds of MB. A row's prediction does not depend on the others.
EVAL_ROWS = 256


def evaluate(cfg: SimConfig, sb: SeedBatch, models: dict[str, Pretrained], heads: dict[tuple[str, str], Head]) -> dict:
    """Easy and hard test error on the target level of every (source, protocol), per seed.

    The test samples are streamed (memory does not grow with ``transfer.n_test``).
    Returns ``{(source, protocol): {"easy": (S,), "hard": (S,)}}``.
    """
    target = cfg.transfer.target
    errors: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    tree = sb.dists[0].tree
    for hard in (False, True):
        wrong: dict[tuple[str, str], torch.Tensor] = {}
        for x, labels in sb.test_stream(cfg.transfer.n_test, hard):
            x = next(iter(models.values())).model.cast(x)  # bf16: one cast of the chunk for every model
            for i in range(0, x.shape[1], EVAL_ROWS):
                y = labels[:, i : i + EVAL_ROWS, target - 1]
                with torch.no_grad():
                    for key, pred in _predictions(cfg, models, heads, x[:, i : i + EVAL_ROWS], tree, target).items():
                        wrong[key] = wrong.get(key, 0) + (pred != y).sum(1)
        for key, count in wrong.items():
            errors.setdefault(key, {})["hard" if hard else "easy"] = (count.float() / cfg.transfer.n_test).cpu().numpy()
    return errors


def _predictions(cfg: SimConfig, models: dict[str, Pretrained], heads: dict[tuple[str, str], Head],
                 x: torch.Tensor, tree, target: int) -> dict[tuple[str, str], torch.Tensor]:
    """Predicted target classes (S, B) of every (source, protocol) on one test chunk. The map
    protocol and the probe read the same frozen features of a source: computed once."""
    preds, frozen = {}, {}
    for src, pre in models.items():
        if "map" in cfg.transfer.protocols or any(h.W is pre.model.W for (s, _), h in heads.items() if s == src):
            frozen[src] = pre.model.hidden(x)
        if "map" in cfg.transfer.protocols:
            anc = tree.ancestor_map(pre.level, target).to(x.device)
            preds[(src, "map")] = anc[pre.model.logits_from_features(frozen[src]).argmax(-1)]
    for (src, proto), head in heads.items():
        model = models[src].model
        H = frozen.get(src) if head.W is model.W else None
        preds[(src, proto)] = _head_logits(model, head, x, H).argmax(-1)
    return preds


def feature_summary(cfg: SimConfig, sb: SeedBatch, pre: Pretrained) -> dict[str, np.ndarray]:
    """Per seed: mean over the features of each level of max_r <w_r, v>, over all neurons and
    over the neurons of the feature's own class (its ancestor or descendants at the model's
    level). Keys ``all_level{l}`` and ``own_level{l}``, values (S, T) over the recorded steps."""
    tree = sb.dists[0].tree
    A = torch.from_numpy(pre.alignment)  # (S, T, N, M)
    flevel = tree.feature_level()
    fnode = tree.feature_node()
    model_level = pre.level
    O = tree.nodes_per_level[model_level - 1]
    own = torch.zeros(O, A.shape[-1], dtype=torch.bool)  # (O, M): is output o the feature's own class
    for f in range(A.shape[-1]):
        lv, node = int(flevel[f]), int(fnode[f])
        if lv >= model_level:
            own[tree.ancestor_map(lv, model_level)[node], f] = True
        else:
            own[tree.ancestor_map(model_level, lv) == node, f] = True
    own_n = own.repeat_interleave(pre.model.m, dim=0)  # (N, M)
    out = {}
    for lv in range(1, tree.levels + 1):
        sel = flevel == lv
        out[f"all_level{lv}"] = A[..., sel].amax(2).mean(-1).numpy()
        masked = A[..., sel].masked_fill(~own_n[:, sel], float("-inf"))
        out[f"own_level{lv}"] = masked.amax(2).mean(-1).numpy()
    return out


def level_keys(summary: dict, prefix: str = "own_level") -> list[tuple[int, str]]:
    """``(level, key)`` of the ``<prefix><level>`` keys of a :func:`feature_summary` (or its
    stored form), ordered by level as a number: level 2 before level 10."""
    n = len(prefix)
    return sorted((int(k[n:]), k) for k in summary if k.startswith(prefix) and k[n:].isdigit())
