"""The shapes of a stored run's files, checked before anything uses them.

Run directories travel (copied between machines, unpacked from a colleague's tarball), so a
``summary.json`` or a level file may hold what prune-run never writes: ``levels`` as a string,
a level entry without ``level``, ``model_info.channels`` as a word. Each reader
(``prune-report``, ``prune-export``, ``load_run``) checks the parts it uses here, with one
definition of what a valid file holds, and turns :class:`Unreadable` into its own one-line
error naming the file: a report lists the run as unreadable and goes on, an export or the API
refuses it.

A foundation module: it imports nothing else from the package (torch only inside
:func:`check_level_state`, so that the report side stays torch-free).
"""

from __future__ import annotations

import json
import math
from typing import Any


class Unreadable(Exception):
    """A stored file that holds what prune-run never writes; the message says what, without
    the file's path (the caller names the file in its own way)."""


def is_number(value: Any) -> bool:
    """A finite int or float; a bool is not one (JSON ``true`` would count as 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any, least: int = 0) -> bool:
    """A whole number (an int, not a bool or a float) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def shown(value: Any) -> str:
    """A bad value as a message quotes it: short, on one line."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _number_or_null(value: Any) -> bool:
    """A stored measure: a number (NaN and infinities too: they are numbers a mean can take)
    or null."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


#: the fields of a summary level entry that hold a number or null (measured before the field
#: existed, or not defined there); the report averages them
LEVEL_NUMBERS = (
    "params_nonzero",
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "test_loss",
    "pruned_test_accuracy",
    "mask_sparsity",
    "selected_epoch",
    "epochs",
    "pqi",
    "gini",
    "params",
    "macs_dense",
    "macs_sparse",
    "units_no_incoming",
    "units_no_outgoing",
    "alpha",
)

#: the summary's fields that name the run; the report groups by them, so each must be text
#: (or absent) and the seed a whole number
IDENTITY_TEXT = ("status", "dataset", "model", "method")


def level_numbers(levels: Any) -> list[int]:
    """The level numbers of a summary's ``levels``: a list of mappings, each with a distinct
    whole ``level`` of at least 0 (what every reader of a level needs)."""
    if not isinstance(levels, list):
        raise Unreadable(f"summary levels is not a list (it is {type(levels).__name__})")
    numbers = []
    for i, entry in enumerate(levels):
        if not isinstance(entry, dict):
            raise Unreadable(f"summary level entry {i} is not a mapping")
        if "level" not in entry:
            raise Unreadable(f"summary level entry {i} has no level")
        if not is_count(entry["level"]):
            raise Unreadable(
                f"summary level entry {i} has a level that is not a whole number >= 0 "
                f"({shown(entry['level'])})"
            )
        numbers.append(entry["level"])
    if len(set(numbers)) != len(numbers):  # a report row's mean would count that run twice
        raise Unreadable("summary lists a level twice")
    return numbers


def check_levels(levels: Any) -> list[dict[str, Any]]:
    """A summary's ``levels`` as the report averages them: :func:`level_numbers`' checks, a
    ``sparsity`` in [0, 1], the measures numbers or null, ``collapsed`` true/false."""
    level_numbers(levels)
    for i, level in enumerate(levels):
        if "sparsity" not in level:
            raise Unreadable(f"summary level entry {i} has no sparsity")
        if not is_number(level["sparsity"]):
            raise Unreadable(f"summary level entry {i} has a non-numeric sparsity")
        if not 0.0 <= level["sparsity"] <= 1.0:  # a fraction of the weights removed
            raise Unreadable(
                f"summary level entry {i} has a sparsity outside [0, 1] ({level['sparsity']})"
            )
        for key in LEVEL_NUMBERS:
            if not _number_or_null(level.get(key)):
                raise Unreadable(
                    f"summary.json: level entry {i} has a non-numeric {key} ({shown(level[key])})"
                )
        collapsed = level.get("collapsed")
        if collapsed is not None and not isinstance(collapsed, bool):
            raise Unreadable(
                f"summary.json: level entry {i} has a collapsed that is not true/false "
                f"({shown(collapsed)})"
            )
    return levels


def check_identity(summary: dict[str, Any]) -> None:
    """The fields that name a run (status, dataset, model, method: text; seed: a whole number),
    where present."""
    for key in IDENTITY_TEXT:
        if summary.get(key) is not None and not isinstance(summary[key], str):
            raise Unreadable(f"summary {key} is not text ({shown(summary[key])})")
    seed = summary.get("seed")
    if seed is not None and not is_count(seed, least=-(2**63)):
        raise Unreadable(f"summary seed is not a whole number ({shown(seed)})")
    reason = summary.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise Unreadable(f"summary reason is not text ({shown(reason)})")


def inside_run(name: Any) -> bool:
    """Whether ``name``, a path a summary records, stays inside the run directory: relative,
    without ``..`` (a crafted summary must not make a reader open a file elsewhere)."""
    if not isinstance(name, str) or not name or "\0" in name:
        return False
    parts = name.replace("\\", "/").split("/")
    return not name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def check_files(files: Any) -> dict[str, Any]:
    """A summary's ``files``: relative paths inside the run -> {bytes, sha256} (a name that
    leaves the run directory would make a reader look at another file)."""
    if not isinstance(files, dict):
        raise Unreadable(f"summary files is not a mapping (it is {type(files).__name__})")
    for name, entry in files.items():
        if not inside_run(name):
            raise Unreadable(f"summary files names {shown(name)}, outside the run directory")
        if not isinstance(entry, dict):
            raise Unreadable(f"summary files entry {shown(name)} is not a mapping")
        if "bytes" in entry and not is_count(entry["bytes"]):
            raise Unreadable(f"summary files entry {shown(name)} has a size that is no count")
    return files


#: the entries of ``model_info`` that give the data's shape, each a whole number >= 1
MODEL_INFO_COUNTS = ("channels", "num_classes", "image_size")


def check_model_info(info: Any) -> dict[str, Any]:
    """A level file's ``model_info``: the registry name (text), the data's shape (whole numbers
    >= 1) and the model's settings (null, a name or a mapping with a name)."""
    if not isinstance(info, dict):
        raise Unreadable(f"its model_info is not a mapping ({shown(info)})")
    if not isinstance(info.get("name"), str):
        raise Unreadable(f"its model_info.name is not a model name ({shown(info.get('name'))})")
    for key in MODEL_INFO_COUNTS:
        if key not in info:
            raise Unreadable(f"its model_info has no {key}")
        if not is_count(info[key], least=1):
            raise Unreadable(
                f"its model_info.{key} is not a whole number >= 1 ({shown(info[key])})"
            )
    settings = info.get("settings")
    if settings is not None and not isinstance(settings, str | dict):
        raise Unreadable(f"its model_info.settings is not a mapping ({shown(settings)})")
    if isinstance(settings, dict) and not isinstance(settings.get("name"), str):
        raise Unreadable("its model_info.settings has no model name")
    return info


def check_level_state(state: Any) -> dict[str, Any]:
    """A level file (``levels/level_<k>/model.pt``) as loaded: a mapping with ``model``
    (tensor name -> tensor), ``mask`` (tensor name -> tensor) and a valid ``model_info``."""
    import torch

    if not isinstance(state, dict):
        raise Unreadable("it is not a prune-run level model (not a mapping)")
    missing = [k for k in ("model", "mask", "model_info") if k not in state]
    if missing:
        raise Unreadable(f"it is not a prune-run level model (no {', '.join(missing)})")
    for key in ("model", "mask"):
        tensors = state[key]
        if not isinstance(tensors, dict):
            raise Unreadable(f"its {key} is not a mapping of tensors")
        for name, value in tensors.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise Unreadable(f"its {key} entry {shown(name)} is not a tensor")
    check_model_info(state["model_info"])
    return state
