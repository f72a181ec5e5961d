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

A stored run is not the user's command: its ``config.yaml`` and level files are files anyone who
can write the run directory may have crafted, and a target in them names code to import. Loading
a stored run (``prune-export``, ``load_run(...).model()``, ``load_thin_model``) therefore happens
inside :func:`loading_stored_run`, which refuses a target, before anything is imported (not even
a standard module), unless the user passed ``--trust-code`` / ``trust_code=True``; even then the
module is imported from the installed packages and ``PYTHONPATH`` only, never from the current
directory or the run directory, where a crafted ``.py`` file may lie.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
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


class UntrustedCode(UserError):
    """A stored run names code to import and the user did not allow it (``trust_code``)."""


@dataclass(frozen=True)
class _StoredRun:
    source: Path  # the run directory or file being loaded
    trusted: bool


#: set while a stored run is loaded; None while the user's own command builds its model
_LOADING: ContextVar[_StoredRun | None] = ContextVar("prune_cli_loading_stored_run", default=None)


@contextlib.contextmanager
def loading_stored_run(source: str | Path, trust_code: bool = False) -> Iterator[None]:
    """Build models from a stored run's settings: a ``model.target`` in them is refused unless
    ``trust_code``, and imported, if trusted, without the current or the run directory."""
    token = _LOADING.set(_StoredRun(Path(source), bool(trust_code)))
    try:
        yield
    finally:
        _LOADING.reset(token)


def _implicit_paths(source: Path) -> set[str]:
    """``sys.path`` entries that are the current directory or the run's, unless the user named
    them in ``PYTHONPATH`` (an explicit choice)."""
    explicit = {
        os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    }
    cwd = os.path.realpath(os.getcwd())
    run = {os.path.realpath(p) for p in (source, source.parent)}
    implicit = set()
    for entry in sys.path:
        real = os.path.realpath(entry or ".")
        if (entry == "" or real == cwd or real in run) and real not in explicit:
            implicit.add(entry)
    return implicit


def _import_stored(module_name: str, stored: _StoredRun) -> Any:
    """Import a trusted stored run's module with the implicit directories off ``sys.path`` for
    the duration (a ``.py`` file in the run folder must not shadow the user's package)."""
    hidden = _implicit_paths(stored.source)
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if p not in hidden]
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path[:] = saved


def _refusal(target: str, stored: _StoredRun) -> UntrustedCode:
    return UntrustedCode(
        f"{stored.source} names code to import (model.target={target}); prune-run does not run "
        "code named by a run's files: if you trust the run and that module is installed, pass "
        "--trust-code to prune-export or trust_code=True to load_run / load_thin_model"
    )


def resolve_target(target: str) -> Callable[..., Any]:
    """The builder named by ``target``, or a one-line ``ConfigError`` that says what is wrong.

    While a stored run is loaded (:func:`loading_stored_run`) an untrusted target is refused
    here, before its name is even parsed into a module to import."""
    stored = _LOADING.get()
    if stored is not None and not stored.trusted:
        raise _refusal(target, stored)
    module_name, attr = _split(target)
    if stored is None:
        cwd = os.getcwd()
        if cwd not in sys.path:
            # a console script's sys.path lacks the current directory (python -m has it): a
            # researcher's module beside the command should import as with `python -m`
            sys.path.append(cwd)
    try:
        if stored is None:
            module = importlib.import_module(module_name)
        else:
            module = _import_stored(module_name, stored)
    except Exception as exc:  # not found, or the user's module failed while importing
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ConfigError(
            f"model.target={target}: cannot import {module_name} ({type(exc).__name__}: "
            f"{detail}); install it, add its folder to PYTHONPATH"
            + (", or run from the folder that holds it" if stored is None else "")
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
