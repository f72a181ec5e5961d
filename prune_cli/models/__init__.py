"""Model registry: ``build_model(name, spec)`` is the one factory; builders register themselves.

Every builder takes a :class:`~prune_cli.spec.DataSpec` and adapts to its channels, classes and
image size (a ResNet-56 runs on 8x8 digits as on 32x32 CIFAR).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prune_cli.registry import Registry, import_submodules
from prune_cli.spec import DataSpec

ModelBuilder = Callable[[DataSpec], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


def build_model(name: str, spec: DataSpec) -> nn.Module:
    return MODELS.get(name)(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


import_submodules(__name__)
