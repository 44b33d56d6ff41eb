"""The fused model (granularity.models.fused): K solo models as one, outputs and state equal."""

from __future__ import annotations

import copy

import pytest
import torch

from granularity.models import create_model
from granularity.models.fused import FusedModel, fuse, fuse_reason, fuse_state_dicts

SHAPE = (1, 12, 12)
KINDS = {"cnn": {"width": 4}, "mlp": {"hidden": 16, "depth": 2}, "resnet18": {"width": 2}}


def _solos(name: str, classes: list[int], channels_last: bool = False, **kw) -> list[torch.nn.Module]:
    out = []
    for seed, n in enumerate(classes):
        torch.manual_seed(seed)
        m = create_model(name, SHAPE, n, **{**KINDS[name], **kw})
        out.append(m.to(memory_format=torch.channels_last) if channels_last else m)
    return out


@pytest.mark.parametrize("name,channels_last", [("cnn", False), ("cnn", True), ("mlp", False), ("resnet18", True)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_outputs_and_buffers_equal_the_solo_models(name, channels_last, training):
    classes = [3, 5, 2]
    solos = _solos(name, classes, channels_last)
    ref = copy.deepcopy(solos)
    fused = fuse(solos).train(training)
    x = torch.randn(3, 8, *SHAPE, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # twice: the running statistics are used and updated in place
        z = fused(x)
        assert z.shape == (3, 8, max(classes))
        for k, m in enumerate(ref):
            want = m.train(training)(x[k])
            torch.testing.assert_close(z[k, :, : classes[k]], want, rtol=1e-5, atol=1e-5)
            assert torch.isneginf(z[k, :, classes[k]:]).all()  # padding never wins a softmax or an argmax
    for k, sd in enumerate(fused.split_state_dicts()):
        want = ref[k].state_dict()
        assert sd.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(sd[key], want[key], rtol=1e-5, atol=1e-6)
        bn = {"mlp": "features.1", "cnn": "features.0.1", "resnet18": "layers.2.short.1"}[name]  # resnet: a shortcut's
        assert int(sd[f"{bn}.num_batches_tracked"]) == (2 if training else 0)


@pytest.mark.parametrize("name", list(KINDS))
def test_each_runs_gradient_is_its_solo_gradient(name):
    classes = [5, 3, 5]
    solos = _solos(name, classes, channels_last=name != "mlp")
    ref = copy.deepcopy(solos)
    fused = fuse(solos).train()
    x = torch.randn(3, 16, *SHAPE, generator=torch.Generator().manual_seed(2))
    y = torch.stack([torch.randint(0, n, (16,), generator=torch.Generator().manual_seed(n)) for n in classes])
    z = fused(x)
    sum(torch.nn.functional.cross_entropy(z[k], y[k]) for k in range(3)).backward()
    for k, m in enumerate(ref):
        torch.nn.functional.cross_entropy(m.train()(x[k]), y[k]).backward()
        scale = max(float(q.grad.abs().max()) for q in m.parameters())  # a bias before BatchNorm has ~0 gradient
        for (n, p), q in zip(solos[k].named_parameters(), m.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale, msg=n)


def test_split_and_merge_round_trip_exactly():
    solos = _solos("cnn", [4, 7])
    sds = [{k: v.clone() for k, v in m.state_dict().items()} for m in solos]

    def build(k):
        torch.manual_seed(100 + k)  # another init: the state dict must overwrite all of it
        return create_model("cnn", SHAPE, [4, 7][k], **KINDS["cnn"])

    fused = fuse_state_dicts(build, sds)
    for sd, want in zip(fused.split_state_dicts(), sds):
        assert sd.keys() == want.keys()
        assert all(torch.equal(sd[k], want[k]) for k in want)
    # the split copies are independent of the fused model, and release() leaves solo buffers of their own
    fused.train()(torch.randn(2, 4, *SHAPE))
    assert not torch.equal(fused.split_state_dicts()[0]["features.0.1.running_mean"], sds[0]["features.0.1.running_mean"])
    models = fused.release()
    before = models[0].features[0][1].running_mean.clone()
    models[1].train()(torch.randn(4, *SHAPE))
    assert torch.equal(models[0].features[0][1].running_mean, before)


def test_parameters_are_the_solo_leaves():
    solos = _solos("mlp", [3, 3])
    fused = fuse(solos)
    fused(torch.randn(2, 5, *SHAPE)).sum().backward()
    assert all(p.grad is not None for m in solos for p in m.parameters())
    assert {id(p) for p in fused.parameters()} == {id(p) for m in solos for p in m.parameters()}


def test_models_without_a_fused_form_say_why():
    vit = [create_model("vit", (1, 8, 8), 3, dim=8, depth=1, heads=2) for _ in range(2)]
    assert "ViT" in fuse_reason(vit)
    with pytest.raises(ValueError, match="ViT"):
        fuse(vit)
    assert "BagOfNgrams" in fuse_reason([create_model("text-ngrams", (6,), 3, buckets=50, dim=4) for _ in range(2)])
    assert "differ" in fuse_reason([_solos("cnn", [3])[0], _solos("cnn", [3], width=8)[0]])
    assert "differ" in fuse_reason(_solos("cnn", [3]) + _solos("cnn", [3], channels_last=True))
    assert "differ" in fuse_reason([_solos("cnn", [3])[0], _solos("mlp", [3])[0]])
    assert fuse_reason([]) == "no models"
    assert fuse_reason(_solos("mlp", [2, 9], dropout=0.3)) is None


def test_dropout_draws_come_from_each_runs_generator():
    solos = _solos("mlp", [3, 3], dropout=0.5)
    ref = copy.deepcopy(solos[1]).train()
    fused = FusedModel(solos).train()
    x = torch.randn(2, 6, *SHAPE)
    z = fused(x, [torch.Generator().manual_seed(5), torch.Generator().manual_seed(9)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)  # a solo run draws from torch's global generator
        want = ref(x[1])
    torch.testing.assert_close(z[1], want, rtol=1e-5, atol=1e-6)


def test_linear_probe_heads_fuse():
    heads = []
    for seed, n in enumerate((3, 5)):
        torch.manual_seed(seed)
        heads.append(torch.nn.Linear(6, n))
    ref = copy.deepcopy(heads)
    fused = fuse(heads)
    f = torch.randn(2, 4, 6)  # (K, B, features)
    z = fused(f)
    for k, h in enumerate(ref):
        torch.testing.assert_close(z[k, :, : h.out_features], h(f[k]))
    assert torch.isneginf(z[0, :, 3:]).all()
    assert "differ" in fuse_reason([torch.nn.Linear(6, 3), torch.nn.Linear(7, 3)])
