"""A straightforward implementation of the simulator experiment, written the way peer code
does it, for the speed comparison of figure 3 (``bench_whole``).

Same data (the project's generator, same seeds, so both see identical training and test
samples), same model, initialisation and hyper-parameters, same protocols; but: an
``nn.Conv1d`` patch network (kernel = stride = d over the flattened patches) as an
``nn.Module`` with autograd, ``torch.optim.SGD``, a ``DataLoader`` over a ``TensorDataset``,
one seed after another, the probe and fine-tuning done the plain way. Its numbers are not
expected to equal the simulator's bit for bit (other batch order), only within seed noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from granularity.theory.config import SimConfig
from granularity.theory.train import _INIT, SeedBatch
from granularity.utils.stats import mean_ci


class PatchConvNet(nn.Module):
    """Two-layer patch CNN: conv with kernel = stride = d, ReLU, sum over patches, frozen
    second layer of ones (sum over each class's m neurons)."""

    def __init__(self, d: int, P: int, outputs: int, m: int, bias: float = 0.0):
        super().__init__()
        self.d, self.P, self.outputs, self.m, self.bias = d, P, outputs, m, bias
        self.conv = nn.Conv1d(1, outputs * m, kernel_size=d, stride=d, bias=False)
        self.register_buffer("a", torch.ones(outputs, m))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        h = self.conv(x.reshape(B, 1, self.P * self.d))  # (B, N, P)
        return F.relu(h + self.bias).sum(2)  # (B, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H = self.features(x)
        return (H.view(-1, self.outputs, self.m) * self.a).sum(-1)


class FinetuneNet(nn.Module):
    def __init__(self, body: PatchConvNet, outputs: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.outputs * body.m, outputs)
        nn.init.zeros_(self.head.weight)  # the protocol's fresh (zero) head
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.body.features(x))


def _loop(loader: DataLoader, steps: int):
    done = 0
    while True:
        for batch in loader:
            yield batch
            done += 1
            if done == steps:
                return


def _train(model: nn.Module, params, x, y, lr: float, steps: int, batch: int | None, seed: int, wd: float = 0.0):
    loader = DataLoader(TensorDataset(x, y), batch_size=batch or len(y), shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(params, lr=lr, weight_decay=wd)
    model.train()
    for xb, yb in _loop(loader, steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()


@torch.no_grad()
def _predict(fn, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def run_seed(cfg: SimConfig, seed: int, device: torch.device | str = "cpu") -> dict[tuple[str, str], dict[str, float]]:
    """Every source and protocol for one seed; returns easy/hard target error per (src, proto)."""
    sb = SeedBatch.build(cfg, [seed], torch.device("cpu"))  # the same data as the simulator's
    device = torch.device(device)
    x = sb.train[0].x.to(device)
    dist = sb.dists[0]
    tree = dist.tree
    d, P, m = cfg.data.d, cfg.data.P, cfg.model.m
    target = cfg.transfer.target
    y_target = sb.train[0].label(target).to(device)
    tests = {}
    for hard in (False, True):
        chunks = list(sb.test_stream(cfg.transfer.n_test, hard))
        tests["hard" if hard else "easy"] = (torch.cat([c[0][0] for c in chunks]).to(device),
                                               torch.cat([c[1][0] for c in chunks]).to(device))
    errors: dict[tuple[str, str], dict[str, float]] = {}
    sources = {str(s): cfg.source_level(s) for s in cfg.transfer.sources}
    for src, level in sources.items():
        outputs = cfg.data.nodes_per_level[level - 1]
        net = PatchConvNet(d, P, outputs, m, cfg.model.bias).to(device)
        std = cfg.model.init_std or 1 / np.sqrt(d)
        W0 = torch.randn(net.conv.out_channels, d, generator=sb.generators(_INIT, level)[0]) * std
        with torch.no_grad():
            net.conv.weight.copy_(W0.view(-1, 1, d))
        _train(net, net.parameters(), x, sb.train[0].label(level).to(device), cfg.train.lr, cfg.train.steps,
               cfg.train.batch_size, seed * 1000 + level, cfg.train.weight_decay)
        net.eval()
        anc = tree.ancestor_map(level, target).to(device)

        def err(pred_fn):
            return {k: float((pred_fn(xt) != yt[:, target - 1]).float().mean()) for k, (xt, yt) in tests.items()}

        if "map" in cfg.transfer.protocols:
            errors[(src, "map")] = err(lambda xt: anc[_predict(net, xt).argmax(1)])
        O = cfg.data.nodes_per_level[target - 1]
        if "probe" in cfg.transfer.protocols:
            for p in net.parameters():
                p.requires_grad_(False)
            H = _predict(net.features, x)
            mean, sd = H.mean(0), H.std(0) + 1e-6
            head = nn.Linear(H.shape[1], O).to(device)
            nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
            opt = torch.optim.Adam(head.parameters(), lr=cfg.transfer.probe_lr)
            Hn = (H - mean) / sd
            for _ in range(cfg.transfer.probe_steps):
                opt.zero_grad()
                F.cross_entropy(head(Hn), y_target).backward()
                opt.step()
            errors[(src, "probe")] = err(lambda xt: _predict(lambda b: head((net.features(b) - mean) / sd), xt).argmax(1))
            for p in net.parameters():
                p.requires_grad_(True)
        if "finetune" in cfg.transfer.protocols:
            body = PatchConvNet(d, P, outputs, m, cfg.model.bias).to(device)
            body.load_state_dict(net.state_dict())
            ft = FinetuneNet(body, O).to(device)
            _train(ft, ft.parameters(), x, y_target, cfg.transfer.finetune_lr, cfg.transfer.finetune_steps,
                   cfg.train.batch_size, seed * 1000 + 500 + target)
            ft.eval()
            errors[(src, "finetune")] = err(lambda xt: _predict(ft, xt).argmax(1))
    return errors


def run_experiment(cfg: SimConfig, device: torch.device | str = "cpu") -> dict[str, Any]:
    """All seeds, one after another; returns ``{"errors": {src: {proto: {easy, hard}}}}`` with
    mean and 95% CI over seeds, as the simulator's ``result.json``."""
    per_seed = [run_seed(cfg, s, device) for s in range(cfg.seed0, cfg.seed0 + cfg.seeds)]
    table: dict[str, Any] = {}
    for (src, proto) in per_seed[0]:
        for kind in ("easy", "hard"):
            vals = [e[(src, proto)][kind] for e in per_seed]
            table.setdefault(src, {}).setdefault(proto, {})[kind] = {**mean_ci(vals), "values": vals}
    return {"errors": table}
