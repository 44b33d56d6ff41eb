"""granularity: why fine-grained labels in pretraining benefit generalization.

Layers, one way: ``utils`` -> ``theory`` (simulator) / ``hierarchy`` / ``data`` -> ``models``
-> ``engine`` -> ``experiments`` / ``sweeps`` -> ``cli``.
"""

from granularity.errors import GranularityError

__version__ = "0.1.0"
__all__ = ["GranularityError", "__version__"]
