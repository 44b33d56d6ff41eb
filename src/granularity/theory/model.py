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


def _acc(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of a sum over patches: float32 for bf16 activations, else their own."""
    return torch.float32 if t.dtype == torch.bfloat16 else t.dtype


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
        return act.view(S, B, P, -1).sum(2, dtype=_acc(act)), grad.view(S, B, P, -1)

    def hidden(self, x: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """H (S, B, N) only (evaluation): no activation derivative is computed."""
        W = self.W if W is None else W
        S, B, P, d = x.shape
        pre = self._pre(x, W)
        act = pre.clamp_min_(0) if self.cfg.activation == "relu" else activation(pre, self.cfg)[0]
        return act.view(S, B, P, -1).sum(2, dtype=_acc(act))

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
        activation (in place), then act' = 1[pre > 0] = sign(act) (in place), then dL/dpre (in
        place). So apart from the two matrix multiplies the step makes three passes over it and
        allocates nothing of that size.
        """
        S, B, P, d = x.shape
        N = self.N
        x = self.cast(x)  # the caller can pass bf16 batches (see train.pretrain) and save this copy
        x2 = x.reshape(S, B * P, d)
        relu = self.cfg.activation == "relu"
        if relu:
            pre = self._pre(x, self.W, out=self._workspace("pre", (S, B * P, N), x))
            act = pre.clamp_min_(0)
            H = act.view(S, B, P, N).sum(2, dtype=_acc(act))  # (S, B, N)
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
            dpre = act.sign_().view(S, B, P, N).mul_(dH[:, :, None, :])  # (S, B, P, N), in the buffer
        else:
            dpre = dact.mul_(dH[:, :, None, :])  # (S, B, P, N)
        dW = torch.bmm(dpre.view(S, B * P, N).transpose(1, 2), x2, out=self._workspace("dW", (S, N, d), x))  # (S, N, d)
        if dW.dtype != self.W.dtype:
            dW = dW.float()  # the float32 master weights take a float32 update
        if self.cfg.train_second_layer:
            da = (g[..., None] * H.view(S, B, self.outputs, self.m)).sum(1)
            if weight_decay:  # decays every trained parameter, as SGD's weight_decay does
                da.add_(self.a, alpha=weight_decay)
            self.a -= lr * da
        if weight_decay:
            dW.add_(self.W, alpha=weight_decay)
        self.W.add_(dW, alpha=-lr)
        return loss, acc
