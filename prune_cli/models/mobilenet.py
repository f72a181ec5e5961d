"""MobileNet-V1 (Howard et al. 2017) and MobileNet-V2 (Sandler et al. 2018), CIFAR variants.

MobileNet-V1: a 3x3 stem with stride 1, then 13 depthwise-separable blocks
(64, 128/2, 128, 256/2, 256, 512/2, 5 x 512, 1024/2, 1024), global average pooling and a linear
classifier (3.2 M parameters for 10 classes).

MobileNet-V2: torchvision's architecture (2.24 M parameters for 10 classes) with the stem and the
first 24-channel block at stride 1 for images under 64 pixels (total stride 8 instead of 32),
the usual CIFAR adaptation; the depthwise convolutions are what structured pruning must handle.

Settings: ``model.width_mult`` (scales the channels: torchvision's rounding to multiples of 8
for V2, plain rounding for V1). ``model.weights=pretrained`` loads torchvision's ImageNet
MobileNet-V2 (the classifier stays initialised; the small-image strides change no shape).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.spec import DataSpec


@dataclass
class MobileNetConfig(ModelConfig):
    #: multiplier of every layer's channels; null: 1.0
    width_mult: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "width_mult")


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
    def __init__(self, spec: DataSpec, width_mult: float = 1.0) -> None:
        super().__init__()

        def scaled(c: int) -> int:
            return max(1, round(c * width_mult))

        cin = scaled(32)
        layers = [_conv_bn(spec.channels, cin, 3, 1)]
        for channels, stride in V1_BLOCKS:
            cout = scaled(channels)
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


@register_model("mobilenet_v1", MobileNetConfig)
def mobilenet_v1(spec: DataSpec, cfg: MobileNetConfig) -> nn.Module:
    return MobileNetV1(spec, cfg.width_mult or 1.0)


@register_model("mobilenet_v2", MobileNetConfig, pretrained="MobileNet_V2_Weights.IMAGENET1K_V2")
def mobilenet_v2(spec: DataSpec, cfg: MobileNetConfig) -> nn.Module:
    import torchvision  # at build time: keeps start-up light

    model = torchvision.models.mobilenet_v2(
        weights=None, num_classes=spec.num_classes, width_mult=cfg.width_mult or 1.0
    )
    small = spec.image_size < 64
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        spec.channels, stem.out_channels, 3, 1 if small else 2, 1, bias=False
    )
    if small:
        model.features[2].conv[1][0].stride = (1, 1)  # depthwise conv of the first 24-ch block
    return model
