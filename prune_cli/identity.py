"""What identifies a run's results: the config hash, and which settings enter it.

A small foundation below the run store and the report side. It imports neither torch nor
Hydra (OmegaConf only, and only when handed an OmegaConf node), so ``prune-report`` can group
stored runs where torch is not installed, with the same rules the store uses to name and
guard them.

The hash follows open_lth's rule: null values are left out, so a new setting whose default is
null (changes nothing) keeps the hashes of existing runs valid. A new mapping setting, whose
default must be an empty mapping for the command line to fill it, is left out while empty
(``EMPTY_BY_DEFAULT``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: keys (dotted paths) that do not change results: left out of the config hash, so changing
#: them never blocks a resume (where files are, how fast they load, what is displayed)
NON_RESULT_KEYS = (
    "overwrite",
    "progress",
    "heartbeat_s",
    "output_root",
    "device",
    "dataset.root",
    # where the weights file lies; what it holds is model.weights_id (its SHA-256)
    "model.weights",
    "dataset.download",
    "dataset.num_workers",
    "train.eval_batch_size",
    "train.compile",
    "train.compile_mode",
    "train.cudnn_benchmark",
    "train.cuda_graphs",
    "logger",
    "checkpoint_every",
    # automatic dense sharing: the same results with and without (tests/test_dense_sharing.py)
    "share_dense",
    "share_dense_stale_s",
    # what a run returns to a search (prune_cli/objective.py): a search reuses finished runs
    "objective",
    "objective_tolerance",
)

#: settings whose default is an empty mapping, added after runs were stored: left out of the
#: hash while empty, as a null is, so those runs' hashes stay valid. (Their default cannot be
#: null: OmegaConf 2.3 cannot merge a command line's ``{key: value}`` into a null mapping.)
EMPTY_BY_DEFAULT = ("method.round_to_layers",)

#: Dataset settings that runs stored before each dataset had its own settings (2026-11) carry
#: although their dataset never read them: that version gave every dataset one schema (name,
#: root, download, val_size, test_size, split_seed, augment, limit_train, image_size,
#: num_workers, data_id). Since then each dataset's schema holds only what it reads, so a run
#: stored now has none of these, and this table (that old schema minus each dataset's current
#: one) never grows: a dataset added later had no such runs. tests/test_config.py checks that
#: no dataset has since started reading one of them.
LEGACY_UNREAD: dict[str, tuple[str, ...]] = {
    "digits": ("root", "download", "augment", "image_size", "num_workers", "data_id"),
    "mnist": ("test_size", "augment", "image_size", "num_workers", "data_id"),
    "fashion_mnist": ("test_size", "augment", "image_size", "num_workers", "data_id"),
    "cifar10": ("test_size", "image_size", "num_workers", "data_id"),
    "cifar100": ("test_size", "image_size", "num_workers", "data_id"),
    "imagenet": ("download", "test_size", "data_id"),
    "folder": ("download",),
}


def only_dataset_settings(container: dict[str, Any]) -> None:
    """Keep of ``dataset`` the settings its dataset reads (in place). Compared on what the
    dataset reads, a run stored before each dataset had its own settings shows no false
    differences (a refusal to resume, a report's varied keys)."""
    dataset = container.get("dataset")
    if isinstance(dataset, dict):
        unread = LEGACY_UNREAD.get(str(dataset.get("name")), ())
        container["dataset"] = {k: v for k, v in dataset.items() if k not in unread}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    """Numbers as floats: ``[[1, 2]]`` and the validated ``[[1.0, 2.0]]`` hash alike."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _container(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config: a dict, an OmegaConf node or a config dataclass."""
    if isinstance(cfg, dict):
        container: Any = json.loads(json.dumps(cfg, default=str))
    else:
        from omegaconf import DictConfig, OmegaConf  # only the write side hands nodes in

        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
        container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict)
    return container


def result_settings(cfg: Any) -> dict[str, Any]:
    """The settings that change results, as a plain nested dict (no nulls, no Hydra node)."""
    container = _container(cfg)
    container.pop("hydra", None)
    only_dataset_settings(container)
    for dotted in (*NON_RESULT_KEYS, *EMPTY_BY_DEFAULT):
        *parents, leaf = dotted.split(".")
        node = container
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and (dotted in NON_RESULT_KEYS or node.get(leaf) == {}):
            node.pop(leaf, None)
    return _canonical(_without_nulls(container))


def config_hash(cfg: Any) -> str:
    """Short hash of everything that changes results (not device, paths, speed or display)."""
    blob = json.dumps(result_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def differing_keys(a: Any, b: Any) -> list[str]:
    """The dotted keys whose result-relevant values differ between two configs."""
    fa, fb = _flatten(result_settings(a)), _flatten(result_settings(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
