"""ImageNet ResNet-18/50/101 (He et al. 2016), built by torchvision.

Adaptation to the data: the stem takes the dataset's channels; for images smaller than 64 pixels
the stem becomes the CIFAR one (3x3 stride-1 convolution, no max-pool), as in the SAP paper's
pre-activation-free ResNet-18 for CIFAR, so that small images are not reduced to 1x1 at once.

Settings: ``model.width_per_group`` (bottleneck width per group: 64, torchvision's
``wide_resnet50_2`` is resnet50 with 128; ResNet-18 has no bottleneck, so only 64),
``model.zero_init_residual`` (each block's last BatchNorm starts at zero), ``model.small_stem``
(force the CIFAR stem on or off). ``model.weights=pretrained`` loads torchvision's ImageNet
weights pinned below (the classifier, and the stem where it was adapted, stay initialised).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.spec import DataSpec

#: torchvision's weights that ``model.weights=pretrained`` loads (its DEFAULT in 0.2x, pinned)
PRETRAINED = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
}


@dataclass
class TorchvisionResNetConfig(ModelConfig):
    #: channels per group in the bottleneck blocks (resnet50/101); null: 64
    width_per_group: int | None = None
    #: start each residual block's last BatchNorm at zero (Goyal et al. 2017); null: false
    zero_init_residual: bool | None = None
    #: the CIFAR stem (3x3 stride 1, no max-pool); null: for images under 64 pixels
    small_stem: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "width_per_group")
        if self.name == "resnet18" and self.width_per_group not in (None, 64):
            raise ConfigError(
                "model.width_per_group: resnet18 has BasicBlocks, which torchvision builds only "
                "with 64; use resnet50 or resnet101"
            )


def _adapt(model: nn.Module, spec: DataSpec, small_stem: bool) -> nn.Module:
    if small_stem:
        model.conv1 = nn.Conv2d(spec.channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.channels != 3:
        model.conv1 = nn.Conv2d(spec.channels, 64, 7, 2, 3, bias=False)
    return model


def _register(name: str) -> None:
    @register_model(name, TorchvisionResNetConfig, pretrained=PRETRAINED[name])
    def build(spec: DataSpec, cfg: TorchvisionResNetConfig) -> nn.Module:
        # torchvision is imported when a model is built, not when the registry is (start-up time)
        import torchvision

        builder = getattr(torchvision.models, name)
        model = builder(
            weights=None,
            num_classes=spec.num_classes,
            width_per_group=cfg.width_per_group or 64,
            zero_init_residual=bool(cfg.zero_init_residual),
        )
        small = spec.image_size < 64 if cfg.small_stem is None else cfg.small_stem
        return _adapt(model, spec, small)


for _name in PRETRAINED:
    _register(_name)
