"""Every registered model: forward shapes on each kind of data, and the known parameter counts;
typed settings per model, models from the user's own code, and starting weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_cli.config import group_options
from prune_cli.models import MODELS, build_model, count_parameters, model_config
from prune_cli.spec import DataSpec


def small_net(spec: DataSpec, width: int = 8) -> nn.Module:
    """``model=custom``'s builder in the registry-wide tests (this module is importable)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(spec.channels * spec.image_size**2, width),
        nn.ReLU(),
        nn.Linear(width, spec.num_classes),
    )


#: the settings a registered model needs besides its name (custom: the builder)
REQUIRED = {"custom": {"target": f"{__name__}:small_net"}}


def settings(name: str, **extra):
    return model_config({"name": name, **REQUIRED.get(name, {}), **extra})


SPECS = {
    "digits": DataSpec(1, 10, 8),
    "fashion_mnist": DataSpec(1, 10, 28),
    "cifar100": DataSpec(3, 100, 32),
}
HEAVY = {
    "resnet50",
    "resnet101",
    "resnet110",
    "vgg19",
    "mobilenet_v1",
    "mobilenet_v2",
    "wrn28_10",
    "wrn28_8",
}


@pytest.mark.parametrize("data", list(SPECS))
@pytest.mark.parametrize("name", MODELS.names())
def test_forward_shape(name, data):
    if name in HEAVY and data == "cifar100":
        pytest.skip("covered on the smaller inputs; slow on two CPU cores")
    spec = SPECS[data]
    torch.manual_seed(0)
    model = build_model(settings(name), spec).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *spec.input_shape))
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()


# Parameter counts for 10 classes (CIFAR: 3x32x32; MNIST family: 1x28x28).
KNOWN = {
    ("resnet20", "cifar"): 269_722,
    ("resnet56", "cifar"): 853_018,  # the "0.85 M" ResNet-56 (option A shortcuts)
    # Lubana and Dick's models (their models.py, CIFAR-10), as the issue-25 check counted them
    ("resnet56_flow", "cifar"): 855_770,  # projection shortcuts
    ("vgg13_flow", "cifar"): 9_413_066,  # conv -> ReLU -> BN, one Linear(512, 10)
    ("mobilenet_v1", "cifar"): 3_217_226,
    ("resnet110", "cifar"): 1_727_962,
    ("vgg16", "cifar"): 15_249_354,  # VGG-16-BN CIFAR variant, 15.25 M
    ("mobilenet_v2", "cifar"): 2_236_682,  # 2.24 M
    ("resnet18", "cifar"): 11_173_962,
    ("wrn28_10", "cifar"): 36_479_194,  # WRN-28-10, 36.5 M
    ("lenet5", "mnist"): 61_706,
    ("lenet5_caffe", "mnist"): 431_080,  # DNS's LeNet-5
    ("lenet300_100", "mnist"): 266_610,
    ("mlp", "mnist"): 784 * 128 + 128 + 128 * 256 + 256 + 256 * 10 + 10,
    # Zhang et al. 2024's FC5 on CIFAR-10: 3072-1000-600-300-100-10 with biases
    ("fc5", "cifar"): 3_073_000 + 600_600 + 180_300 + 30_100 + 1_010,
}


@pytest.mark.parametrize(("name", "data"), list(KNOWN))
def test_parameter_counts(name, data):
    spec = DataSpec(3, 10, 32) if data == "cifar" else DataSpec(1, 10, 28)
    assert count_parameters(build_model(name, spec)) == KNOWN[(name, data)]


def test_resnet56_uses_parameter_free_shortcuts():
    model = build_model("resnet56", DataSpec(3, 10, 32))
    shortcuts = [m for n, m in model.named_modules() if n.endswith("shortcut")]
    assert shortcuts and all(sum(p.numel() for p in s.parameters()) == 0 for s in shortcuts)


def test_vgg13_flow_is_conv_relu_batchnorm_with_one_linear_classifier():
    model = build_model("vgg13_flow", DataSpec(3, 10, 32))
    layers = [m for m in model.features if not isinstance(m, nn.MaxPool2d)]
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d] * 10  # BatchNorm after the ReLU
    assert all(m.bias is None for m in layers if isinstance(m, nn.Conv2d))
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    # vgg13 keeps its order and its hidden classifier
    plain = build_model("vgg13", DataSpec(3, 10, 32))
    assert [type(m) for m in plain.features[:3]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    from conftest import compose_config
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="classifier_width"):
        compose_config(["model=vgg13_flow", "model.classifier_width=64"])  # it has none


def test_resnet_shortcut_setting_and_the_authors_resnet56():
    from prune_cli.errors import ConfigError

    spec = DataSpec(3, 10, 32)
    model = build_model("resnet56_flow", spec)
    shortcuts = [m for n, m in model.named_modules() if n.endswith("shortcut")]
    projections = [s for s in shortcuts if not isinstance(s, nn.Identity)]
    assert len(projections) == 2  # where width and stride change: layer2.0, layer3.0
    for s in projections:
        assert [type(m) for m in s] == [nn.Conv2d, nn.BatchNorm2d]
        assert s[0].kernel_size == (1, 1) and s[0].stride == (2, 2) and s[0].bias is None
    # the setting on any CIFAR ResNet; null keeps the name's (option A for resnetN)
    zero_pad = build_model(settings("resnet56_flow", shortcut="zero_pad"), spec)
    assert count_parameters(zero_pad) == KNOWN[("resnet56", "cifar")]
    projected = build_model(settings("resnet20", shortcut="projection"), spec)
    # two 1x1 projections (16 -> 32, 32 -> 64) and their BatchNorms on top of ResNet-20
    extra = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert count_parameters(projected) == KNOWN[("resnet20", "cifar")] + extra
    with pytest.raises(ConfigError, match=r"model\.shortcut must be one of zero_pad, projection"):
        settings("resnet20", shortcut="B")


def test_every_model_has_a_config_and_every_config_a_model():
    assert group_options("model") == MODELS.names()


def test_unknown_model_lists_valid_names():
    from prune_cli.errors import UserError

    with pytest.raises(UserError, match=r"valid models: .*resnet56"):
        build_model("resnet57", DataSpec(3, 10, 32))
