"""The per-step RNG fork is skipped only for models whose forward draws nothing, and skipping it
changes no number."""

import copy

import pytest
import torch
from torch import nn

from granularity.engine import train as T
from granularity.engine.config import StageConfig
from granularity.models import create_model


class Noisy(nn.Module):  # a user's module whose own forward draws
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


class Subclassed(nn.Linear):  # a subclass of a known type may override forward: not trusted
    pass


@pytest.mark.parametrize("name, options, shape, random", [
    ("cnn", {"width": 4}, (1, 8, 8), False),
    ("resnet18", {"width": 4}, (3, 8, 8), False),
    ("vit", {"dim": 8, "depth": 1, "heads": 2}, (1, 8, 8), False),
    ("mlp", {}, (1, 8, 8), False),
    ("mlp", {"dropout": 0.2}, (1, 8, 8), True),
])
def test_registered_models(name, options, shape, random):
    assert T.draws_random(create_model(name, shape, 4, **options)) is random


@pytest.mark.parametrize("module, random", [
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), False),
    (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0)), False),
    (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), True),
    (nn.Sequential(nn.Linear(4, 4), Noisy()), True),
    (Subclassed(4, 4), True),
    (nn.MultiheadAttention(4, 2), False),
    (nn.MultiheadAttention(4, 2, dropout=0.1), True),
])
def test_unknown_or_random_modules_are_seeded(module, random):
    assert T.draws_random(module) is random


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 255, (64, 1, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 4, (64,), generator=g)


def _epoch(model):
    """One epoch of ``model`` on fixed data; returns its metrics and a draw of the global RNG
    made after it (which shows whether the epoch left the global RNG as it found it)."""
    x, y = _data()
    stage = StageConfig(epochs=1, batch_size=16, lr=0.05)
    opt = T.make_optimizer(model.parameters(), stage)
    sched = T.make_scheduler(opt, stage, 4)
    out = T.train_epoch(model, x, y, T.Normaliser(x), stage, opt, sched, torch.Generator().manual_seed(5), torch.device("cpu"))
    return out, torch.rand(3)


def test_skipping_the_fork_changes_nothing(monkeypatch):
    torch.manual_seed(0)
    base = create_model("cnn", (1, 8, 8), 4, width=4)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(123)
    out_a, rng_a = _epoch(a)  # deterministic model: no fork
    monkeypatch.setattr(T, "draws_random", lambda m: True)
    torch.manual_seed(123)
    out_b, rng_b = _epoch(b)  # forced through the seeded path
    assert out_a == out_b and torch.equal(rng_a, rng_b)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_dropout_model_is_still_seeded_per_step():
    """A dropout model's epoch does not depend on the global RNG state before it."""
    torch.manual_seed(0)
    base = create_model("mlp", (1, 8, 8), 4, dropout=0.3)
    outs = []
    for pre in (1, 2):
        torch.manual_seed(pre)
        outs.append(_epoch(copy.deepcopy(base))[0])
    assert outs[0] == outs[1]
