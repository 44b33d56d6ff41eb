"""Name -> model-constructor registry (timm style): the names are the CLI's vocabulary.

A constructor is registered with :func:`register_model` and built with :func:`create_model`.
Every constructor takes ``input_shape`` (``(C, H, W)`` for images, ``(D,)`` for tables) and
``num_classes`` plus its own keyword options, and returns a :class:`~granularity.models.base.Backbone`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from granularity.errors import GranularityError, param_error, unknown_name

_MODELS: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model constructor under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _MODELS:
            raise RuntimeError(f"model {name!r} registered twice")  # programming error
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(_MODELS)


def create_model(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
):
    """Build the registered model ``name``.

    Parameters
    ----------
    name : str
        A name from :func:`list_models` (``cnn``, ``resnet18``, ``mlp``, ``vit``).
    input_shape : sequence of int
        ``(C, H, W)`` for images or ``(D,)`` for tabular features.
    num_classes : int
        Size of the classification head (``reset_head`` changes it later).
    **kwargs
        Options of that model (for example ``width`` for ``resnet18``); unknown options are
        errors that list the valid ones.

    Examples
    --------
    >>> m = create_model("cnn", (1, 28, 28), 10)
    >>> m.reset_head(4).num_classes
    4
    """
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise param_error("num_classes", "an int in the range [1, inf)", num_classes)
    fn = _MODELS[name]
    params = inspect.signature(fn).parameters
    valid = [p for p in params if p not in ("input_shape", "num_classes")]
    for key in kwargs:
        if key not in valid:
            raise GranularityError(
                f"Unknown option {key!r} for model {name!r}; valid options are: "
                f"{', '.join(valid) or '(none)'}."
            )
    return fn(input_shape=tuple(int(s) for s in input_shape), num_classes=num_classes, **kwargs)
