"""CIFAR ResNets (He et al., "Deep Residual Learning", CVPR 2016, section 4.2).

Three stages of n BasicBlocks with 16/32/64 channels, depth = 6n + 2 (ResNet-20/32/44/56/110).
Shortcut: option A of the paper, the parameter-free identity that subsamples by stride 2 and
zero-pads the new channels, as in the paper's CIFAR experiments. With it ResNet-56 has 853,018
parameters for 10 classes (the "0.85 M" of the literature); ResNet-20 has 269,722.

``resnet56_flow`` is the ResNet-56 of Lubana and Dick's code ("A Gradient Flow Framework For
Analyzing Network Pruning", ICLR 2021, their ``models.py``): where the width or the stride
changes, the shortcut is a 1x1 convolution with BatchNorm (option B, projection): 855,770
parameters for 10 classes. Its residual streams then have producers of one width (the shortcut
convolution and the second convolution of every block of the stage), so structured pruning can
remove a stream's channels as one coupled unit; an option-A stream is tied by the zero-padding
to the stage before it.

Settings: ``model.depth`` (6n + 2; by default the name's), ``model.width`` (channels of the
first stage, 16 by default; the stages have width, 2 x width and 4 x width) and
``model.shortcut`` (``zero_pad``: option A; ``projection``: option B; null: the name's, which is
``projection`` for ``resnet56_flow`` and ``zero_pad`` for the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.spec import DataSpec

DEPTHS = (20, 32, 44, 56, 110)
SHORTCUTS = ("zero_pad", "projection")


@dataclass
class CifarResNetConfig(ModelConfig):
    #: layers, 6n + 2 (n BasicBlocks per stage); null: the depth in the name (resnet56: 56)
    depth: int | None = None
    #: channels of the first stage (the others: 2x and 4x); null: 16
    width: int | None = None
    #: where width or stride change: ``zero_pad`` (option A, no parameters) or ``projection``
    #: (1x1 convolution + BatchNorm, Lubana and Dick's); null: the name's (resnet56_flow:
    #: projection, the others: zero_pad)
    shortcut: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "depth", "width")
        if self.depth is not None and (self.depth < 8 or (self.depth - 2) % 6):
            raise ConfigError(
                f"model.depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110...), got {self.depth}"
            )
        if self.shortcut is not None and self.shortcut not in SHORTCUTS:
            raise ConfigError(
                f"model.shortcut must be one of {', '.join(SHORTCUTS)}, got {self.shortcut!r}"
            )


class ShortcutA(nn.Module):
    """Identity shortcut that subsamples and zero-pads channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad - half))


def projection(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Option B: a strided 1x1 convolution (no bias) and BatchNorm, as Lubana and Dick's code."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
    )


class BasicBlock(nn.Module):
    def __init__(
        self, in_planes: int, planes: int, stride: int, shortcut: str = "zero_pad"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = (
                projection(in_planes, planes, stride)
                if shortcut == "projection"
                else ShortcutA(in_planes, planes, stride)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self, depth: int, spec: DataSpec, width: int = 16, shortcut: str = "zero_pad"
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(spec.channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(4 * width, spec.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 4 width): any input size works
        return self.fc(x)


def _register(name: str, depth: int, shortcut: str) -> None:
    @register_model(name, CifarResNetConfig)
    def build(spec: DataSpec, cfg: CifarResNetConfig) -> nn.Module:
        return CifarResNet(
            depth if cfg.depth is None else cfg.depth,
            spec,
            16 if cfg.width is None else cfg.width,
            cfg.shortcut or shortcut,
        )


for _depth in DEPTHS:
    _register(f"resnet{_depth}", _depth, "zero_pad")
# Lubana and Dick's ResNet-56: projection shortcuts (see the module docstring)
_register("resnet56_flow", 56, "projection")
