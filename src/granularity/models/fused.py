"""K independent copies of one architecture run as one model (horizontal fusion, as in HFTA).

A :class:`FusedModel` is built from K solo models (:func:`fuse`) and keeps them: their
parameters stay the leaves that autograd and each run's own optimiser update, so a fused run's
state dict, optimiser state and checkpoint are exactly a solo run's, and :meth:`~FusedModel.
split_state_dicts` gives them back. A forward pass concatenates the K weights of a layer and
runs one grouped convolution (``groups=K``) or one batched matmul (``baddbmm``) over the K
batches; BatchNorm runs over the K*C channels, which is each run's own per-channel statistics
(the K running buffers are one tensor, and each solo module's buffers are views of it, so they
are always current). Heads of different sizes are padded to the largest; the padded logits are
``-inf``, so softmax, loss, gradients and argmax are each run's own.

Inputs are ``(K, B, *input_shape)`` (run k's batch at ``x[k]``); logits ``(K, B, max classes)``.
Inside, conv/BatchNorm activations are "packed" ``(B, K*C, ...)`` and linear ones ``(K, B, D)``.

Supported: :class:`~granularity.models.cnn.SmallCNN`, :class:`~granularity.models.mlp.MLP`,
:class:`~granularity.models.resnet.ResNet` (ResNet-18) and a bare ``nn.Linear`` head (a linear
probe on features): convolutions without groups, BatchNorm with running statistics and a
momentum, ReLU, max pooling, Linear, Dropout with its draws from per-run generators, residual
blocks. :func:`fuse_reason` says why other models are not fused (their runs then train alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from granularity.models.cnn import SmallCNN
from granularity.models.mlp import MLP
from granularity.models.resnet import BasicBlock, ResNet

# the solo classes with a fused form: their input kind and the submodules their features run through
_KINDS: dict[type, tuple[str, tuple[str, ...]]] = {SmallCNN: ("image", ("features",)), MLP: ("flat", ("features",)),
                                                    ResNet: ("image", ("stem", "layers")),
                                                    nn.Linear: ("flat", ())}  # a head alone (a linear probe)


def _head(model: nn.Module) -> nn.Linear:
    return model if type(model) is nn.Linear else model.head
_ELEMENTWISE = (nn.ReLU, nn.Identity)
# the activation layout each layer type runs in: True packed (B, K*C, ...), False per run (K, B, D)
_LAYOUT: dict[type, bool] = {nn.Conv2d: True, nn.BatchNorm1d: True, nn.BatchNorm2d: True, nn.MaxPool2d: True,
                             nn.Linear: False, nn.Dropout: False}


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules (path, module) of the model's feature submodules, in forward order."""
    return [(f"{root}.{name}" if name else root, m) for root in _KINDS[type(model)][1]
            for name, m in model.get_submodule(root).named_modules() if not list(m.children())
            and not (type(m) is nn.Sequential)]


def _layer_reason(m: nn.Module) -> str | None:
    """Why one layer has no fused form (None: it has one)."""
    if type(m) not in _LAYOUT and type(m) not in _ELEMENTWISE:
        return f"layer {type(m).__name__} has no fused form"
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            return "a convolution with groups, a padding mode or string padding"
        return None
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if not m.track_running_stats or m.momentum is None:
            return "a BatchNorm without running statistics or with a cumulative average (momentum None)"
    return None


def _signature(model: nn.Module) -> list[tuple]:
    """Everything that must agree between fused runs: layer types, settings and shapes."""
    sig = []
    for _, m in _layers(model):
        shapes = tuple((n, tuple(p.shape), p.dtype, p.device, p.is_contiguous(memory_format=torch.channels_last)
                        if p.ndim == 4 else True) for n, p in m.named_parameters())
        sig.append((type(m), shapes, repr(m)))
    return sig


def fuse_reason(models: Sequence[nn.Module]) -> str | None:
    """Why ``models`` cannot run as one :class:`FusedModel` (None when they can)."""
    if not models:
        return "no models"
    kind = type(models[0])
    if kind not in _KINDS:
        return f"model {kind.__name__} has no fused form (fused: {', '.join(k.__name__ for k in _KINDS)})"
    for _, m in _layers(models[0]):
        why = _layer_reason(m)
        if why is not None:
            return why
    sig = _signature(models[0])
    head = _head(models[0])
    for m in models[1:]:
        if type(m) is not kind or _signature(m) != sig:
            return "the models differ in architecture, dtype, device or memory layout"
        if _head(m).in_features != head.in_features or (_head(m).bias is None) != (head.bias is None):
            return "the heads differ in input features or bias"
    if any(m.training != models[0].training for m in models):
        return "the models differ in train/eval mode"
    return None


class _FusedBN:
    """The K BatchNorm layers at one depth as one over K*C channels; the solo buffers become
    views of the fused ones (so each solo state dict stays current)."""

    def __init__(self, mods: list[nn.modules.batchnorm._BatchNorm]) -> None:
        self.mods, c = mods, mods[0].num_features
        self.mean = torch.cat([m.running_mean for m in mods])
        self.var = torch.cat([m.running_var for m in mods])
        self.count = torch.stack([m.num_batches_tracked for m in mods])  # (K,)
        for k, m in enumerate(mods):
            m._buffers["running_mean"] = self.mean[k * c : (k + 1) * c]
            m._buffers["running_var"] = self.var[k * c : (k + 1) * c]
            m._buffers["num_batches_tracked"] = self.count[k]

    def release(self) -> None:
        """Give every solo module buffers of its own again (after which this object is stale)."""
        for m in self.mods:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                m._buffers[name] = m._buffers[name].clone()

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:  # packed (B, K*C, ...)
        m0 = self.mods[0]
        w = torch.cat([m.weight for m in self.mods]) if m0.affine else None
        b = torch.cat([m.bias for m in self.mods]) if m0.affine else None
        if training:
            self.count.add_(1)
        return F.batch_norm(x, self.mean, self.var, w, b, training, m0.momentum, m0.eps)


class FusedModel(nn.Module):
    """K solo models of one architecture as one model; see the module docstring.

    Build with :func:`fuse` once the solo models are on their device and in their memory layout
    (moving a FusedModel would break the buffer views: move the solo models, then fuse again).
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        why = fuse_reason(models)
        if why is not None:
            raise ValueError(f"cannot fuse these models: {why}")
        super().__init__()
        self.members = nn.ModuleList(models)
        self.k = len(models)
        self.kind, self._roots = _KINDS[type(models[0])]
        self.training = models[0].training
        self._bns = {path: _FusedBN([m.get_submodule(path) for m in models]) for path, m0 in _layers(models[0])
                     if isinstance(m0, nn.modules.batchnorm._BatchNorm)}
        self.num_classes = [int(_head(m).out_features) for m in models]
        n_max = max(self.num_classes)
        dev = _head(models[0]).weight.device
        valid = torch.arange(n_max, device=dev)[None, :] < torch.tensor(self.num_classes, device=dev)[:, None]
        self.register_buffer("valid", valid, persistent=False)  # (K, n_max): real classes of each head
        self.padded = bool((~valid).any())
        self.channels_last = any(p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last)
                                 and not p.is_contiguous() for p in models[0].parameters())

    # ---- state ----------------------------------------------------------------------------
    def split_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each run's own state dict (independent copies, as a solo model would save)."""
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.members]

    def release(self) -> list[nn.Module]:
        """The solo models, with buffers of their own again; this FusedModel is unusable after."""
        for bn in self._bns.values():
            bn.release()
        self._bns = {}
        return list(self.members)

    def train(self, mode: bool = True) -> FusedModel:
        super().train(mode)  # the members too
        return self

    # ---- forward --------------------------------------------------------------------------
    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``(K, B, C, H, W)`` run batches -> packed ``(B, K*C, H, W)`` (channels-last when the
        solo models are); ``(K, B, ...)`` tables -> ``(K, B, D)``."""
        if self.kind == "flat":
            return x.flatten(2)
        k, b, c, h, w = x.shape
        if self.channels_last:  # memory (B, H, W, K, C) = channels-last (B, K*C, H, W)
            return x.permute(1, 3, 4, 0, 2).reshape(b, h, w, k * c).permute(0, 3, 1, 2)
        return x.transpose(0, 1).reshape(b, k * c, h, w)

    def forward_features(self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """``(K, B, *input_shape)`` -> features ``(K, B, F)``. ``generators``: one per run, for
        its dropout draws (a solo run draws them from torch's global generator in the same order
        and shapes, so a run seeded alike draws alike); None: torch's global generator."""
        z, packed = self.pack(x), self.kind == "image"
        for root in self._roots:
            z, packed = self._apply(root, [m.get_submodule(root) for m in self.members], z, packed, generators)
        if self.kind == "image":
            z = z.mean(dim=(2, 3))  # (B, K*C, H, W) -> (B, K*C)
        return _to_runs(z, self.k) if packed else z  # (K, B, F)

    def _apply(self, path: str, mods: list[nn.Module], z: torch.Tensor, packed: bool, generators):
        """The K solo modules at ``path`` applied to ``z`` as one; returns the output and its layout."""
        m0 = mods[0]
        if type(m0) is nn.Sequential:
            for name in m0._modules:
                z, packed = self._apply(f"{path}.{name}", [m._modules[name] for m in mods], z, packed, generators)
            return z, packed
        if type(m0) is BasicBlock:  # relu(bn2(conv2(relu(bn1(conv1(x))))) + short(x)), all packed
            x = z if packed else _to_packed(z)
            out = x
            for name in ("conv1", "bn1", "relu", "conv2", "bn2"):
                out = F.relu(out) if name == "relu" else self._apply(f"{path}.{name}", [m._modules[name] for m in mods],
                                                                      out, True, generators)[0]
            short = self._apply(f"{path}.short", [m.short for m in mods], x, True, generators)[0]
            return F.relu(out + short), True
        want = _LAYOUT.get(type(m0), packed)  # elementwise layers run in either layout
        if want and not packed:
            z = _to_packed(z)
        elif packed and not want:
            z = _to_runs(z, self.k)
        return self._layer(path, mods, z, generators), want

    def _layer(self, path: str, mods, z: torch.Tensor, generators) -> torch.Tensor:
        m0 = mods[0]
        if isinstance(m0, nn.Conv2d):  # packed (B, K*C_in, H, W) -> (B, K*C_out, H', W')
            w = torch.cat([m.weight for m in mods])  # (K*C_out, C_in, kh, kw)
            b = torch.cat([m.bias for m in mods]) if m0.bias is not None else None
            return F.conv2d(z, w, b, m0.stride, m0.padding, m0.dilation, self.k)
        if path in self._bns:
            return self._bns[path](z, self.training)
        if isinstance(m0, nn.Linear):  # (K, B, D_in) -> (K, B, D_out)
            w = torch.stack([m.weight for m in mods]).transpose(1, 2)  # (K, D_in, D_out)
            if m0.bias is None:
                return torch.bmm(z, w)
            return torch.baddbmm(torch.stack([m.bias for m in mods])[:, None, :], z, w)
        if isinstance(m0, nn.Dropout):  # (K, B, D)
            return _dropout(z, m0.p, self.training, generators)
        if isinstance(m0, nn.MaxPool2d):
            return F.max_pool2d(z, m0.kernel_size, m0.stride, m0.padding, m0.dilation, m0.ceil_mode)
        return m0(z)  # elementwise (ReLU, Identity): the same for every run

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``(K, B, F)`` -> logits ``(K, B, max classes)``, ``-inf`` beyond each run's classes."""
        n_max = self.valid.shape[1]
        heads = [_head(m) for m in self.members]
        w = torch.stack([F.pad(h.weight, (0, 0, 0, n_max - h.out_features)) for h in heads])  # (K, n_max, F)
        if heads[0].bias is None:
            z = torch.bmm(feats, w.transpose(1, 2))
        else:
            b = torch.stack([F.pad(h.bias, (0, n_max - h.out_features)) for h in heads])  # (K, n_max)
            z = torch.baddbmm(b[:, None, :], feats, w.transpose(1, 2))
        return z.masked_fill(~self.valid[:, None, :], float("-inf")) if self.padded else z

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, generators))


def _to_packed(z: torch.Tensor) -> torch.Tensor:  # (K, B, D) -> (B, K*D)
    k, b, d = z.shape
    return z.transpose(0, 1).reshape(b, k * d)


def _to_runs(z: torch.Tensor, k: int) -> torch.Tensor:  # (B, K*D) -> (K, B, D)
    return z.reshape(z.shape[0], k, -1).transpose(0, 1)


def _dropout(z: torch.Tensor, p: float, training: bool, generators) -> torch.Tensor:
    """Dropout with run k's mask drawn from ``generators[k]`` in the solo run's shape and dtype
    (ATen's CPU dropout: ``bernoulli_(1 - p)`` on an empty tensor like the input, then
    ``/ (1 - p)``), so a run draws the mask it would draw alone."""
    if not training or p == 0:
        return z
    if generators is None:
        return F.dropout(z, p, True)
    noise = torch.stack([torch.empty_like(z[k]).bernoulli_(1 - p, generator=g).div_(1 - p)
                         for k, g in enumerate(generators)])  # (K, B, D)
    return z * noise


def fuse(models: Sequence[nn.Module]) -> FusedModel:
    """One :class:`FusedModel` of ``models`` (same architecture; heads may differ in size).
    Raises ``ValueError`` with :func:`fuse_reason`'s reason when they cannot be fused."""
    return FusedModel(models)


def fuse_state_dicts(build, state_dicts: Sequence[dict[str, torch.Tensor]]) -> FusedModel:
    """A :class:`FusedModel` whose run k starts from ``state_dicts[k]``; ``build(k)`` returns a
    solo model of run k's architecture and head size to load it into (on its device, in its
    memory layout)."""
    models = []
    for k, sd in enumerate(state_dicts):
        m = build(k)
        m.load_state_dict(sd)
        models.append(m)
    return FusedModel(models)
