"""The Python API: a finished run directory as tables and models, for notebooks.

    import prune_cli
    run = prune_cli.load_run("outputs/runs/digits-lenet5-magnitude-s0-1a2b3c4d")
    run.levels[["level", "sparsity", "test_accuracy", "macs_sparse"]]
    model = run.model(2)          # level 2's selected weights and mask, architecture from the file
    runs = prune_cli.load_runs(["outputs/multirun/sweep"]); runs.levels.groupby("method").size()

A :class:`Run` reads lazily: the summary when it is made, each table the first time it is
asked for. Every path comes from :class:`~prune_cli.paths.RunPaths`; torch files are read with
``weights_only=True``. ``model(level)`` needs no architecture from the user: each level file
carries ``model_info`` (registry name, channels, classes, image size). A structured method's
thinner network is :meth:`Run.thin_model` (``prune_cli/thin.py``).

This module sits at the top of the package beside ``experiment`` and ``thin``: rebuilding a
model needs the model registry, and a method that reparametrises its weights (SA++) needs the
method. ``import prune_cli`` does not import it (nor pandas or torch): ``prune_cli.load_run``
loads it on first use.

A run directory's files are data, not the user's command: a custom model's ``model.target`` in
them is refused before anything is imported unless the run is loaded with ``trust_code=True``
(``load_run(path, trust_code=True)``), and even then imported from the installed packages and
``PYTHONPATH`` only (:func:`prune_cli.models.custom.loading_stored_run`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch import Tensor, nn

from prune_cli.errors import UserError
from prune_cli.io import load_json_mapping, load_torch
from prune_cli.paths import RunPaths
from prune_cli.stored import Unreadable, check_level_state, check_levels, level_numbers


class RunFileError(UserError):
    """A file of a run directory that holds what prune-run never writes (not YAML, not UTF-8,
    a CSV with ragged rows, a summary whose ``levels`` is a string...); ``path`` is the file."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {reason}")


@dataclasses.dataclass
class Evaluation:
    """A level evaluated on a split, as the run evaluates (``training.loop.evaluate``)."""

    level: int
    split: str
    accuracy: float
    loss: float
    #: class, class_name, support, recall: one row per class (per_class_recall.csv's columns)
    recall: pd.DataFrame


#: the run's CSV tables, by attribute name
TABLES = {
    "metrics": "metrics",
    "recall": "per_class_recall",
    "pqi": "pqi",
    "gini": "gini",
    "sparsity": "sparsity",
    "distortion": "recall_distortion",
}


class Run:
    """One run directory: its summary, config, tables and level models."""

    def __init__(self, root: str | Path, trust_code: bool = False) -> None:
        self.paths = RunPaths(Path(root))
        #: whether a custom model's target named by the run's files may be imported
        self.trust_code = trust_code
        if not self.paths.summary.is_file():
            raise UserError(f"{self.paths.root} is not a prune-run run directory (no summary.json)")
        self.summary: dict[str, Any] = load_json_mapping(self.paths.summary, "summary")

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"Run({str(self.root)!r}: {s.get('method')} / {s.get('model')} / {s.get('dataset')} "
            f"seed {s.get('seed')}, {len(s.get('levels', []))} levels, {s.get('status')})"
        )

    @property
    def root(self) -> Path:
        return self.paths.root

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config the run was started with (``config.yaml``)."""
        path = self.paths.config
        if not path.is_file():
            return {}
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RunFileError(
                path, f"not readable YAML ({type(exc).__name__}: {reason})"
            ) from None
        if config is not None and not isinstance(config, dict):
            raise RunFileError(path, "does not hold a mapping of settings")
        return config or {}

    @functools.cached_property
    def levels(self) -> pd.DataFrame:
        """One row per level: the summary's level entries (sparsity, accuracies, PQI, MACs...)."""
        try:
            return pd.DataFrame(check_levels(self.summary.get("levels", [])))
        except Unreadable as exc:
            raise RunFileError(self.paths.summary, str(exc)) from None

    def _table(self, attribute: str) -> pd.DataFrame:
        from prune_cli.reporting.runs import read_table

        path = getattr(self.paths, TABLES[attribute])
        if not path.is_file():
            return pd.DataFrame()
        try:
            return read_table(path)  # the report's reader: the same checks, one message
        except Unreadable as exc:
            raise RunFileError(path, str(exc)) from None

    metrics = functools.cached_property(lambda self: self._table("metrics"))
    metrics.__doc__ = "level,epoch,split,metric,value: per-epoch training and validation"
    recall = functools.cached_property(lambda self: self._table("recall"))
    recall.__doc__ = "level,stage,class,class_name,support,recall: per-class test recall"
    pqi = functools.cached_property(lambda self: self._table("pqi"))
    pqi.__doc__ = "level,stage,scope,name,p,q,pqi: PQ index, global and per layer"
    gini = functools.cached_property(lambda self: self._table("gini"))
    gini.__doc__ = "level,stage,scope,name,gini: Gini index (empty for runs before it existed)"
    sparsity = functools.cached_property(lambda self: self._table("sparsity"))
    sparsity.__doc__ = "level,name,numel,nonzero,sparsity: per prunable tensor"
    distortion = functools.cached_property(lambda self: self._table("distortion"))
    distortion.__doc__ = "level,class,recall_dense,recall,...: recall distortion against level 0"

    @property
    def level_numbers(self) -> list[int]:
        try:
            return level_numbers(self.summary.get("levels", []))
        except Unreadable as exc:
            raise RunFileError(self.paths.summary, str(exc)) from None

    def _level(self, level: int | None) -> int:
        numbers = self.level_numbers
        if not numbers:
            raise UserError(f"{self.root} has no finished level")
        if level is None:
            return max(numbers)
        if level not in numbers:
            raise UserError(f"{self.root} has no level {level}; its levels are {numbers}")
        return level

    def mask(self, level: int | None = None) -> dict[str, Tensor]:
        """The level's mask: prunable tensor name -> bool tensor (True = kept)."""
        level = self._level(level)
        return load_torch(self.paths.level_mask(level), "cpu", what=f"level {level} mask")

    def model(
        self,
        level: int | None = None,
        device: str | torch.device = "cpu",
        attach_mask: bool = False,
    ) -> nn.Module:
        """The model selected at the end of ``level`` (default: the last), in eval mode, with
        the weights the run evaluated (pruned entries are zero); the architecture comes from
        the level file's ``model_info``.

        ``attach_mask=True`` also attaches the level's mask to each pruned layer with
        ``torch.nn.utils.prune.custom_from_mask``, so that training the model further keeps
        the pruned weights at zero (``prune.remove`` makes it plain again).
        """
        from prune_cli.export import level_architecture
        from prune_cli.models.custom import loading_stored_run

        level = self._level(level)
        path = self.paths.level_model(level)
        state = load_torch(path, device, what=f"level {level} model")
        if isinstance(state, dict) and not isinstance(state.get("model_info"), dict):
            raise UserError(
                f"{path} carries no model_info (written by an older prune-run); build the "
                "model yourself and load its 'model' state dict"
            )
        try:
            check_level_state(state)
        except Unreadable as exc:
            raise RunFileError(path, str(exc)) from None
        # the model's settings too (model.width=...), where the level file records them
        with loading_stored_run(self.root, self.trust_code):
            model = level_architecture(state, path)
        weights = state["model"]
        if any(".parametrizations." in k for k in weights):
            model = self._reparametrise(model)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:  # weights of another shape than the architecture's
            detail = str(exc).strip().splitlines()[-1].strip()[:160]
            raise RunFileError(path, f"its weights do not fit its model_info ({detail})") from None
        model = model.to(device).eval()
        if attach_mask:
            from torch.nn.utils import prune

            params = dict(model.named_parameters())
            modules = dict(model.named_modules())
            for name, keep in state["mask"].items():
                if name in params:  # a reparametrised weight applies its mask itself
                    module, _, attr = name.rpartition(".")
                    prune.custom_from_mask(modules[module], attr, keep.to(params[name].device))
        return model

    def evaluate(
        self, level: int | None = None, split: str = "test", device: str | torch.device = "cpu"
    ) -> Evaluation:
        """Evaluate ``level`` (default: the last) on ``split`` (``train``, ``val`` or ``test``)
        of the run's own dataset, built from its ``config.yaml`` (the same split seed and
        sizes), with the function the run evaluates with (``training.loop.evaluate``): on
        the device and thread count the run used, the test accuracy of a level equals its
        ``test_accuracy`` in ``summary.json``.

        The model is :meth:`model` (the weights the run evaluated); the dataset's files must
        be where the run's config says (``dataset.root``)."""
        from prune_cli.data import DATASET_CONFIGS, build_dataset
        from prune_cli.metrics import per_class_recall
        from prune_cli.training.config import TrainConfig
        from prune_cli.training.loop import evaluate

        if split not in ("train", "val", "test"):
            raise UserError(f"unknown split {split!r}; the splits are train, val and test")
        level = self._level(level)
        settings = self.config.get("dataset")
        if not isinstance(settings, dict) or not isinstance(settings.get("name"), str):
            raise RunFileError(self.paths.config, "names no dataset (dataset.name)")
        cls = DATASET_CONFIGS.get(settings["name"])
        known = {f.name for f in dataclasses.fields(cls)}
        dataset_cfg = cls(**{k: v for k, v in settings.items() if k in known})
        # what evaluation reads of the run's train settings: batch size, bf16, channels-last
        train = self.config.get("train") if isinstance(self.config.get("train"), dict) else {}
        used = ("eval_batch_size", "bf16", "channels_last")
        train_cfg = TrainConfig(**{k: train[k] for k in used if k in train})
        device = torch.device(device)
        seed = self.config.get("seed", 0)
        # as the run built it: after seeding with the run's seed; the caller's random state
        # is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if isinstance(seed, int) else 0)
            data = build_dataset(dataset_cfg, device)
        if data.size(split) == 0:
            raise UserError(f"{self.root}'s dataset has no {split} split (its size is 0)")
        result = evaluate(self.model(level, device), data, split, train_cfg)
        recall, support = per_class_recall(result.confusion)
        rows = [
            (c, name, int(support[c]), float(recall[c])) for c, name in enumerate(data.class_names)
        ]
        table = pd.DataFrame(rows, columns=["class", "class_name", "support", "recall"])
        return Evaluation(level, split, result.accuracy, result.loss, table)

    def _reparametrise(self, model: nn.Module) -> nn.Module:
        """The method's own parametrisation of the weights (SA++'s block attention), which its
        level files were saved with."""
        from omegaconf import OmegaConf

        from prune_cli.pruning.method import METHODS
        from prune_cli.pruning.methods import __name__ as _registers  # noqa: F401

        method_cfg = self.config.get("method") or {}
        cls = METHODS.get(method_cfg.get("name", self.summary.get("method")))
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), method_cfg))
        return cls(cfg).prepare(model, None)  # type: ignore[arg-type]  # prepare needs no data

    def thin_model(self) -> nn.Module:
        """A structured method's thinner network (the ``thin`` network its declaration names in
        ``summary.json``), on the CPU in eval mode."""
        from prune_cli.pruning.results import stored_results
        from prune_cli.thin import load_thin_model

        info = self.summary.get("method_info") or {}
        try:
            networks = stored_results(self.summary).networks
        except ValueError as exc:
            raise UserError(f"{self.paths.summary}: {exc}") from None
        for network in networks:
            if network.kind == "thin" and isinstance(info.get(network.key), str):
                path = self.paths.root / info[network.key]
                return load_thin_model(path, trust_code=self.trust_code)
        raise UserError(
            f"{self.paths.root} holds no thinner network: its method saved none (only structured "
            "methods do, after their last level)"
        )


class Runs(list):
    """Several runs; their tables concatenated, with ``run``, ``method``, ``model``, ``dataset``
    and ``seed`` columns first."""

    def _concat(self, attribute: str) -> pd.DataFrame:
        frames = []
        for run in self:
            frame = getattr(run, attribute)
            if frame.empty:
                continue
            s = run.summary
            ids = {"run": str(run.root), "method": s.get("method"), "model": s.get("model")}
            ids |= {"dataset": s.get("dataset"), "seed": s.get("seed")}
            frames.append(frame.assign(**ids)[[*ids, *frame.columns]])
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @property
    def levels(self) -> pd.DataFrame:
        return self._concat("levels")

    @property
    def metrics(self) -> pd.DataFrame:
        return self._concat("metrics")

    @property
    def recall(self) -> pd.DataFrame:
        return self._concat("recall")

    @property
    def pqi(self) -> pd.DataFrame:
        return self._concat("pqi")

    @property
    def gini(self) -> pd.DataFrame:
        return self._concat("gini")

    @property
    def sparsity(self) -> pd.DataFrame:
        return self._concat("sparsity")

    @property
    def distortion(self) -> pd.DataFrame:
        return self._concat("distortion")


def load_run(path: str | Path, trust_code: bool = False) -> Run:
    """The run in directory ``path`` (one holding ``summary.json``). ``trust_code=True``: its
    models may import the custom model code its files name (only for a run you trust)."""
    return Run(path, trust_code)


def load_runs(paths: str | Path | Iterable[str | Path], trust_code: bool = False) -> Runs:
    """Every run under ``paths`` (run directories, or multirun directories searched
    recursively), in path order; ``trust_code`` as for :func:`load_run`."""
    from prune_cli.reporting.runs import find_runs

    if isinstance(paths, str | Path):
        paths = [paths]
    return Runs(Run(p, trust_code) for p in find_runs([Path(p) for p in paths]))
