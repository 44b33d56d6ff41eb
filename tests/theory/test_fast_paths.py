"""The simulator's fast paths against plain reference computations: the hand-written
fine-tuning step against full autograd (bit-identical in float32), the blockwise bf16 sum over
patches, the one-pass ReLU backward, and evaluation's shared frozen features."""

import math

import pytest
import torch

from granularity.theory.config import SimConfig
from granularity.theory.model import relu_backward_, sum_patches
from granularity.theory.presets import get_preset
from granularity.theory.train import (
    _HEAD,
    Gather,
    Head,
    SeedBatch,
    _batches,
    _head_loss,
    evaluate,
    finetune,
    linear_probe,
    pretrain,
)


def small_config(precision: str = "float32", **model) -> SimConfig:
    raw = get_preset("quick").config().to_dict()
    raw["model"].update(precision=precision, **model)
    raw["train"].update(steps=40, log_points=3)
    raw["transfer"].update(probe_steps=10, finetune_steps=25, n_test=100)
    raw.update(seeds=2, seed_batch=2)
    return SimConfig.build(raw)


def autograd_finetune(cfg: SimConfig, sb: SeedBatch, model, target: int) -> Head:
    """Fine-tuning as a peer would write it: the whole network under autograd, torch.optim.SGD."""
    X, Y = sb.x, sb.labels(target)
    S, O = len(sb.seeds), cfg.data.nodes_per_level[target - 1]
    W = model.W.clone().requires_grad_(True)
    w = torch.zeros(S, model.N, O, requires_grad=True)
    b = torch.zeros(S, O, requires_grad=True)
    opt = torch.optim.SGD([W, w, b], lr=cfg.transfer.finetune_lr)
    gather = Gather(model.cast(X), Y)
    for idx in _batches(cfg.train.n_train, cfg.train.batch_size, cfg.transfer.finetune_steps, sb.generators(_HEAD, target)):
        xb, yb = gather(idx)
        Sx, B, P, d = xb.shape
        pre = torch.bmm(model.cast(xb).reshape(Sx, B * P, d), model.cast(W).transpose(1, 2))
        if model.bias:
            pre = pre + model.bias
        act = torch.relu(pre)
        H = act.view(Sx, B, P, -1).sum(2, dtype=torch.float32)
        opt.zero_grad(set_to_none=True)
        _head_loss(torch.baddbmm(b[:, None, :], H, w), yb).backward()
        opt.step()
    return Head(W.detach(), w.detach(), b.detach())


@pytest.mark.parametrize("bias", [0.0, -0.02])
def test_finetune_by_hand_is_autograd_bit_for_bit_in_float32(bias):
    cfg = small_config(bias=bias)
    sb = SeedBatch.build(cfg, [0, 1], torch.device("cpu"))
    pre = pretrain(cfg, sb, cfg.data.levels)
    ours = finetune(cfg, sb, pre, 1)
    ref = autograd_finetune(cfg, sb, pre.model, 1)
    assert not torch.equal(ours.W, pre.model.W)  # it trained
    for name in ("W", "w", "b"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name


def test_finetune_by_hand_tracks_autograd_in_bf16():
    cfg = small_config("bfloat16")
    sb = SeedBatch.build(cfg, [0, 1], torch.device("cpu"))
    pre = pretrain(cfg, sb, cfg.data.levels)
    ours, ref = finetune(cfg, sb, pre, 1), autograd_finetune(cfg, sb, pre.model, 1)
    for name in ("W", "w"):
        a, r, start = getattr(ours, name), getattr(ref, name), pre.model.W if name == "W" else 0
        rel = float((a - r).norm() / (r - start).norm())  # difference relative to the change made
        assert rel < 0.05, (name, rel)  # measured ~1e-3: bf16 rounding of the same computation


def test_blockwise_bf16_patch_sum_is_the_plain_float32_sum():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(3, 37, 8, 300, generator=g).to(torch.bfloat16)  # rows not a multiple of the block
    plain = act.float().sum(2)
    assert torch.equal(sum_patches(act), plain)
    assert torch.equal(sum_patches(act, relu=True), act.float().clamp_min(0).sum(2))
    assert torch.equal(act, act.clone())  # (bf16: the input is left as it was)
    f32 = torch.randn(2, 5, 4, 6, generator=g)
    assert torch.equal(sum_patches(f32.clone(), relu=True), f32.clamp_min(0).sum(2))


def test_relu_backward_in_one_pass_is_mask_times_gradient():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        pre = torch.randn(2, 3, 4, 5, generator=g).to(dtype)
        dH = torch.randn(2, 3, 5, generator=g).to(dtype)
        want = (pre > 0).to(dtype) * dH[:, :, None, :]
        assert torch.equal(relu_backward_(pre.clone(), dH), want)
        assert torch.equal(relu_backward_(pre.clamp_min(0), dH), want)  # activations or pre-activations


def test_evaluation_shares_frozen_features_without_changing_results():
    cfg = small_config()
    sb = SeedBatch.build(cfg, [0, 1], torch.device("cpu"))
    models = {"fine": pretrain(cfg, sb, cfg.data.levels)}
    probe = linear_probe(cfg, sb, models["fine"], 1)
    shared = evaluate(cfg, sb, models, {("fine", "probe"): probe})
    # the same head on a copy of W: not recognised as the frozen features, computed again
    copy = Head(probe.W.clone(), probe.w, probe.b, probe.mean, probe.std)
    apart = evaluate(cfg, sb, models, {("fine", "probe"): copy})
    for key in shared:
        for kind in ("easy", "hard"):
            assert (shared[key][kind] == apart[key][kind]).all(), key
    assert math.isfinite(float(shared[("fine", "probe")]["hard"].sum()))


@pytest.mark.slow
def test_compiled_bf16_relu_sum_agrees_and_falls_back_with_one_warning(monkeypatch):
    from granularity.theory import model

    g = torch.Generator().manual_seed(2)
    act = torch.randn(2, 16, 8, 64, generator=g).to(torch.bfloat16)
    exact = act.float().clamp_min(0).sum(2)
    monkeypatch.setattr(model, "FUSE_MIN_ELEMENTS", 1)
    monkeypatch.setattr(model, "_fused", {"fn": None, "failed": False})
    fused = sum_patches(act, relu=True)
    assert not model._fused["failed"], "torch.compile failed on this machine"
    assert torch.allclose(fused, exact, rtol=1e-6, atol=1e-6)  # float32 sums in another order

    def broken(*a, **k):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(model, "_fused", {"fn": None, "failed": False})
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable") as rec:
        eager = sum_patches(act, relu=True)
        again = sum_patches(act, relu=True)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert torch.equal(eager, exact) and torch.equal(again, exact)


@pytest.mark.parametrize("S, n, N, O", [(5, 2000, 256, 2), (3, 300, 32, 4), (1, 64, 16, 3)])
def test_probe_gradients_are_autograds(S, n, N, O):
    """The probe's hand-made gradients (its thin products computed from the transposed side)
    against autograd of the plain ``baddbmm(b, Hn, w)`` loss, to rounding."""
    from granularity.theory.train import _probe_grads

    g = torch.Generator().manual_seed(S * n)
    Hn = torch.randn(S, n, N, generator=g)
    Y = torch.randint(0, O, (S, n), generator=g)
    w = (0.1 * torch.randn(S, N, O, generator=g)).requires_grad_(True)
    b = (0.1 * torch.randn(S, O, generator=g)).requires_grad_(True)
    _head_loss(torch.baddbmm(b[:, None, :], Hn, w), Y).backward()
    gw, gb = _probe_grads(Hn, Hn.transpose(1, 2).contiguous(), w, b, Y)
    assert gw.shape == w.shape and gb.shape == b.shape
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb, b.grad, rtol=1e-5, atol=1e-7)


def _reference_probe(H, Y, O, steps, lr):
    """The probe as plainly written: standardise, full-batch Adam on autograd's gradients."""
    mean, std = H.mean(1, keepdim=True), H.std(1, keepdim=True) + 1e-6
    Hn = (H - mean) / std
    S, _, N = H.shape
    w = torch.zeros(S, N, O, requires_grad=True)
    b = torch.zeros(S, O, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        _head_loss(torch.baddbmm(b[:, None, :], Hn, w), Y).backward()
        opt.step()
    return w.detach(), b.detach()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_linear_probe_against_the_plain_loop(precision):
    """float32: exactly the plain loop (stored results stay bit for bit); bf16 (fast gradients):
    the same head up to rounding."""
    cfg = small_config(precision)
    sb = SeedBatch.build(cfg, [0, 1], torch.device("cpu"))
    pre = pretrain(cfg, sb, 2)
    head = linear_probe(cfg, sb, pre, 1)
    with torch.no_grad():
        H = pre.model.hidden(sb.x)
    w, b = _reference_probe(H, sb.labels(1), cfg.data.nodes_per_level[0], cfg.transfer.probe_steps, cfg.transfer.probe_lr)
    if precision == "float32":
        assert torch.equal(head.w, w) and torch.equal(head.b, b)
    else:
        torch.testing.assert_close(head.w, w, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(head.b, b, rtol=1e-3, atol=1e-4)
