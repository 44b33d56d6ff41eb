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
