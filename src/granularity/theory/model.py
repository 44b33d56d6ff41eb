"""The two-layer convolutional network of the theory, for S seeds at once.

    F_o(X) = sum_r a_{o,r} * sum_p act(<w_{o,r}, x_p> + b)

One weight tensor ``W`` of shape (S, N, d) holds the N = outputs*m neurons of S independent
models, so that several seeds train as one batched matrix multiply (their losses are summed,
their gradients stay independent). Forward and backward are written by hand: the network is
two matrix multiplies and an elementwise activation, and the hand-written backward skips
autograd's bookkeeping and the gradient with respect to the inputs, which is never needed.

With ``precision="bfloat16"`` both matrix multiplies take bf16 operands (the hardware
accumulates in float32), the (S, B*P, N) activation buffer is bf16, sums over patches and the
logits are float32, and ``W`` stays a float32 master copy updated by float32 SGD.
"""

from __future__ import annotations

import math
import warnings

import torch

from granularity.theory.config import SimModelConfig


def activation(pre: torch.Tensor, cfg: SimModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``act(pre)`` and ``act'(pre)``.

    ``smooth_relu`` is the smoothed ReLU of Allen-Zhu & Li: ``z^q / (q rho^(q-1))`` on
    ``[0, rho]``, ``z - (1 - 1/q) rho`` above, 0 below.
    """
    if cfg.activation == "relu":
        mask = pre > 0
        return pre.clamp_min(0), mask.to(pre.dtype)
    q, rho = cfg.q, cfg.rho
    z = pre.clamp(0, rho)
    low = z.pow(q) / (q * rho ** (q - 1))
    above = pre > rho
    act = torch.where(above, pre - (1 - 1 / q) * rho, low)
    grad = torch.where(above, torch.ones_like(pre), z.pow(q - 1) / rho ** (q - 1))
    return act, grad


# bf16 ReLU + sum over patches of at least this many elements runs as one compiled kernel
# (torch.compile, inductor's C++ backend): one read of the buffer instead of many blockwise
# ops, which a loaded machine makes slow. Smaller buffers stay eager: compiling costs seconds
# per shape, more than a short run (the paper preset) would save.
FUSE_MIN_ELEMENTS = 2**24
_fused: dict = {"fn": None, "failed": False}


def _fused_relu_sum(act: torch.Tensor) -> torch.Tensor | None:
    """relu(act).sum(2) in float32 by a compiled kernel; None (after one warning) where
    torch.compile is unavailable or fails, and the caller computes it eagerly."""
    if _fused["failed"]:
        return None
    try:
        if _fused["fn"] is None:
            _fused["fn"] = torch.compile(lambda a: a.clamp_min(0).sum(2, dtype=torch.float32), dynamic=False)
        return _fused["fn"](act)
    except Exception as exc:  # noqa: BLE001 - no compiler, unsupported platform, ...: eager instead
        _fused["failed"] = True
        warnings.warn(f"torch.compile is unavailable ({type(exc).__name__}); the bf16 sum over patches runs eagerly",
                      RuntimeWarning, stacklevel=3)
        return None


def sum_patches(act: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``act.sum(2)`` of (S, B, P, N) activations (``relu(act).sum(2)`` with ``relu``),
    accumulated in float32 for bf16 activations, else in their own dtype.

    float32 (float64): the plain sum; with ``relu`` the ReLU is applied to ``act`` in place.
    bfloat16: row blocks of about 2 MiB are converted to float32 into a small reused buffer
    (and ReLU'd there, leaving ``act`` untouched) and summed: ``sum(dtype=float32)`` of the
    whole tensor converts all of it first, and over the large preset's (S, B*P, N) buffer that
    copy, twice the buffer and out of cache, cost as much as a bf16 matrix multiply. Each output
    element is the same float32 sum over the same P terms either way. Large bf16 ReLU buffers
    (:data:`FUSE_MIN_ELEMENTS`) use one compiled kernel instead where torch.compile works
    (float32 accumulation in another order: ~1e-7 relative)."""
    S, B, P, N = act.shape
    if act.dtype != torch.bfloat16:
        return (act.clamp_min_(0) if relu else act).sum(2)
    if relu and act.numel() >= FUSE_MIN_ELEMENTS and (H := _fused_relu_sum(act)) is not None:
        return H
    rows = act.reshape(S * B, P, N)
    out = torch.empty(S * B, N, dtype=torch.float32, device=act.device)
    step = max(1, 2**19 // (P * N))
    tmp = torch.empty(min(step, S * B), P, N, dtype=torch.float32, device=act.device)
    for i in range(0, S * B, step):
        t = tmp[: min(step, S * B - i)].copy_(rows[i : i + step])
        torch.sum(t.clamp_min_(0) if relu else t, 1, out=out[i : i + step])
    return out.view(S, B, N)


def relu_backward_(act: torch.Tensor, dH: torch.Tensor) -> torch.Tensor:
    """dL/dpre = 1[act > 0] * dH, written over ``act`` (S, B, P, N) in one pass; ``dH`` is
    (S, B, N), broadcast over patches. ``act`` may hold the activations or the pre-activations
    (the same sign). Exactly ``act.sign_().mul_(dH)`` (two passes) up to the sign of zeros."""
    return torch.ops.aten.threshold_backward.grad_input(dH[:, :, None, :].expand_as(act), act, 0, grad_input=act)


class PatchCNN:
    """S independent two-layer patch CNNs with ``outputs`` classes and ``m`` neurons each.

    Parameters
    ----------
    S, outputs, d : sizes.
    cfg : SimModelConfig
    gens : one ``torch.Generator`` per seed, for the initialisation.
    """

    def __init__(self, S: int, outputs: int, d: int, cfg: SimModelConfig, gens: list[torch.Generator],
                 device: str | torch.device = "cpu"):
        self.cfg, self.S, self.outputs, self.d = cfg, S, outputs, d
        self.m = cfg.m
        self.N = outputs * cfg.m
        std = cfg.init_std if cfg.init_std is not None else 1 / math.sqrt(d)
        # each seed's init from its own generator, so a seed's model does not depend on S
        self.W = torch.stack([torch.randn(self.N, d, generator=g) * std for g in gens]).to(device)  # (S, N, d)
        self.a = torch.ones(S, outputs, cfg.m, device=device)  # (S, O, m), paper: frozen at 1
        self.bias = cfg.bias
        self.cdtype = torch.bfloat16 if cfg.precision == "bfloat16" else torch.float32  # matmul operands
        self._buffers: dict[str, torch.Tensor] = {}

    def _workspace(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer reused from step to step: a fresh (S, B*P, N) tensor every step costs page
        faults and a zero fill as large as the matrix multiply's output (tens of MB)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf

    def cast(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as a matmul operand (a no-op in float32; differentiable, so autograd's gradient
        of a float32 master weight comes back in float32)."""
        return t.to(self.cdtype) if self.cdtype == torch.bfloat16 and t.dtype != self.cdtype else t

    def _pre(self, x: torch.Tensor, W: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        S, B, P, d = x.shape
        pre = torch.bmm(self.cast(x).reshape(S, B * P, d), self.cast(W).transpose(1, 2), out=out)  # (S, B*P, N)
        if self.bias:
            pre.add_(self.bias)
        return pre

    def features(self, x: torch.Tensor, W: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neuron activations summed over patches.

        x : (S, B, P, d). Returns H (S, B, N) and act'(pre) (S, B, P, N) for the backward pass.
        """
        W = self.W if W is None else W
        S, B, P, d = x.shape
        act, grad = activation(self._pre(x, W), self.cfg)
        return sum_patches(act.view(S, B, P, -1)), grad.view(S, B, P, -1)

    def hidden(self, x: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """H (S, B, N) only (evaluation): no activation derivative is computed."""
        W = self.W if W is None else W
        S, B, P, d = x.shape
        pre = self._pre(x, W)
        if self.cfg.activation == "relu":
            return sum_patches(pre.view(S, B, P, -1), relu=True)
        return sum_patches(activation(pre, self.cfg)[0].view(S, B, P, -1))

    def logits_from_features(self, H: torch.Tensor) -> torch.Tensor:
        S, B, _ = H.shape
        return (H.view(S, B, self.outputs, self.m) * self.a[:, None]).sum(-1)  # (S, B, O)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.hidden(x))

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float, weight_decay: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on mean cross-entropy per seed. x (S, B, P, d), y (S, B).

        ``weight_decay`` adds ``weight_decay * p`` to the gradient of every trained parameter
        ``p`` (W, and a when the second layer is trained), as ``torch.optim.SGD`` does.

        Returns per-seed loss (S,) and accuracy (S,) on this batch, before the update.

        For ReLU the whole step works in one reused (S, B*P, N) buffer: pre-activation, then
        (float32) activation in place, then dL/dpre = 1[pre > 0] * dH in place, in one pass.
        So apart from the two matrix multiplies the step passes over it twice (float32) or
        once (bf16, whose ReLU and sum over patches run blockwise in cache) and reads it once
        for the sum over patches, and allocates nothing of that size.
        """
        S, B, P, d = x.shape
        N = self.N
        x = self.cast(x)  # the caller can pass bf16 batches (see train.pretrain) and save this copy
        x2 = x.reshape(S, B * P, d)
        relu = self.cfg.activation == "relu"
        if relu:
            pre = self._pre(x, self.W, out=self._workspace("pre", (S, B * P, N), x))
            act = pre.view(S, B, P, N)  # ReLU'd in place in float32; left as is in bf16
            H = sum_patches(act, relu=True)  # (S, B, N)
        else:
            H, dact = self.features(x)
        logits = self.logits_from_features(H)  # (S, B, O)
        logp = torch.log_softmax(logits, -1)
        loss = -logp.gather(-1, y[..., None]).squeeze(-1).mean(1)
        acc = (logits.argmax(-1) == y).float().mean(1)
        g = logp.exp()
        g.scatter_add_(-1, y[..., None], torch.full_like(g[..., :1], -1.0))
        g /= B  # dL/dlogits (S, B, O)
        dH = self.cast((g[..., None] * self.a[:, None]).reshape(S, B, N))  # (S, B, N)
        if relu:
            dpre = relu_backward_(act, dH)  # (S, B, P, N), in the buffer
        else:
            dpre = dact.mul_(dH[:, :, None, :])  # (S, B, P, N)
        dW = torch.bmm(dpre.view(S, B * P, N).transpose(1, 2), x2, out=self._workspace("dW", (S, N, d), x))  # (S, N, d)
        if dW.dtype != self.W.dtype and weight_decay:
            dW = dW.float()  # the decay term is added in float32
        if self.cfg.train_second_layer:
            da = (g[..., None] * H.view(S, B, self.outputs, self.m)).sum(1)
            if weight_decay:  # decays every trained parameter, as SGD's weight_decay does
                da.add_(self.a, alpha=weight_decay)
            self.a -= lr * da
        if weight_decay:
            dW.add_(self.W, alpha=weight_decay)
        self.W.add_(dW, alpha=-lr)
        return loss, acc
