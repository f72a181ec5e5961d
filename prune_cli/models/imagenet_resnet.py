"""ImageNet ResNet-18/50/101 (He et al. 2016), built by torchvision.

Adaptation to the data: the stem takes the dataset's channels; for images smaller than 64 pixels
the stem becomes the CIFAR one (3x3 stride-1 convolution, no max-pool), as in the SAP paper's
pre-activation-free ResNet-18 for CIFAR, so that small images are not reduced to 1x1 at once.
"""

from __future__ import annotations

from torch import nn

from prune_cli.models import MODELS
from prune_cli.spec import DataSpec


def _adapt(model: nn.Module, spec: DataSpec) -> nn.Module:
    if spec.image_size < 64:
        model.conv1 = nn.Conv2d(spec.channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.channels != 3:
        model.conv1 = nn.Conv2d(spec.channels, 64, 7, 2, 3, bias=False)
    return model


def _register(name: str) -> None:
    @MODELS.register(name)
    def build(spec: DataSpec) -> nn.Module:
        # torchvision is imported when a model is built, not when the registry is (start-up time)
        import torchvision

        builder = getattr(torchvision.models, name)
        return _adapt(builder(weights=None, num_classes=spec.num_classes), spec)


for _name in ("resnet18", "resnet50", "resnet101"):
    _register(_name)
