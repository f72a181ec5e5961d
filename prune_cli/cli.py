"""The ``prune-run`` command: Hydra composes the config, the experiment runs it.

Bad input is one line on stderr and exit status 2, without a traceback: unknown group options
are caught before Hydra composes (so the line can list the valid names), impossible values when
the composed config becomes typed objects. A run that fails while training exits with status 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from prune_cli.config import register_configs, to_run_config
from prune_cli.errors import RunFailed, UserError

#: the config tree: ``conf/`` beside the package (the repository), or $PRUNE_RUN_CONF
CONF_DIR = Path(os.environ.get("PRUNE_RUN_CONF", Path(__file__).resolve().parent.parent / "conf"))
#: sweep jobs (run in this process) that failed; a sweep goes on and exits 1 at the end
FAILED_JOBS: list[int] = []
CHOICE_GROUPS = ("model", "dataset", "method", "train", "experiment", "sweep")


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_choices(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse ``group=name`` overrides whose option has no YAML, listing the valid names."""
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~").removeprefix("override ")
        if not sep or key not in CHOICE_GROUPS or value.startswith(("glob(", "choice(", "range(")):
            continue
        valid = group_options(key, conf_dir)
        for name in value.split(","):
            name = name.strip()
            if name and name != "null" and name not in valid:
                raise UserError(f"unknown {key} {name!r}; valid {key}s: {', '.join(valid)}")


def fail(exc: Exception) -> None:
    print(f"prune-run: error: {exc}", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", 1))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from prune_cli.experiment import run_experiment
    from prune_cli.reporting.console import show_config

    hydra_cfg = HydraConfig.get()
    try:
        run_cfg = to_run_config(cfg)
        if run_cfg.progress:
            show_config(cfg)
        run_experiment(run_cfg, Path(hydra_cfg.runtime.output_dir))
    except (UserError, RunFailed) as exc:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            fail(exc)
        # In a sweep one failed job must not stop the others: say it, count it (its run
        # directory records the failure), and let the launcher go on.
        print(f"prune-run: job {hydra_cfg.job.num} failed: {exc}", file=sys.stderr)
        FAILED_JOBS.append(hydra_cfg.job.num)


def precheck(overrides: list[str], multirun: bool, conf_dir: Path = CONF_DIR) -> None:
    """Compose and validate the config before Hydra starts a run (and makes its directory).

    Hydra's own report of a bad key or type is several lines with exit status 1; here it is one
    line and status 2. Sweeps (``-m``) are checked per job by Hydra, after the names.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import OmegaConfBaseException

    check_choices(overrides, conf_dir)
    if multirun:
        return
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=[o for o in overrides if not o.startswith("hydra")])
    except (OmegaConfBaseException, hydra.errors.HydraException) as exc:
        cause = exc.__cause__ or exc
        detail = str(cause).splitlines()[0]
        where = next((f" ({ln.strip()})" for ln in str(cause).splitlines() if "full_key" in ln), "")
        raise UserError(f"{detail}{where}; check the override's key and type") from None
    to_run_config(cfg)


def main() -> None:
    register_configs()
    flags = [a for a in sys.argv[1:] if a.startswith("-")]
    overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not any(f in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") for f in flags):
        try:
            precheck(overrides, multirun=any(f in ("-m", "--multirun") for f in flags))
        except UserError as exc:
            fail(exc)
    _run()
    if FAILED_JOBS:
        print(
            f"prune-run: {len(FAILED_JOBS)} job(s) of the sweep failed: {FAILED_JOBS}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
