"""Models behind one interface, registered by name.

>>> from granularity.models import create_model, list_models
>>> list_models()
['cnn', 'mlp', 'resnet18', 'vit']
"""

from granularity.models import cnn, mlp, resnet, vit  # noqa: F401  (register the models)
from granularity.models.base import Backbone, n_params
from granularity.models.registry import create_model, list_models, register_model

__all__ = ["Backbone", "create_model", "list_models", "register_model", "n_params"]
