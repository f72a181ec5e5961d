"""ImageNet ResNet-18/50/101 (He et al. 2016), built by torchvision.

Adaptation to the data: the stem takes the dataset's channels; for images smaller than 64 pixels
the stem becomes the CIFAR one (3x3 stride-1 convolution, no max-pool), as in the SAP paper's
pre-activation-free ResNet-18 for CIFAR, so that small images are not reduced to 1x1 at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from prune_cli.models import MODELS
from prune_cli.spec import DataSpec


def _adapt(model: torchvision.models.ResNet, spec: DataSpec) -> nn.Module:
    if spec.image_size < 64:
        model.conv1 = nn.Conv2d(spec.channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.channels != 3:
        model.conv1 = nn.Conv2d(spec.channels, 64, 7, 2, 3, bias=False)
    return model


def _register(name: str, builder: Callable[..., torchvision.models.ResNet]) -> None:
    @MODELS.register(name)
    def build(spec: DataSpec) -> nn.Module:
        return _adapt(builder(weights=None, num_classes=spec.num_classes), spec)


_register("resnet18", torchvision.models.resnet18)
_register("resnet50", torchvision.models.resnet50)
_register("resnet101", torchvision.models.resnet101)
