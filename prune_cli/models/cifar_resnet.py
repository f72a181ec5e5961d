"""CIFAR ResNets (He et al., "Deep Residual Learning", CVPR 2016, section 4.2).

Three stages of n BasicBlocks with 16/32/64 channels, depth = 6n + 2 (ResNet-20/32/44/56/110).
Shortcut: option A of the paper, the parameter-free identity that subsamples by stride 2 and
zero-pads the new channels, as in the paper's CIFAR experiments. With it ResNet-56 has 853,018
parameters for 10 classes (the "0.85 M" of the literature); ResNet-20 has 269,722.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli.models import MODELS
from prune_cli.spec import DataSpec


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
    def __init__(self, depth: int, spec: DataSpec) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(spec.channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, spec.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 64): any input size works
        return self.fc(x)


def _register(depth: int) -> None:
    @MODELS.register(f"resnet{depth}")
    def build(spec: DataSpec) -> nn.Module:
        return CifarResNet(depth, spec)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
