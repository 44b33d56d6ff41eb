"""granularity: why fine-grained labels in pretraining benefit generalization.

The packages form one-way layers (docs/CONTRIBUTING-internal.md, checked by tests/test_layers.py).
"""

from granularity.errors import GranularityError

__version__ = "0.1.0"
__all__ = ["GranularityError", "__version__"]
