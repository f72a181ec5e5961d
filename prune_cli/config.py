"""The run's typed config (the entry layer): a schema for each group, in Hydra's ConfigStore.

This module sits beside the CLI, above the experiment: it gathers the settings dataclasses that
``models``, ``data``, ``training`` and ``pruning`` define and composes them into ``RunConfig``;
it names run directories by the config hash (:mod:`prune_cli.identity`).

``dataset`` and ``train`` are single dataclasses; each model and each method has its own config
dataclass (registered with it), which its YAML extends through its defaults list
(``- /schema/model@_here_: <name>``, ``- /schema/method@_here_: <name>``). So a misspelt key or
a wrong type fails when Hydra composes the config, and impossible values fail in
``__post_init__`` when :func:`to_run_config` turns the composed config into objects, before
anything runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prune_cli import objective
from prune_cli.data import DATASET_CONFIGS, DatasetConfig, data_identity
from prune_cli.errors import ConfigError, UserError
from prune_cli.identity import (  # noqa: F401  (re-exported: the entry layer's names)
    NON_RESULT_KEYS,
    config_hash,
    differing_keys,
    only_dataset_settings,
    result_settings,
)
from prune_cli.models import MODELS, ModelConfig, weights_id
from prune_cli.pruning.method import METHODS, MethodConfig
from prune_cli.pruning.methods import __name__ as _methods  # noqa: F401  (registers methods)
from prune_cli.training.config import TrainConfig

#: the config tree, shipped inside the package (so a wheel install has it), or $PRUNE_RUN_CONF
CONF_DIR = Path(os.environ.get("PRUNE_RUN_CONF", Path(__file__).resolve().parent / "conf"))


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: its YAML files' names."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


@dataclass
class RunConfig:
    #: the model's own settings dataclass (``prune_cli/models/``), chosen by model=NAME
    model: Any = MISSING
    #: the dataset's own settings dataclass (``prune_cli/data/``), chosen by dataset=NAME
    dataset: Any = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    method: Any = MISSING
    seed: int = 0
    #: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:<n>``
    device: str = "auto"
    #: start afresh in a run directory that holds results (they are deleted)
    overwrite: bool = False
    #: rich progress bars for epochs and batches
    progress: bool = True
    #: with ``progress`` and stdout not a terminal (a log file), a line every this many seconds
    #: of an epoch (steps done, images/s, time left); 0: none
    heartbeat_s: float = 60.0
    #: (p, q) pairs of the PQ index logged in pqi.csv
    pqi_grid: list[Any] = field(default_factory=lambda: [[0.5, 1.0], [1.0, 2.0]])
    output_root: str = "outputs"
    #: write the resumable checkpoint every N epochs (and at every level's end); a resume
    #: repeats at most N - 1 epochs and still ends with the same results
    checkpoint_every: int = 1
    #: reuse the dense level 0 of another run directory (same model, dataset, train, seed):
    #: prune one trained model with many methods and ratios without training it again
    dense_from: str | None = None
    #: share one trained dense level among the runs whose level 0 is the same plain dense
    #: training (same model, data, train, seed; any sharing method): trained once under
    #: ``<output_root>/dense/`` and reused; false trains each run's own (the same results)
    share_dense: bool = True
    #: a shared dense training whose lock has shown no heartbeat for this many seconds is taken
    #: to be dead (its job killed on another host) and is taken over and resumed
    share_dense_stale_s: float = 120.0
    #: analyses of the run, by name, with their settings (``analysis=[limit]``,
    #: ``prune_cli/conf/analysis/``); null when none is chosen, so existing hashes stay
    analysis: dict[str, Any] | None = None
    #: an experiment tracker and its settings (``logger=tensorboard``, ``logger=mlflow``;
    #: ``prune_cli/conf/logger/``); it only mirrors results, so it is not in the hash
    logger: dict[str, Any] | None = None
    #: what the run returns to a hyperparameter search (``hparams_search=NAME``): null (nothing),
    #: ``last_val_accuracy`` or ``max_sparsity_within`` (``prune_cli/objective.py``); not hashed
    objective: str | None = None
    #: accuracy points below the dense validation accuracy that ``max_sparsity_within`` allows
    objective_tolerance: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            # torch.manual_seed takes at most 64 bits: a larger seed overflowed mid-run
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if not str(self.output_root).strip():
            # an empty root put the runs at the filesystem's root (/runs/...)
            raise ConfigError("output_root is empty; give a folder (output_root=outputs)")
        if not self.share_dense_stale_s > 0:
            raise ConfigError(f"share_dense_stale_s must be > 0, got {self.share_dense_stale_s}")
        if self.heartbeat_s < 0:
            raise ConfigError(f"heartbeat_s must be >= 0 (0: no heartbeat), got {self.heartbeat_s}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:<n>, got {self.device!r}")
        grid = []
        for pair in self.pqi_grid:
            try:
                p, q = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise ConfigError(f"pqi_grid entries must be [p, q] pairs, got {pair}") from None
            if not 0 < p < q:
                raise ConfigError(f"pqi_grid entries must be [p, q] with 0 < p < q, got {pair}")
            grid.append([p, q])
        self.pqi_grid = grid
        from prune_cli.analysis import check  # the pruning-limit code is only needed here

        check(self.analysis)
        from prune_cli import trackers

        trackers.check(self.logger)
        if not isinstance(self.dataset, DatasetConfig):
            raise ConfigError("dataset must be chosen from the dataset config group (dataset=NAME)")
        objective.check(self.objective, self.objective_tolerance, self.dataset.val_size)
        if not isinstance(self.model, ModelConfig):
            raise ConfigError("model must be chosen from the model config group (model=NAME)")
        if not isinstance(self.method, MethodConfig):
            raise ConfigError("method must be chosen from the method config group (method=NAME)")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for name in MODELS:
        # the schema with its name filled in, so that a model's YAML is its schema line alone;
        # a DictConfig, not an instance, keeps the ``weights_id`` interpolation unresolved
        node = OmegaConf.structured(MODELS.get(name).Config)
        node.name = name
        cs.store(group="schema/model", name=name, node=node)
    for name in METHODS:
        cs.store(group="schema/method", name=name, node=METHODS.get(name).Config)
    for name in DATASET_CONFIGS:
        node = OmegaConf.structured(DATASET_CONFIGS.get(name))
        node.name = name
        cs.store(group="schema/dataset", name=name, node=node)


def _unknown_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys of ``node`` that its schema dataclass does not declare (added with ``+key=...``)."""
    if not isinstance(node, DictConfig):
        return []
    schema = OmegaConf.get_type(node)
    declared = (
        {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    )
    found = []
    for key in node:
        path = f"{prefix}{key}"
        if declared is not None and key not in declared and path != "hydra":
            found.append(path)
        elif key != "hydra":
            found += _unknown_keys(node._get_node(key), f"{path}.")
    return found


def other_method_setting(key: str, schema: Any) -> str | None:
    """The error for ``method.<key>`` given to a method (settings class ``schema``) that lacks
    it while other methods have it (``method.latency_target`` with ``method=magnitude``): the
    methods to choose instead. None where no other method has it, or this one does."""
    if not dataclasses.is_dataclass(schema) or key in {f.name for f in dataclasses.fields(schema)}:
        return None
    owners = [
        n for n in METHODS if key in {f.name for f in dataclasses.fields(METHODS.get(n).Config)}
    ]
    # the method that defines the setting first, before those whose settings extend its own
    owners.sort(key=lambda n: len(METHODS.get(n).Config.__mro__))
    if not owners:
        return None
    this = next((n for n in METHODS if METHODS.get(n).Config is schema), None)
    return (
        f"method.{key} is not a setting of method={this or schema.__name__}, only of "
        f"{' and '.join(f'method={n}' for n in owners)}: choose one of them "
        f"(method={owners[0]} method.{key}=...)"
    )


def not_a_method_setting(cause: BaseException) -> str | None:
    """:func:`other_method_setting` for OmegaConf's error about a key the chosen method's
    settings class lacks, read from the error itself (its key, full key and class); None for
    any other error."""
    key, full_key = getattr(cause, "key", None), getattr(cause, "full_key", None)
    if not key or full_key != f"method.{key}":
        return None
    return other_method_setting(str(key), getattr(cause, "object_type", None))


def not_a_mapping_key(cause: BaseException) -> str | None:
    """The error for a new key merged into a mapping setting (``method.round_to_layers``,
    ``method.c_rates``): Hydra merges ``KEY={a:1}`` into the keys the mapping has, and struct
    mode refuses new ones; ``++KEY={a:1}`` may add keys (it merges too: the keys the mapping
    had stay). None for any other error."""
    key, full_key = getattr(cause, "key", None), getattr(cause, "full_key", None)
    if not key or not full_key or "not in struct" not in str(cause):
        return None
    parent = str(full_key).removesuffix(f".{key}")
    if parent == full_key or not parent.startswith("method."):
        return None
    return (
        f"{parent} is a mapping, and {key!r} is a new key of it: add keys with '++' "
        f"('++{parent}={{{key}:VALUE}}'; a plain '=' may only change the keys it has)"
    )


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Turn the composed config into dataclasses, running every ``__post_init__`` check."""
    unknown = _unknown_keys(cfg)
    if unknown and unknown[0].startswith("method.") and isinstance(cfg.get("method"), DictConfig):
        hint = other_method_setting(unknown[0].split(".", 1)[1], OmegaConf.get_type(cfg.method))
        if hint is not None:
            raise ConfigError(hint)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]} (added with '+'?); it is not a setting of this group and "
            "would be ignored: check its spelling, without '+'"
        )
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        # a UserError raised by a resolver (a folder dataset's data_id) comes wrapped twice
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise ConfigError(str(exc).splitlines()[0]) from exc
    assert isinstance(run, RunConfig)
    return run


def run_name(cfg: DictConfig) -> str:
    """The run directory's name: what it is, readable, and the hash of what determines it."""
    # Resolve every node but ``hydra``, whose directories interpolate this very name.
    settings = {
        str(k): OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in ((k, cfg[k]) for k in cfg if k != "hydra")
    }
    name = "-".join(
        str(part)
        for part in (
            (settings.get("dataset") or {}).get("name"),
            (settings.get("model") or {}).get("name"),
            (settings.get("method") or {}).get("name"),
            f"s{settings.get('seed')}",
        )
    )
    return f"{name}-{config_hash(settings)}"


def register_resolvers() -> None:
    """``${prune_run_name:}``: used by the default ``hydra.run.dir`` and sweep subdirectories;
    ``${prune_weights_id:NAME,WEIGHTS}`` and ``${prune_data_id:NAME,ROOT}``: the defaults of
    ``model.weights_id`` and ``dataset.data_id``."""
    if not OmegaConf.has_resolver("prune_run_name"):
        OmegaConf.register_new_resolver(
            "prune_run_name", lambda *, _root_: run_name(_root_), use_cache=False
        )
    if not OmegaConf.has_resolver("prune_weights_id"):
        # model.weights_id: the weights file's SHA-256 (models/weights.py says why not the path)
        OmegaConf.register_new_resolver("prune_weights_id", weights_id, use_cache=False)
    if not OmegaConf.has_resolver("prune_data_id"):
        # dataset.data_id: what identifies a folder dataset's files (data/folder.py)
        OmegaConf.register_new_resolver("prune_data_id", data_identity, use_cache=False)


#: settings of a level-pruning target; giving two of them is ambiguous
TARGET_KEYS = ("method.sparsity", "method.ratio", "method.rate")


def check_target_overrides(overrides: list[str]) -> None:
    """Refuse overrides that set two targets (``method.sparsity`` with ``method.ratio``)."""
    given = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+~") in TARGET_KEYS and value.strip() not in ("null", ""):
            given.append(key.lstrip("+~"))
    if len(set(given)) > 1:
        winner = "method.rate" if "method.rate" in given else "method.ratio"
        raise ConfigError(
            f"{' and '.join(sorted(set(given)))} both set the pruning target ({winner} would "
            "win); give only one"
        )
