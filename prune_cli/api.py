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
        if not self.paths.config.is_file():
            return {}
        return yaml.safe_load(self.paths.config.read_text()) or {}

    @functools.cached_property
    def levels(self) -> pd.DataFrame:
        """One row per level: the summary's level entries (sparsity, accuracies, PQI, MACs...)."""
        return pd.DataFrame(self.summary.get("levels", []))

    def _table(self, attribute: str) -> pd.DataFrame:
        path = getattr(self.paths, TABLES[attribute])
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

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
        return [int(lv["level"]) for lv in self.summary.get("levels", [])]

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
        from prune_cli.models import build_model, model_config
        from prune_cli.models.custom import loading_stored_run
        from prune_cli.spec import DataSpec

        level = self._level(level)
        state = load_torch(self.paths.level_model(level), device, what=f"level {level} model")
        info = state.get("model_info") if isinstance(state, dict) else None
        if not isinstance(info, dict) or "name" not in info:
            raise UserError(
                f"{self.paths.level_model(level)} carries no model_info (written by an older "
                "prune-run); build the model yourself and load its 'model' state dict"
            )
        spec = DataSpec(int(info["channels"]), int(info["num_classes"]), int(info["image_size"]))
        # the model's settings too (model.width=...), where the level file records them
        with loading_stored_run(self.root, self.trust_code):
            model = build_model(model_config(info.get("settings") or info["name"]), spec)
        weights = state["model"]
        if any(".parametrizations." in k for k in weights):
            model = self._reparametrise(model)
        model.load_state_dict(weights)
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
