"""Models behind one interface, registered by name.

>>> from granularity.models import create_model, list_models
>>> list_models()
['cnn', 'mlp', 'resnet18', 'text-ngrams', 'text-transformer', 'vit']
"""

from granularity.models import cnn, mlp, resnet, vit  # noqa: F401  (register the models)
from granularity.models import text  # noqa: F401  (text models: text-ngrams, text-transformer)
from granularity.models.base import Backbone, n_params
from granularity.models.registry import create_model, list_models, register_model

__all__ = ["Backbone", "create_model", "list_models", "register_model", "n_params"]
