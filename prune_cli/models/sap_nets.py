"""The SAP paper's small networks (Diao et al., ICLR 2023, "Pruning Deep Neural Networks from a
Sparsity Perspective", appendix):

- ``mlp``: 784-128-256-C on the flattened image (input width adapts to the data);
- ``cnn``: four blocks conv 3x3 (64, 128, 256, 512) + BatchNorm + ReLU + 2x2 max-pool, global
  average pooling and a linear classifier. Pools are skipped once the map is 1x1 (small images).

Deviation from the authors' code: their CNN has no max-pool after the fourth block, so global
average pooling sees a 4x4 map at 32x32 (CIFAR-10); here every block pools, a 2x2 map. The
parameter count and the convolutions' MACs are the same (the extra pool follows the last
convolution), but the features averaged for the classifier are max-pooled first, so results on
``model=cnn`` are for this variant, not the authors' network.

Settings: ``model.hidden`` (mlp: the hidden widths) and ``model.widths`` (cnn: the blocks'
channels); by default the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.models.lenet import MLP, MLPConfig
from prune_cli.spec import DataSpec


@dataclass
class SapCNNConfig(ModelConfig):
    #: output channels of the conv blocks, one block each; null: [64, 128, 256, 512]
    widths: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "widths")


class SapCNN(nn.Module):
    def __init__(self, spec: DataSpec, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = spec.channels, spec.image_size
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if size > 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("mlp", MLPConfig)
def mlp(spec: DataSpec, cfg: MLPConfig) -> nn.Module:
    return MLP(spec, (128, 256) if cfg.hidden is None else tuple(cfg.hidden))


@register_model("cnn", SapCNNConfig)
def cnn(spec: DataSpec, cfg: SapCNNConfig) -> nn.Module:
    return SapCNN(spec) if cfg.widths is None else SapCNN(spec, tuple(cfg.widths))
