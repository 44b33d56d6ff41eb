"""The hand-written forward/backward of the batched patch CNN against autograd."""

import pytest
import torch

from granularity.theory.config import SimModelConfig as ModelConfig
from granularity.theory.data import generator
from granularity.theory.model import PatchCNN, activation


def autograd_step(W, a, x, y, cfg, bias=0.0):
    W = W.clone().requires_grad_(True)
    a = a.clone().requires_grad_(True)
    S, B, P, d = x.shape
    pre = torch.einsum("sbpd,snd->sbpn", x, W) + bias
    act, _ = activation(pre, cfg)
    H = act.sum(2)
    logits = (H.view(S, B, a.shape[1], a.shape[2]) * a[:, None]).sum(-1)
    loss = torch.nn.functional.cross_entropy(logits.reshape(S * B, -1), y.reshape(-1), reduction="none")
    loss.view(S, B).mean(1).sum().backward()
    return W.grad, a.grad


@pytest.mark.parametrize("act", ["relu", "smooth_relu"])
@pytest.mark.parametrize("train_a", [False, True])
def test_manual_gradient_matches_autograd(act, train_a):
    cfg = ModelConfig(m=3, activation=act, rho=0.2, bias=-0.05, train_second_layer=train_a)
    S, O, d, B, P = 2, 4, 16, 5, 6
    model = PatchCNN(S, O, d, cfg, [generator(i) for i in range(S)])
    model.W = model.W.double() * 5
    model.a = (model.a + 0.1 * torch.randn(model.a.shape)).double()
    x = torch.randn(S, B, P, d, dtype=torch.float64)
    y = torch.randint(O, (S, B))
    gW, ga = autograd_step(model.W, model.a, x, y, cfg, bias=cfg.bias)
    W0, a0 = model.W.clone(), model.a.clone()
    model.step(x, y, lr=1.0)
    assert torch.allclose(W0 - model.W, gW, atol=1e-10)
    if train_a:
        assert torch.allclose(a0 - model.a, ga, atol=1e-10)
    else:
        assert torch.equal(a0, model.a)


def test_seeds_are_independent_in_a_batch():
    """A seed's update does not depend on the other seeds trained beside it."""
    cfg = ModelConfig(m=4)
    x = torch.randn(3, 8, 4, 10)
    y = torch.randint(2, (3, 8))
    big = PatchCNN(3, 2, 10, cfg, [generator(i) for i in range(3)])
    one = PatchCNN(1, 2, 10, cfg, [generator(1)])
    assert torch.equal(big.W[1:2], one.W)
    for _ in range(5):
        big.step(x, y, 0.5)
        one.step(x[1:2], y[1:2], 0.5)
    assert torch.allclose(big.W[1:2], one.W, atol=1e-6)


def test_smooth_relu_shape():
    cfg = ModelConfig(activation="smooth_relu", q=2, rho=0.5)
    z = torch.tensor([-1.0, 0.0, 0.25, 0.5, 1.0])
    act, grad = activation(z, cfg)
    assert torch.allclose(act, torch.tensor([0.0, 0.0, 0.0625, 0.25, 0.75]))
    assert torch.allclose(grad, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


@pytest.mark.parametrize("train_a", [False, True])
def test_weight_decay_matches_autograd_sgd(train_a):
    """Several steps with weight decay against torch.optim.SGD over the trainable parameters."""
    cfg = ModelConfig(m=3, bias=-0.05, train_second_layer=train_a)
    S, O, d, B, P = 2, 3, 12, 5, 4
    model = PatchCNN(S, O, d, cfg, [generator(i) for i in range(S)])
    model.W = model.W.double() * 5
    model.a = (model.a + 0.1 * torch.randn(model.a.shape, generator=generator(9))).double()
    W = model.W.clone().requires_grad_(True)
    a = model.a.clone().requires_grad_(train_a)
    opt = torch.optim.SGD([W, a] if train_a else [W], lr=0.3, weight_decay=0.2)
    g = generator(11)
    for _ in range(4):
        x = torch.randn(S, B, P, d, generator=g, dtype=torch.float64)
        y = torch.randint(O, (S, B), generator=g)
        opt.zero_grad()
        pre = torch.einsum("sbpd,snd->sbpn", x, W) + cfg.bias
        logits = (torch.relu(pre).sum(2).view(S, B, O, cfg.m) * a[:, None]).sum(-1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(S * B, O), y.reshape(-1), reduction="none")
        loss.view(S, B).mean(1).sum().backward()
        opt.step()
        model.step(x, y, lr=0.3, weight_decay=0.2)
    assert torch.allclose(model.W, W.detach(), atol=1e-10)
    assert torch.allclose(model.a, a.detach(), atol=1e-10)
