"""CIFAR ResNets (He et al., "Deep Residual Learning", CVPR 2016, section 4.2).

Three stages of n BasicBlocks with 16/32/64 channels, depth = 6n + 2 (ResNet-20/32/44/56/110).
Shortcut: option A of the paper, the parameter-free identity that subsamples by stride 2 and
zero-pads the new channels, as in the paper's CIFAR experiments. With it ResNet-56 has 853,018
parameters for 10 classes (the "0.85 M" of the literature); ResNet-20 has 269,722.

Settings: ``model.depth`` (6n + 2; by default the name's) and ``model.width`` (channels of the
first stage, 16 by default; the stages have width, 2 x width and 4 x width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.spec import DataSpec

DEPTHS = (20, 32, 44, 56, 110)


@dataclass
class CifarResNetConfig(ModelConfig):
    #: layers, 6n + 2 (n BasicBlocks per stage); null: the depth in the name (resnet56: 56)
    depth: int | None = None
    #: channels of the first stage (the others: 2x and 4x); null: 16
    width: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "depth", "width")
        if self.depth is not None and (self.depth < 8 or (self.depth - 2) % 6):
            raise ConfigError(
                f"model.depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110...), got {self.depth}"
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


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ShortcutA(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, spec: DataSpec, width: int = 16) -> None:
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
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
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


def _register(depth: int) -> None:
    @register_model(f"resnet{depth}", CifarResNetConfig)
    def build(spec: DataSpec, cfg: CifarResNetConfig) -> nn.Module:
        return CifarResNet(
            depth if cfg.depth is None else cfg.depth,
            spec,
            16 if cfg.width is None else cfg.width,
        )


for _depth in DEPTHS:
    _register(_depth)
