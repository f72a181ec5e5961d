"""Loading a structured method's thinner network (``final_model.pt``) without unpickling a module.

The file holds plain data (``pruning.structured.thin_checkpoint``): the thin network's state dict,
the channels removed from each unit of the dense network, its input shape and classes, and its
registry name when the run recorded it. ``load_thin_model`` reads it with
``torch.load(weights_only=True)`` (so a crafted file cannot run code), builds the dense model from
the registry, removes the stored channels with torch-pruning and loads the weights.

Why here, at the top of the package beside ``experiment``: rebuilding needs both the model
registry (``models/``) and the channel removal (``pruning/structured.py``), and the architecture
lets only the experiment layer import both (``pruning/`` never imports a model; ``models/``
imports nothing but the foundations).

The run's ``config.yaml`` is a file of the run directory, not the user's command: a custom
model's ``model.target`` in it is refused unless the caller passes ``trust_code=True``
(:func:`prune_cli.models.custom.loading_stored_run`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import yaml
from torch import nn

from prune_cli.errors import UserError
from prune_cli.models import ModelConfig, build_model, model_config
from prune_cli.models.custom import UntrustedCode, loading_stored_run
from prune_cli.paths import RunPaths
from prune_cli.pruning.structured import THIN_FORMAT, THIN_VERSION, rebuild_thin
from prune_cli.spec import DataSpec
from prune_cli.stored import is_count


class ThinModelError(UserError):
    """A ``final_model.pt`` that cannot be rebuilt (unreadable, another format, another model)."""


def _known_settings(settings: dict) -> ModelConfig | None:
    """The typed settings of a run's model, or None for settings this prune-run does not know
    (written by another version): the caller then falls back to the model's name."""
    try:
        return model_config(settings)
    except UntrustedCode:
        raise  # not a setting of another version: code the user did not allow to run
    except UserError:
        if settings.get("name") == "custom":
            raise  # its name alone builds nothing: say why its target did not import
        return None


def _model_settings(path: Path, stored: str | None) -> ModelConfig | str:
    """The model's settings from the run's config.yaml beside the file (a model with other
    settings than the name's needs them), else the registry name stored in the file."""
    config = RunPaths(path.parent).config
    settings = None
    if config.is_file():
        try:
            settings = (yaml.safe_load(config.read_text()) or {}).get("model")
        except (yaml.YAMLError, AttributeError):
            settings = None
    if isinstance(settings, dict) and (not stored or settings.get("name") == stored):
        known = _known_settings(settings)
        if known is not None:
            return known
    if stored:
        return stored
    if isinstance(settings, dict) and isinstance(settings.get("name"), str):
        return settings["name"]
    raise ThinModelError(
        f"{path} does not record its model and no run config.yaml beside it names one; "
        "pass the model's registry name: load_thin_model(path, model=<name>)"
    )


def load_thin_model(
    path: str | Path, model: str | None = None, trust_code: bool = False
) -> nn.Module:
    """The thinner network stored at ``path`` by a structured method, on the CPU in eval mode.

    ``model`` (a registry name: default settings) overrides the settings in the run's
    config.yaml and the name stored in the file. ``trust_code=True`` lets a custom model's
    ``model.target`` in those settings be imported (from the installed packages and
    ``PYTHONPATH`` only); without it such a run is refused before anything is imported.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ThinModelError(f"{path} does not exist; pass the path of a final_model.pt") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        # weights_only refuses a pickled module (the format of prune-run before this one)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ThinModelError(
            f"{path} is not a thin-model checkpoint readable without unpickling code "
            f"({type(exc).__name__}: {detail}); an old run's pickled module loads only with "
            "torch.load(path, weights_only=False), and only if you trust the file"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != THIN_FORMAT:
        raise ThinModelError(f"{path} is not a prune-run thin model (no format entry)")
    if checkpoint.get("version") != THIN_VERSION:
        raise ThinModelError(
            f"{path} is version {checkpoint.get('version')} of the thin-model format; this "
            f"prune-run reads version {THIN_VERSION}: use the prune-run that wrote it"
        )
    shape, classes = checkpoint.get("input_shape"), checkpoint.get("num_classes")
    # (C, H, W) and the classes as whole numbers >= 1: a crafted file must not reach the model
    # builder with a word or a negative size
    if not (
        isinstance(shape, list | tuple) and len(shape) == 3 and all(is_count(n, 1) for n in shape)
    ):
        raise ThinModelError(f"{path}: its input_shape is not (channels, height, width)")
    if not is_count(classes, 1):
        raise ThinModelError(f"{path}: its num_classes is not a whole number >= 1")
    with loading_stored_run(path.parent, trust_code):
        settings = model or _model_settings(path, checkpoint.get("model"))
        name = settings if isinstance(settings, str) else settings.name
        channels, height, _ = shape
        dense = build_model(settings, DataSpec(channels, checkpoint["num_classes"], height))
    try:
        return rebuild_thin(dense, checkpoint).eval()
    except (KeyError, RuntimeError, IndexError, ValueError, TypeError, AttributeError) as exc:
        # another architecture, or removed channels that are not lists of indices
        raise ThinModelError(
            f"{path} does not fit model {name!r} ({type(exc).__name__}); pass the model the run "
            "used: load_thin_model(path, model=<name>)"
        ) from None
