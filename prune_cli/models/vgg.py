"""VGG-11/13/16/19 with BatchNorm, CIFAR variant (Simonyan and Zisserman 2015).

Convolutions 3x3 with BatchNorm and ReLU; the classifier is 512 -> 512 -> 512 -> classes, the
CIFAR variant used by pruning papers (VGG-16-BN: 15.25 M parameters for 10 classes). Max-pools
are dropped once the feature map is 1x1, so small images (8x8 digits) work too.
"""

from __future__ import annotations

from torch import Tensor, nn

from prune_cli.models import MODELS
from prune_cli.spec import DataSpec

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    def __init__(self, config: list[int | str], spec: DataSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = spec.channels, spec.image_size
        for item in config:
            if item == "M":
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            assert isinstance(item, int)
            layers += [
                nn.Conv2d(channels, item, 3, padding=1, bias=False),
                nn.BatchNorm2d(item),
                nn.ReLU(inplace=True),
            ]
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, spec.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _register(name: str) -> None:
    @MODELS.register(name)
    def build(spec: DataSpec) -> nn.Module:
        return VGG(CONFIGS[name], spec)


for _name in CONFIGS:
    _register(_name)
