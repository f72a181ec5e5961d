"""LeNet family.

- ``lenet5``: LeCun et al. 1998 as commonly used in pruning papers on MNIST / Fashion-MNIST:
  conv 6 (5x5, padding 2) - pool - conv 16 (5x5) - pool - fc 120 - fc 84 - fc C
  (61,706 parameters on 28x28, 10 classes).
- ``lenet5_caffe``: the Caffe "LeNet-5" of Dynamic Network Surgery and Deep Compression:
  conv 20 - pool - conv 50 - pool - fc 500 - fc C (431,080 parameters on 28x28, 10 classes).
- ``lenet300_100``: the fully connected 784-300-100-C network (266,610 parameters).

- ``fc5``: Zhang et al. 2024's fully connected input-1000-600-300-100-C network.

Small inputs (8x8 digits): the second convolution is padded so that its output is not empty, and
the flattened size is measured with a dummy forward pass at construction.

Settings: ``model.channels`` (the two convolutions' output channels) and ``model.hidden`` (the
fully connected layers' widths); by default the name's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.spec import DataSpec


@dataclass
class LeNetConfig(ModelConfig):
    #: output channels of the two convolutions; null: the name's (lenet5: [6, 16])
    channels: list[int] | None = None
    #: widths of the hidden fully connected layers; null: the name's (lenet5: [120, 84])
    hidden: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "channels")
        if self.channels is not None and len(self.channels) != 2:
            raise ConfigError(f"model.channels must list 2 widths, got {self.channels}")
        if self.hidden is not None and any(h <= 0 for h in self.hidden):
            raise ConfigError(f"model.hidden must hold positive widths, got {self.hidden}")


@dataclass
class MLPConfig(ModelConfig):
    #: widths of the hidden layers ([] : a linear classifier); null: the name's
    hidden: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden is not None and any(h <= 0 for h in self.hidden):
            raise ConfigError(f"model.hidden must hold positive widths, got {self.hidden}")


def _or(value: list[int] | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return default if value is None else tuple(value)


def _flat_size(features: nn.Module, spec: DataSpec) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *spec.input_shape)).numel())


class LeNet5(nn.Module):
    def __init__(
        self,
        spec: DataSpec,
        c1: int,
        c2: int,
        hidden: tuple[int, ...],
        pad1: int,
        act: type[nn.Module],
    ) -> None:
        super().__init__()
        pad2 = 0 if (spec.image_size + 2 * pad1 - 4) // 2 >= 10 else 2
        self.features = nn.Sequential(
            nn.Conv2d(spec.channels, c1, 5, padding=pad1),
            act(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 5, padding=pad2),
            act(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        layers: list[nn.Module] = []
        width = _flat_size(self.features, spec)
        for h in hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, spec.num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class MLP(nn.Module):
    """Fully connected network on the flattened image."""

    def __init__(self, spec: DataSpec, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = spec.channels * spec.image_size**2
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, spec.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_model("lenet5", LeNetConfig)
def lenet5(spec: DataSpec, cfg: LeNetConfig) -> nn.Module:
    c1, c2 = _or(cfg.channels, (6, 16))
    return LeNet5(spec, c1, c2, _or(cfg.hidden, (120, 84)), pad1=2, act=nn.ReLU)


@register_model("lenet5_caffe", LeNetConfig)
def lenet5_caffe(spec: DataSpec, cfg: LeNetConfig) -> nn.Module:
    c1, c2 = _or(cfg.channels, (20, 50))
    return LeNet5(spec, c1, c2, _or(cfg.hidden, (500,)), pad1=0, act=nn.ReLU)


@register_model("lenet300_100", MLPConfig)
def lenet300_100(spec: DataSpec, cfg: MLPConfig) -> nn.Module:
    return MLP(spec, _or(cfg.hidden, (300, 100)))


@register_model("fc5", MLPConfig)
def fc5(spec: DataSpec, cfg: MLPConfig) -> nn.Module:
    """FC5 of Zhang et al. 2024 (the authors' ``FC``): input-1000-600-300-100-classes, ReLU."""
    return MLP(spec, _or(cfg.hidden, (1000, 600, 300, 100)))
