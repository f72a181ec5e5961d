"""A model from the user's own code: ``model=custom model.target=my_pkg.nets:build``.

The target is ``module:function`` (the ``module.function`` form works too); the module is
imported from the installed packages, ``PYTHONPATH`` or the current directory. The function is
called as ``function(spec, **model.args)``: ``spec`` is the data's
:class:`~prune_cli.spec.DataSpec` (``channels``, ``num_classes``, ``image_size``,
``input_shape``) and ``model.args`` the builder's own keyword arguments
(``'+model.args.width=64'``), so one builder serves every dataset as the registered models do.
It must return an ``nn.Module`` that maps (B, C, H, W) images to (B, classes) logits.

The target is imported, and found callable, when the config is composed, so a misspelt module
fails at once with one line. What names a run is the target and its arguments, not the code:
after changing the builder's code, run with ``overwrite=true`` or give it another name.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError, UserError
from prune_cli.models import ModelConfig, register_model
from prune_cli.spec import DataSpec


@dataclass
class CustomModelConfig(ModelConfig):
    #: the builder, ``package.module:function``, called as ``function(spec, **args)``
    target: str | None = None
    #: keyword arguments of the builder (``'+model.args.width=64'``)
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target:
            raise ConfigError(
                "model=custom needs model.target=package.module:function, the function that "
                "builds your model"
            )
        resolve_target(self.target)


def _split(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    if not module or not attr or not all(p.isidentifier() for p in [*module.split("."), attr]):
        raise ConfigError(
            f"model.target={target!r} is not 'package.module:function'; name the function that "
            "builds your model, for example model.target=my_pkg.nets:build"
        )
    return module, attr


def resolve_target(target: str) -> Callable[..., Any]:
    """The builder named by ``target``, or a one-line ``ConfigError`` that says what is wrong."""
    module_name, attr = _split(target)
    cwd = os.getcwd()
    if cwd not in sys.path:
        # a console script's sys.path lacks the current directory (python -m has it): a
        # researcher's module beside the command should import as with `python -m`
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not found, or the user's module failed while importing
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ConfigError(
            f"model.target={target}: cannot import {module_name} ({type(exc).__name__}: "
            f"{detail}); install it, add its folder to PYTHONPATH, or run from the folder that "
            "holds it"
        ) from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ConfigError(
            f"model.target={target}: {module_name} has no function {attr!r}; name the function "
            "that builds the model"
        )
    return builder


@register_model("custom", CustomModelConfig)
def custom(spec: DataSpec, cfg: CustomModelConfig) -> nn.Module:
    assert cfg.target is not None, "checked when the config is composed"
    builder = resolve_target(cfg.target)
    try:
        signature: inspect.Signature | None = inspect.signature(builder)
    except ValueError:  # no signature to inspect (a builtin): the call itself says what fails
        signature = None
    if signature is not None:
        try:  # bind first: a TypeError raised inside the user's code is theirs, with its traceback
            signature.bind(spec, **cfg.args)
        except TypeError as exc:
            raise UserError(
                f"model.target={cfg.target} refused its arguments ({exc}); it is called as "
                f"{cfg.target.replace(':', '.')}(spec, **model.args) with model.args="
                f"{dict(cfg.args)}"
            ) from None
    model = builder(spec, **cfg.args)
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model.target={cfg.target} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model
