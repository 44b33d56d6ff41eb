"""The two-layer convolutional network of the theory, for S seeds at once.

    F_o(X) = sum_r a_{o,r} * sum_p act(<w_{o,r}, x_p> + b)

One weight tensor ``W`` of shape (S, N, d) holds the N = outputs*m neurons of S independent
models, so that several seeds train as one batched matrix multiply (their losses are summed,
their gradients stay independent). Forward and backward are written by hand: the network is
two matrix multiplies and an elementwise activation, and the hand-written backward skips
autograd's bookkeeping and the gradient with respect to the inputs, which is never needed.
"""

from __future__ import annotations

import math

import torch

from granularity.theory.config import ModelConfig


def activation(pre: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
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


class PatchCNN:
    """S independent two-layer patch CNNs with ``outputs`` classes and ``m`` neurons each.

    Parameters
    ----------
    S, outputs, d : sizes.
    cfg : ModelConfig
    gens : one ``torch.Generator`` per seed, for the initialisation.
    """

    def __init__(self, S: int, outputs: int, d: int, cfg: ModelConfig, gens: list[torch.Generator],
                 device: str | torch.device = "cpu"):
        self.cfg, self.S, self.outputs, self.d = cfg, S, outputs, d
        self.m = cfg.m
        self.N = outputs * cfg.m
        std = cfg.init_std if cfg.init_std is not None else 1 / math.sqrt(d)
        # each seed's init from its own generator, so a seed's model does not depend on S
        self.W = torch.stack([torch.randn(self.N, d, generator=g) * std for g in gens]).to(device)  # (S, N, d)
        self.a = torch.ones(S, outputs, cfg.m, device=device)  # (S, O, m), paper: frozen at 1
        self.bias = cfg.bias

    def features(self, x: torch.Tensor, W: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neuron activations summed over patches.

        x : (S, B, P, d). Returns H (S, B, N) and act'(pre) (S, B, P, N) for the backward pass.
        """
        W = self.W if W is None else W
        S, B, P, d = x.shape
        pre = torch.bmm(x.reshape(S, B * P, d), W.transpose(1, 2))  # (S, B*P, N)
        if self.bias:
            pre = pre + self.bias
        act, grad = activation(pre, self.cfg)
        return act.view(S, B, P, -1).sum(2), grad.view(S, B, P, -1)

    def logits_from_features(self, H: torch.Tensor) -> torch.Tensor:
        S, B, _ = H.shape
        return (H.view(S, B, self.outputs, self.m) * self.a[:, None]).sum(-1)  # (S, B, O)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x)[0])

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float, weight_decay: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on mean cross-entropy per seed. x (S, B, P, d), y (S, B).

        Returns per-seed loss (S,) and accuracy (S,) on this batch, before the update.
        """
        S, B, P, d = x.shape
        H, dact = self.features(x)
        logits = self.logits_from_features(H)  # (S, B, O)
        logp = torch.log_softmax(logits, -1)
        loss = -logp.gather(-1, y[..., None]).squeeze(-1).mean(1)
        acc = (logits.argmax(-1) == y).float().mean(1)
        g = logp.exp()
        g.scatter_add_(-1, y[..., None], torch.full_like(g[..., :1], -1.0))
        g /= B  # dL/dlogits (S, B, O)
        dH = (g[..., None] * self.a[:, None]).reshape(S, B, self.N)  # (S, B, N)
        dpre = dact * dH[:, :, None, :]  # (S, B, P, N)
        dW = torch.bmm(dpre.reshape(S, B * P, self.N).transpose(1, 2), x.reshape(S, B * P, d))  # (S, N, d)
        if self.cfg.train_second_layer:
            da = (g[..., None] * H.view(S, B, self.outputs, self.m)).sum(1)
            self.a -= lr * da
        if weight_decay:
            dW += weight_decay * self.W
        self.W -= lr * dW
        return loss, acc
