"""Wide ResNets (Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016), CIFAR variant.

Pre-activation wide basic blocks (BN-ReLU-conv3x3 twice), (depth - 4) / 6 blocks per stage,
widths 16k / 32k / 64k, a 1x1 projection shortcut where the shape changes, no dropout.
WRN-28-10 (36.5 M parameters) is the gRDA paper's CIFAR model; WRN-28-8 the SAP paper's.

Settings: ``model.depth`` (6n + 4) and ``model.width`` (the widening factor k); by default the
name's (``model=wrn28_10 model.depth=16 model.width=8`` is WRN-16-8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.spec import DataSpec


@dataclass
class WideResNetConfig(ModelConfig):
    #: layers, 6n + 4 (n blocks per stage); null: the name's (wrn28_10: 28)
    depth: int | None = None
    #: widening factor k (stages of 16k, 32k, 64k channels); null: the name's (wrn28_10: 10)
    width: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "depth", "width")
        if self.depth is not None and (self.depth < 10 or (self.depth - 4) % 6):
            raise ConfigError(
                f"model.depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40...), got {self.depth}"
            )


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


def _build(spec: DataSpec, cfg: WideResNetConfig, depth: int, width: int) -> nn.Module:
    return WideResNet(
        depth if cfg.depth is None else cfg.depth, width if cfg.width is None else cfg.width, spec
    )


@register_model("wrn28_10", WideResNetConfig)
def wrn28_10(spec: DataSpec, cfg: WideResNetConfig) -> nn.Module:
    return _build(spec, cfg, 28, 10)


@register_model("wrn28_8", WideResNetConfig)
def wrn28_8(spec: DataSpec, cfg: WideResNetConfig) -> nn.Module:
    return _build(spec, cfg, 28, 8)
