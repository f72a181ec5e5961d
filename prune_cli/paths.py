"""Every artifact path of a run comes from here, so readers (reports, tests) and writers agree.

Layout of a run directory::

    config.yaml            the resolved config this run was started with (its hash is in summary)
    summary.json           status, config hash, sizes, one entry per level, wall time, versions,
                           device and CPU threads
    metrics.csv            level,epoch,split,metric,value
    per_class_recall.csv   level,stage,class,class_name,support,recall
    pqi.csv                level,stage,scope,name,p,q,pqi
    gini.csv               level,stage,scope,name,gini (runs before 2026-11-23 have none)
    sparsity.csv           level,name,numel,nonzero,sparsity
    recall_distortion.csv  level,class,recall_dense,recall,balance_dense,balance,intensification
    checkpoint.pt          the resumable training state (written atomically every epoch)
    init.pt                the weights at initialisation (for rewinding)
    rewind.pt              the weights at the rewind epoch, when rewinding to an epoch
    levels/level_<k>/model.pt, mask.pt   the selected model and mask at the end of level k
    levels/level_<k>/model.onnx, .pt2    the level's network exported by prune-export
    <the method's files>   what the method declares it writes (its ``results.files``: a
                           structured method's thinner network, a folded network, a search
                           log...), through ``extra(name)``
    run.log                one line per epoch and level (appended across resumed sessions)
    .hydra/                Hydra's copy of the config and overrides (written after the checks)
    .lock                  held (flock) by the run that writes this directory

A shared dense level (automatic dense sharing, :mod:`prune_cli.shared_dense`) is a dense-only
run directory of the same layout under ``<output_root>/dense/<dataset>-<model>-s<seed>-<hash>/``
(:func:`shared_dense_dir`), beside its ``.share.lock`` (:func:`shared_dense_lock`).

A latency table measured for a model on a device is cached as ``<cache_dir>/latency-<key>.json``
(:func:`latency_table_path`) beside its ``.lock`` (:func:`latency_table_lock`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Files that belong to every run's results; ``overwrite=true`` removes these, the method's
#: declared files (``PruningMethod.results.files``) and the directories below.
RESULT_FILES = (
    "config.yaml",
    "summary.json",
    "metrics.csv",
    "per_class_recall.csv",
    "pqi.csv",
    "gini.csv",
    "sparsity.csv",
    "recall_distortion.csv",
    "checkpoint.pt",
    "init.pt",
    "rewind.pt",
    "run.log",
)
RESULT_DIRS = ("levels", "analysis")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def per_class_recall(self) -> Path:
        return self.root / "per_class_recall.csv"

    @property
    def pqi(self) -> Path:
        return self.root / "pqi.csv"

    @property
    def gini(self) -> Path:
        return self.root / "gini.csv"

    @property
    def sparsity(self) -> Path:
        return self.root / "sparsity.csv"

    @property
    def recall_distortion(self) -> Path:
        return self.root / "recall_distortion.csv"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def mlflow_run(self) -> Path:
        """The MLflow run this run logs to (``logger=mlflow``), so that a resume continues it."""
        return self.root / "mlflow_run.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def init_state(self) -> Path:
        return self.root / "init.pt"

    @property
    def rewind_state(self) -> Path:
        return self.root / "rewind.pt"

    def level_dir(self, level: int) -> Path:
        return self.root / "levels" / f"level_{level}"

    def level_model(self, level: int) -> Path:
        return self.level_dir(level) / "model.pt"

    def level_mask(self, level: int) -> Path:
        return self.level_dir(level) / "mask.pt"

    def level_export(self, level: int, fmt: str) -> Path:
        """Where ``prune-export`` writes level k's network: ``model.onnx`` or ``model.pt2``."""
        return self.level_dir(level) / ("model.onnx" if fmt == "onnx" else "model.pt2")

    def analysis(self, name: str) -> Path:
        """Where analysis ``name`` (``analysis=[name]``) writes its files."""
        return self.root / "analysis" / name

    def extra(self, name: str) -> Path:
        """A method's own artifact (one of the files its results declaration names)."""
        return self.root / name


def shared_dense_dir(output_root: Path, dataset: str, model: str, seed: int, key: str) -> Path:
    """The run directory of the dense level that the runs with dense key ``key`` share."""
    return Path(output_root) / "dense" / f"{dataset}-{model}-s{seed}-{key}"


def shared_dense_lock(directory: Path) -> Path:
    """The lock file of a shared dense level: who trains it (exclusive create, heartbeat)."""
    return Path(directory) / ".share.lock"


def shared_dense_marker(directory: Path) -> Path:
    """The file that says a run directory holds a shared dense level (``prune-report`` leaves
    such runs out of a folder it searches: their level 0 is in the runs that took it)."""
    return Path(directory) / ".shared-dense"


def shared_cache_dir(output_root: Path) -> Path:
    """What runs under ``output_root`` measure once and share (``PruneContext.cache_dir``: the
    latency tables), outside every run directory so that no run's ``overwrite`` clears it."""
    return Path(output_root) / "cache"


def latency_table_path(cache_dir: Path, key: str) -> Path:
    """The cached latency table (:mod:`prune_cli.pruning.latency`) that ``key`` names: a digest
    of the device, torch version, model structure and measurement setting, so a sweep's runs on
    one device share it."""
    return Path(cache_dir) / f"latency-{key}.json"


def latency_table_lock(path: Path) -> Path:
    """The lock file beside a cached latency table (flock): one job measures, the others wait."""
    path = Path(path)
    return path.with_name(path.name + ".lock")
