"""MobileNet-V1 (Howard et al. 2017) and MobileNet-V2 (Sandler et al. 2018), CIFAR variants.

MobileNet-V1: a 3x3 stem with stride 1, then 13 depthwise-separable blocks
(64, 128/2, 128, 256/2, 256, 512/2, 5 x 512, 1024/2, 1024), global average pooling and a linear
classifier (3.2 M parameters for 10 classes).

MobileNet-V2: torchvision's architecture (2.24 M parameters for 10 classes) with the stem and the
first 24-channel block at stride 1 for images under 64 pixels (total stride 8 instead of 32),
the usual CIFAR adaptation; the depthwise convolutions are what structured pruning must handle.
"""

from __future__ import annotations

from torch import Tensor, nn

from prune_cli.models import MODELS
from prune_cli.spec import DataSpec

V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        layers = [_conv_bn(spec.channels, 32, 3, 1)]
        cin = 32
        for cout, stride in V1_BLOCKS:
            layers.append(
                nn.Sequential(
                    _conv_bn(cin, cin, 3, stride, groups=cin),  # depthwise
                    _conv_bn(cin, cout, 1, 1),  # pointwise
                )
            )
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@MODELS.register("mobilenet_v1")
def mobilenet_v1(spec: DataSpec) -> nn.Module:
    return MobileNetV1(spec)


@MODELS.register("mobilenet_v2")
def mobilenet_v2(spec: DataSpec) -> nn.Module:
    import torchvision  # at build time: keeps start-up light

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=spec.num_classes)
    small = spec.image_size < 64
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        spec.channels, stem.out_channels, 3, 1 if small else 2, 1, bias=False
    )
    if small:
        model.features[2].conv[1][0].stride = (1, 1)  # depthwise conv of the first 24-ch block
    return model
