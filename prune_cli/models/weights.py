"""Starting weights (``model.weights``): a state-dict file, or torchvision's pretrained weights.

A file is read with ``torch.load(weights_only=True)``, so a crafted pickle cannot run code. It
may hold a state dict, or a mapping with one under ``model`` (a prune-run level file) or
``state_dict`` (most training scripts' checkpoints); every tensor must fit the model built
for this data, else the run stops with one line that names what does not fit.

``pretrained`` loads the torchvision weights that the model's registration pins, from the torch
cache (``$TORCH_HOME/hub/checkpoints``, where torchvision keeps them), downloading them there
when they are missing and a network is there. Pretrained weights are for transfer: the tensors
whose shape differs (the classifier for another number of classes, the stem for small images
or other channels) keep their random initialisation, and the run's log says which.

What identifies the weights in the config hash (``model.weights_id``) is the file's SHA-256, not
its path: where a file lies does not change results (as with ``dataset.root``), and a file that
changes under the same path must not resume, or be shown as, the run of the old weights. For
``pretrained`` it is the torchvision file's name, which carries a prefix of its SHA-256 that
torchvision checks when it downloads.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.errors import ConfigError, UserError

log = logging.getLogger(__name__)

PRETRAINED = "pretrained"


class WeightsError(UserError):
    """Starting weights that cannot be read or do not fit the model."""


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, cached by its path, size and modification time (the hash is asked for
    several times while a config is composed; hashing ResNet-50's 100 MB takes ~0.3 s)."""
    del size, mtime_ns  # the cache key: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _torchvision_weights(pretrained: str) -> Any:
    """The torchvision weights enum member named ``<Enum>.<member>`` (``ResNet50_Weights...``)."""
    import torchvision.models  # only when pretrained weights are asked for (start-up time)

    enum, _, member = pretrained.partition(".")
    return getattr(getattr(torchvision.models, enum), member)


def pretrained_file(pretrained: str) -> tuple[Path, str]:
    """Where the torch cache keeps the pinned torchvision weights, and their URL."""
    url = _torchvision_weights(pretrained).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def weights_identity(weights: str | None, pretrained: str | None) -> str | None:
    """``model.weights_id``: ``sha256:<hex>`` of a file, ``torchvision:<file name>`` for
    ``pretrained`` (``pretrained``: the model's pinned torchvision weights, if any)."""
    if weights is None:
        return None
    if weights == PRETRAINED:
        return None if pretrained is None else f"torchvision:{pretrained_file(pretrained)[0].name}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.weights={weights}: no such file; give the path of a state dict saved with "
            "torch.save(model.state_dict(), PATH), or model.weights=pretrained"
        )
    return f"sha256:{file_sha256(path)}"


def _state_dict(value: Any) -> dict[str, Tensor] | None:
    """The state dict in what a file holds, or None when it holds none."""
    if not isinstance(value, Mapping):
        return None
    for candidate in (value, value.get("model"), value.get("state_dict")):
        if (
            isinstance(candidate, Mapping)
            and candidate
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in candidate.items())
        ):
            return dict(candidate)
    return None


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """The state dict of a weights file, or a one-line ``WeightsError`` (``what`` names it)."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{what}: {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        lines = str(exc).strip().splitlines()
        unsafe = next((ln for ln in lines if "Unsupported global" in ln), None)
        if unsafe is not None:  # weights_only met a class or function it would have to call
            found = unsafe.split("GLOBAL", 1)[-1].split()[0] if "GLOBAL" in unsafe else "an object"
            raise WeightsError(
                f"{what}: {path} holds pickled objects ({found}) that loading would run as code, "
                "not only tensors; save the state dict: torch.save(model.state_dict(), PATH)"
            ) from None
        raise WeightsError(
            f"{what}: {path} is truncated, corrupt or not a torch file ({type(exc).__name__}); "
            "save the weights with torch.save(model.state_dict(), PATH)"
        ) from None
    state = _state_dict(value)
    if state is None:
        raise WeightsError(
            f"{what}: {path} holds no state dict (a mapping of names to tensors, alone or under "
            "'model' or 'state_dict'); save one with torch.save(model.state_dict(), PATH)"
        )
    return state


def _mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[list, list, list]:
    """(missing names, unexpected names, (name, file shape, model shape) of other shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    return missing, unexpected, shapes


def _describe(missing: list, unexpected: list, shapes: list) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if shapes:
        name, theirs, ours = shapes[0]
        parts.append(
            f"{len(shapes)} of another shape (first: {name}, file {list(theirs)}, "
            f"model {list(ours)})"
        )
    return "; ".join(parts)


def load_file(model: nn.Module, name: str, path: Path) -> None:
    """Load every tensor of the file at ``path`` into ``model``: all must be there and fit."""
    what = f"model.weights={path}"
    state = read_state_dict(path, what)
    missing, unexpected, shapes = _mismatch(model, state)
    if missing or unexpected or shapes:
        raise WeightsError(
            f"{what} does not fit model {name} with these settings and this data "
            f"({_describe(missing, unexpected, shapes)}); give weights saved from the same model"
        )
    model.load_state_dict(state)


def _pretrained_state(name: str, pretrained: str) -> dict[str, Tensor]:
    path, url = pretrained_file(pretrained)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # torchvision's file names carry a prefix of their SHA-256: checked, as torchvision does
            prefix = torch.hub.HASH_REGEX.search(path.name)
            torch.hub.download_url_to_file(
                url, str(path), hash_prefix=prefix.group(1) if prefix else None, progress=False
            )
        except Exception as exc:  # no network, a proxy, a full disk: one line, and what to do
            raise WeightsError(
                f"model.weights=pretrained: torchvision's {pretrained} for {name} are not in "
                f"{path.parent} and could not be downloaded ({type(exc).__name__}); copy "
                f"{path.name} from {url} there (TORCH_HOME moves the cache)"
            ) from None
    return read_state_dict(path, f"model.weights=pretrained ({pretrained})")


def load_pretrained(model: nn.Module, name: str, pretrained: str) -> None:
    """Load torchvision's weights into the tensors of the same name and shape; the others (the
    classifier, an adapted stem) keep their initialisation."""
    state = _pretrained_state(name, pretrained)
    missing, unexpected, shapes = _mismatch(model, state)
    other_shape = {s[0] for s in shapes}
    fitting = {k: v for k, v in state.items() if k not in unexpected and k not in other_shape}
    own = model.state_dict()
    if missing or unexpected or len(fitting) < len(own) // 2:
        raise WeightsError(
            f"model.weights=pretrained: torchvision's {pretrained} do not fit model {name} with "
            f"these settings ({_describe(missing, unexpected, shapes)}); pretrained weights "
            "need the model's default architecture settings"
        )
    model.load_state_dict(fitting, strict=False)
    if shapes:
        log.info(
            "pretrained %s: %d of %d tensors loaded; %s keep their initialisation (their shape "
            "differs for this data)",
            pretrained,
            len(fitting),
            len(own),
            ", ".join(s[0] for s in shapes),
        )


def load_weights(model: nn.Module, name: str, weights: str, pretrained: str | None) -> None:
    """Load ``model.weights`` into a freshly built ``model``."""
    if weights == PRETRAINED:
        assert pretrained is not None, "checked when the config is composed"
        load_pretrained(model, name, pretrained)
    else:
        load_file(model, name, Path(weights).expanduser())
