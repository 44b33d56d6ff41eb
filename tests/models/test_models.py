"""Model registry and the shared interface, run over every registered model."""

from __future__ import annotations

import pytest
import torch

from granularity.errors import GranularityError
from granularity.models import Backbone, create_model, list_models

SHAPES = {"cnn": (1, 8, 8), "resnet18": (3, 8, 8), "mlp": (5,), "vit": (1, 8, 8)}
SMALL = {"cnn": {"width": 4}, "resnet18": {"width": 4}, "mlp": {"hidden": 8}, "vit": {"dim": 8, "depth": 1, "heads": 2}}


def test_registry_lists_the_models():
    assert list_models() == ["cnn", "mlp", "resnet18", "text-ngrams", "text-transformer", "vit"]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_interface(name):
    torch.manual_seed(0)
    m = create_model(name, SHAPES[name], 3, **SMALL[name])
    assert isinstance(m, Backbone)
    x = torch.randn(4, *SHAPES[name])
    f = m.forward_features(x)
    assert f.shape == (4, m.num_features)
    assert m.forward_head(f).shape == (4, 3)
    torch.testing.assert_close(m(x), m.forward_head(f))
    m.reset_head(7)
    assert m.num_classes == 7 and m(x).shape == (4, 7)
    head = {id(p) for p in m.head.parameters()}
    assert all(id(p) not in head for p in m.backbone_parameters())


def test_registry_errors():
    with pytest.raises(GranularityError, match="Unknown model 'resnet19' \\(did you mean 'resnet18'\\?\\); valid models are: cnn, mlp"):
        create_model("resnet19", (3, 8, 8), 2)
    with pytest.raises(GranularityError, match="Unknown option 'widht' for model 'cnn'; valid options are: width"):
        create_model("cnn", (1, 8, 8), 2, widht=3)
    with pytest.raises(GranularityError, match="'num_classes' parameter must be an int"):
        create_model("cnn", (1, 8, 8), 0)
    with pytest.raises(GranularityError, match="'patch' parameter must be a positive divisor of the image size 8x8"):
        create_model("vit", (1, 8, 8), 2, patch=3)
    with pytest.raises(GranularityError, match="\\(C, H, W\\)"):
        create_model("cnn", (5,), 2)


def _relu_then_pool(model):
    """A copy of a SmallCNN with every pooled block in the textbook order conv/BN/ReLU/pool."""
    import copy

    ref = copy.deepcopy(model)
    for block in ref.features:
        if isinstance(block[2], torch.nn.MaxPool2d):
            block[2], block[3] = block[3], block[2]
    assert isinstance(ref.features[0][2], torch.nn.ReLU) and isinstance(ref.features[0][3], torch.nn.MaxPool2d)
    return ref


@pytest.mark.parametrize("bf16,channels_last", [(False, False), (True, True)])
def test_cnn_pool_before_relu_is_bit_identical(bf16, channels_last):
    """SmallCNN pools before its ReLU; outputs, every gradient and the BatchNorm statistics are
    those of the conv/BN/ReLU/pool order bit for bit, also where a whole 2x2 window is negative."""
    torch.manual_seed(0)
    model = create_model("cnn", (1, 28, 28), 5, width=8)
    assert isinstance(model.features[0][2], torch.nn.MaxPool2d)
    ref = _relu_then_pool(model)
    x = torch.randn(16, 1, 28, 28)
    x[:8] -= 3.0  # many all-negative windows after the first BatchNorm's shift
    y = torch.randint(0, 5, (16,))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    outs = []
    for m in (model, ref):
        m.to(memory_format=fmt).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = m(x.to(memory_format=fmt))
        torch.nn.functional.cross_entropy(z.float(), y).backward()
        outs.append((z.float(), [p.grad for p in m.parameters()], [b.clone() for b in m.buffers()]))
    (za, ga, ba), (zb, gb, bb) = outs
    assert torch.equal(za, zb)
    assert len(ga) == len(gb) and all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert all(torch.equal(a, b) for a, b in zip(ba, bb))
    with torch.no_grad():  # not a trivial case: windows whose 4 pre-ReLU values are all <= 0 (argmax differs)
        pre = model.features[0][1](model.features[0][0](x.to(memory_format=fmt)))
        assert int((torch.nn.functional.max_pool2d(pre, 2) <= 0).sum()) > 1000
    assert list(model.state_dict()) == list(ref.state_dict())  # checkpoints load either way
