"""Wide ResNets (Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016), CIFAR variant.

Pre-activation wide basic blocks (BN-ReLU-conv3x3 twice), (depth - 4) / 6 blocks per stage,
widths 16k / 32k / 64k, a 1x1 projection shortcut where the shape changes, no dropout.
WRN-28-10 (36.5 M parameters) is the gRDA paper's CIFAR model; WRN-28-8 the SAP paper's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli.models import MODELS
from prune_cli.spec import DataSpec


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, spec: DataSpec) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(spec.channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(WideBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, spec.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@MODELS.register("wrn28_10")
def wrn28_10(spec: DataSpec) -> nn.Module:
    return WideResNet(28, 10, spec)


@MODELS.register("wrn28_8")
def wrn28_8(spec: DataSpec) -> nn.Module:
    return WideResNet(28, 8, spec)
