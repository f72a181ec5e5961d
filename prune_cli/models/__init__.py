"""Model registry: ``build_model(settings, spec)`` is the one factory; builders register themselves.

Every builder takes a :class:`~prune_cli.spec.DataSpec` and its model's settings, and adapts to
the data's channels, classes and image size (a ResNet-56 runs on 8x8 digits as on 32x32 CIFAR).

A model's settings are a typed dataclass declared beside its builder in the model's own file
(``CifarResNetConfig`` with ``depth`` and ``width``), registered with it::

    @register_model("resnet56", CifarResNetConfig)
    def resnet56(spec: DataSpec, cfg: CifarResNetConfig) -> nn.Module: ...

``config.register_configs`` stores each model's dataclass in Hydra's ConfigStore as
``schema/model/<name>``, which the model's YAML names, so ``model.depth=abc`` or a setting the
model does not have fails when the config is composed, and impossible values (a depth that is
not 6n + 2) fail in ``__post_init__``. Every setting defaults to null, which means "the model
as its name says" (timm's rule for kwargs): a null is left out of the config hash, so adding a
setting keeps the hashes, and run directories, of earlier runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.models.weights import load_weights, weights_identity
from prune_cli.registry import Registry, import_submodules
from prune_cli.spec import DataSpec


@dataclass
class ModelConfig:
    """Settings every model has. A model's own dataclass adds its architecture's settings."""

    name: str = MISSING
    #: starting weights: a state-dict file (loaded with weights_only, every tensor must fit), or
    #: ``pretrained``: torchvision's ImageNet weights of the model (resnet18/50/101,
    #: mobilenet_v2) from the torch cache, where the classifier (and a small-image stem) that
    #: do not fit the data keep their random initialisation. null: random initialisation
    weights: str | None = None
    #: what identifies the weights in the config hash, computed from ``weights``: the file's
    #: SHA-256 (so the same file anywhere is the same run, and a changed file a new one), or
    #: the torchvision file's name. Not a setting: leave it alone
    weights_id: str | None = "${prune_weights_id:${.name},${.weights}}"

    def __post_init__(self) -> None:
        entry = MODELS.get(self.name)  # an unknown name: one line listing the valid names
        if not isinstance(self, entry.Config):
            raise ConfigError(
                f"model.name={self.name} needs the settings of model={self.name}, not those of "
                f"{type(self).__name__}: choose the model with model={self.name}"
            )
        if self.weights == "pretrained" and entry.pretrained is None:
            with_weights = ", ".join(n for n in MODELS.names() if MODELS.get(n).pretrained)
            raise ConfigError(
                f"model {self.name} has no pretrained weights (models that have: {with_weights}); "
                "give a state-dict file: model.weights=PATH"
            )
        identity = weights_identity(self.weights, entry.pretrained)  # a missing file: one line
        if self.weights_id is None or self.weights_id.startswith("${"):
            self.weights_id = identity  # built in Python, not composed by Hydra
        elif self.weights_id != identity:
            raise ConfigError(
                "model.weights_id is computed from model.weights and cannot be set; set "
                "model.weights instead"
            )

    def architecture(self) -> ModelConfig:
        """These settings without the starting weights: what rebuilds the network's shape."""
        return dataclasses.replace(self, weights=None, weights_id=None)


def positive(cfg: ModelConfig, *keys: str) -> None:
    """Refuse settings that are set and not positive (widths, depths, multipliers)."""
    for key in keys:
        value = getattr(cfg, key)
        values = value if isinstance(value, list | tuple) else [value]
        if value is not None and (not values or any(v <= 0 for v in values)):
            raise ConfigError(f"model.{key} must be positive, got {value}")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, its settings dataclass, its torchvision weights."""

    build: Callable[[DataSpec, Any], nn.Module]
    Config: type[ModelConfig]
    #: torchvision weights that ``model.weights=pretrained`` loads, as ``<Enum>.<member>``
    #: (pinned: torchvision's DEFAULT may change between versions, results must not)
    pretrained: str | None = None


MODELS: Registry[ModelEntry] = Registry("model")
ModelBuilder = Callable[[DataSpec, Any], nn.Module]


def register_model(
    name: str, config: type[ModelConfig] = ModelConfig, pretrained: str | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(spec, cfg)`` under ``name`` with its settings dataclass."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        MODELS.register(name)(ModelEntry(builder, config, pretrained))
        return builder

    return decorate


def model_config(settings: str | Mapping[str, Any], *, weights: bool = False) -> ModelConfig:
    """The typed settings of a model from its name or a stored ``model`` mapping (a run's
    ``config.yaml``); without the starting weights unless ``weights`` (a rebuild needs only the
    architecture, and the weights file may have moved since)."""
    if isinstance(settings, str):
        settings = {"name": settings}
    entry = MODELS.get(str(settings.get("name")))
    fields = {f.name for f in dataclasses.fields(entry.Config)}
    given = {k: v for k, v in settings.items() if k in fields}
    if not weights:
        given.update(weights=None, weights_id=None)
    return entry.Config(**given)


def build_model(settings: str | ModelConfig, spec: DataSpec) -> nn.Module:
    """The model named (default settings) or described by ``settings``, with its starting
    weights loaded when ``settings.weights`` is set."""
    cfg = model_config(settings) if isinstance(settings, str) else settings
    entry = MODELS.get(cfg.name)
    model = entry.build(spec, cfg)
    if cfg.weights is not None:
        load_weights(model, cfg.name, cfg.weights, entry.pretrained)
    return model


def weights_id(name: str, weights: str | None) -> str | None:
    """``model.weights_id`` of the named model's ``weights`` (the ``prune_weights_id`` resolver
    that the config's default interpolates)."""
    if weights is None or name not in MODELS:
        return None  # an unknown name is refused with the valid names by ``__post_init__``
    try:
        return weights_identity(weights, MODELS.get(name).pretrained)
    except ConfigError:
        return None  # a missing file: ``__post_init__`` refuses it with its one-line error


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


import_submodules(__name__)
