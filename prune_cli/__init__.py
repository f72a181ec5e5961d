"""prune-run: an experiment runner for deep-network pruning research.

Layers, with dependencies pointing one way only::

    cli -> experiment -> {training, pruning, models, data, reporting} -> foundations

The foundations (``registry``, ``errors``, ``io``, ``paths``, ``metrics``) import nothing else
from the package. Pruning code works on any ``nn.Module`` and never imports a model or a dataset.
"""

__version__ = "0.1.0"
