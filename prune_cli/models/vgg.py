"""VGG-11/13/16/19 with BatchNorm, CIFAR variant (Simonyan and Zisserman 2015), and Lubana and
Dick's VGG-13 (``vgg13_flow``).

Convolutions 3x3 with BatchNorm and ReLU; the classifier is 512 -> 512 -> 512 -> classes, the
CIFAR variant used by pruning papers (VGG-16-BN: 15.25 M parameters for 10 classes). Max-pools
are dropped once the feature map is 1x1, so small images (8x8 digits) work too.

``vgg13_flow`` is the VGG-13 of Lubana and Dick's code ("A Gradient Flow Framework For Analyzing
Network Pruning", ICLR 2021, their ``models.py``): conv (no bias) -> ReLU -> BatchNorm, the
BatchNorm *after* the ReLU, and a single ``Linear(512, classes)`` classifier: 9,413,066 parameters
for CIFAR-10 (``vgg13``: 9,938,378). Its only filters are the ten convolutions' 2,944, which is
what the flow experiments' filter fraction counts; ``vgg13``'s two hidden classifier layers would
add 1,024 units to the ranking.

Settings: ``model.width_mult`` (scales every convolution's channels) and
``model.classifier_width`` (the two hidden layers of the classifier; ``vgg13_flow`` has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from prune_cli.models import ModelConfig, positive, register_model
from prune_cli.spec import DataSpec


@dataclass
class VGGConfig(ModelConfig):
    #: multiplier of every convolution's channels (rounded, at least 1); null: 1.0
    width_mult: float | None = None
    #: width of the classifier's two hidden layers; null: 512
    classifier_width: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "width_mult", "classifier_width")


@dataclass
class VGGFlowConfig(ModelConfig):
    """``vgg13_flow``'s settings: no ``classifier_width``, since its classifier has no hidden
    layer (a setting it does not have fails when the config is composed)."""

    #: multiplier of every convolution's channels (rounded, at least 1); null: 1.0
    width_mult: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "width_mult")


CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    def __init__(
        self,
        config: list[int | str],
        spec: DataSpec,
        width_mult: float = 1.0,
        classifier_width: int | None = 512,
        bn_after_relu: bool = False,
    ) -> None:
        """``classifier_width`` None: a single linear classifier on the pooled features;
        ``bn_after_relu``: each convolution is followed by ReLU, then BatchNorm (Lubana and
        Dick's order), not BatchNorm, then ReLU."""
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = spec.channels, spec.image_size
        for item in config:
            if item == "M":
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            assert isinstance(item, int)
            item = max(1, round(item * width_mult))
            conv = nn.Conv2d(channels, item, 3, padding=1, bias=False)
            norm, relu = nn.BatchNorm2d(item), nn.ReLU(inplace=True)
            layers += [conv, relu, norm] if bn_after_relu else [conv, norm, relu]
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = (
            nn.Linear(channels, spec.num_classes)
            if classifier_width is None
            else nn.Sequential(
                nn.Linear(channels, classifier_width),
                nn.ReLU(inplace=True),
                nn.Linear(classifier_width, classifier_width),
                nn.ReLU(inplace=True),
                nn.Linear(classifier_width, spec.num_classes),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _register(name: str) -> None:
    @register_model(name, VGGConfig)
    def build(spec: DataSpec, cfg: VGGConfig) -> nn.Module:
        return VGG(CONFIGS[name], spec, cfg.width_mult or 1.0, cfg.classifier_width or 512)


for _name in CONFIGS:
    _register(_name)


@register_model("vgg13_flow", VGGFlowConfig)
def vgg13_flow(spec: DataSpec, cfg: VGGFlowConfig) -> nn.Module:
    """Lubana and Dick's VGG-13: conv -> ReLU -> BatchNorm, one linear classifier."""
    return VGG(CONFIGS["vgg13"], spec, cfg.width_mult or 1.0, None, bn_after_relu=True)
