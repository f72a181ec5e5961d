"""The ``prune-run`` command: Hydra composes the config, the experiment runs it.

Bad input is one line on stderr and exit status 2, without a traceback: unknown group options
are caught before Hydra composes (so the line can list the valid names), impossible values when
the composed config becomes typed objects, and an unusable run directory before Hydra creates
it. A run that fails while training exits with status 1; Ctrl-C ends with one line and 130,
and so do SIGTERM and SIGHUP (a batch system's preemption or time-out), with 128 + the signal's
number: the run is marked interrupted and resumes when the same command runs again.

The same command names the same directory: a run directory is named by the config's hash
(``${prune_run_name:}``), a sweep directory by the sweep's overrides, so re-running a crashed
command resumes it, and re-running a sweep skips its finished jobs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from prune_cli import distributed, extras, objective, sweep
from prune_cli.config import (
    CONF_DIR,
    NON_RESULT_KEYS,
    RunConfig,
    check_target_overrides,
    config_hash,
    group_options,
    not_a_mapping_key,
    not_a_method_setting,
    register_configs,
    register_resolvers,
    to_run_config,
)
from prune_cli.errors import RunFailed, UserError

#: sweep jobs (run in this process) that failed; a sweep goes on and exits 1 at the end
FAILED_JOBS: list[int] = []
#: the sweep directory's lock, held by the launching process for the whole sweep
_SWEEP_LOCK = contextlib.ExitStack()
_SWEEP_LOCKED = False
#: set by ``main`` to its pid and inherited by a launcher's worker processes (joblib's loky
#: workers import this module afresh, so a pid taken at import cannot tell them from the owner)
SWEEP_OWNER_ENV = "PRUNE_RUN_SWEEP_OWNER"
CHOICE_GROUPS = ("model", "dataset", "method", "train", "experiment", "sweep", "hparams_search")


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


#: Hydra's flags that prune-run refuses: ``--experimental-rerun FILE`` unpickles the file,
#: which runs whatever code it names
REFUSED_FLAGS = {
    "--experimental-rerun": "--experimental-rerun loads a pickled Hydra config, which can run "
    "any code; re-run with the same overrides instead (the same command finds the same run)",
}


def refuse_flags(flags: list[str]) -> None:
    """One line and exit status 2 for a flag prune-run does not pass on to Hydra."""
    for flag in flags:
        if flag in REFUSED_FLAGS:
            fail(UserError(REFUSED_FLAGS[flag]))


def handle_termination() -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does (``io.SignalInterrupt``), in the command's
    process and in a launcher's worker process (which runs ``_run`` without ``main``)."""
    from prune_cli.io import interrupt_on_termination

    interrupt_on_termination()


def interrupted(exc: KeyboardInterrupt) -> None:
    """The one line of an interrupted run, and the exit status a shell expects (128 + signal)."""
    from prune_cli.io import interrupt_exit_status, interrupt_reason

    print(
        f"prune-run: {interrupt_reason(exc)}; the run is marked interrupted, re-run the same "
        "command to resume it",
        file=sys.stderr,
    )
    sys.exit(interrupt_exit_status(exc))


def fail(exc: Exception) -> None:
    print(f"prune-run: error: {exc}", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", 1))


def _hydra_files(cfg: DictConfig) -> dict[str, str]:
    """Hydra's record of the job (``.hydra/``), written by the run store once the run owns its
    directory, so that a refused run leaves the owner's copy alone."""
    hydra_cfg = HydraConfig.get()
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
    }


def _lock_sweep(sweep_dir: Path) -> None:
    """One sweep at a time in a sweep directory (its jobs, run elsewhere, lock their own)."""
    global _SWEEP_LOCKED
    owner = os.environ.get(SWEEP_OWNER_ENV)
    if (owner is not None and owner != str(os.getpid())) or _SWEEP_LOCKED:
        return  # a launcher's worker (its owner holds the lock), or already held
    try:
        sweep.lock(sweep_dir)  # the same lock the sweep's callback takes (prune_cli.sweep)
    except UserError as exc:
        fail(exc)
    _SWEEP_LOCKED = True


def _not_a_dataset_setting(cause: BaseException, overrides: list[str]) -> str | None:
    """The error for a dataset setting the chosen dataset does not read (``dataset.image_size``
    with digits), naming the settings it has; None for any other error. Read from OmegaConf's
    error itself (the key and the settings class it is not in), not from its wording."""
    import dataclasses

    from prune_cli.data import DATASET_CONFIGS

    key, full_key = getattr(cause, "key", None), getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    if not key or full_key != f"dataset.{key}":
        return None
    names = [n for n in DATASET_CONFIGS if DATASET_CONFIGS.get(n) is schema]
    if not names:
        return None
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")]
    if chosen and chosen[-1] in names:
        names = chosen[-1:]
    fields = [f.name for f in dataclasses.fields(schema) if f.name != "name"]
    return (
        f"dataset {' / '.join(names)} does not read dataset.{key} (its settings: "
        f"{', '.join(fields)}); remove it or choose a dataset that has it"
    )


def threads_per_job(cores: int, parallel_jobs: int) -> int:
    """CPU threads for one job when ``parallel_jobs`` share ``cores`` (at least one): jobs that
    each take every core oversubscribe the machine (two on 2 cores took 3.5x the wall time)."""
    return max(1, cores // max(1, parallel_jobs))


def _share_cores(hydra_cfg: DictConfig) -> None:
    """Jobs of a parallel launcher on this machine (joblib) each get their share of the cores."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if hydra_cfg.mode != RunMode.MULTIRUN or not isinstance(n_jobs, int) or n_jobs <= 1:
        return
    import torch

    torch.set_num_threads(threads_per_job(len(os.sched_getaffinity(0)), n_jobs))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> dict[str, str] | float | None:
    return _job(cfg)


def _job(cfg: DictConfig, checked: RunConfig | None = None) -> dict[str, str] | float | None:
    """Hydra's task: one run (a single run, or a sweep's job) of the composed ``cfg``;
    ``checked``: its typed settings, when the pre-check made them from this very config."""
    from prune_cli.experiment import run_experiment
    from prune_cli.recording.console import show_overrides

    handle_termination()
    hydra_cfg = HydraConfig.get()
    try:
        world = _join_ranks(cfg)
    except UserError as exc:
        fail(exc)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        if world.main:
            _lock_sweep(Path(hydra_cfg.sweep.dir))
        _share_cores(hydra_cfg)
    try:
        check_target_overrides(list(hydra_cfg.overrides.task))
        run_cfg = to_run_config(cfg) if checked is None else checked
        if run_cfg.progress and world.main:
            show_overrides(config_hash(run_cfg), list(hydra_cfg.overrides.task))
        run_experiment(
            run_cfg,
            Path(hydra_cfg.runtime.output_dir),
            _hydra_files(cfg),
            record_setup_failure=hydra_cfg.mode == RunMode.MULTIRUN,  # listed by its report
        )
        if run_cfg.objective is not None and world.main:
            # a sweeper (Optuna's) reads the task function's return: the objective, from the
            # run's summary.json (so a finished run that is only shown returns it too)
            out = Path(hydra_cfg.runtime.output_dir)
            value = objective.measure(run_cfg.objective, run_cfg.objective_tolerance, out)
            logging.getLogger("prune_cli").info("objective %s: %.6g", run_cfg.objective, value)
            return value
    except (UserError, RunFailed) as exc:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            fail(exc)
        # In a sweep one failed job must not stop the others: say it, count it (its run
        # directory records the failure), and let the launcher go on.
        print(f"prune-run: job {hydra_cfg.job.num} failed: {exc}", file=sys.stderr)
        FAILED_JOBS.append(hydra_cfg.job.num)
        # the job's return reaches the sweep's main process from any launcher's worker
        # (prune_cli.sweep records it), where this process's FAILED_JOBS does not
        return {"failed": str(exc)}
    return None


def _join_ranks(cfg: DictConfig) -> distributed.World:
    """Data-parallel ranks: torchrun's, or a multi-task SLURM job's (submitit). The other ranks
    stay quiet: rank 0 alone logs, shows progress and writes (``prune_cli.distributed``)."""
    distributed.export_slurm()
    try:
        parallel = distributed.from_env().parallel
        n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
        if parallel and isinstance(n_jobs, int) and n_jobs > 1:
            raise UserError(
                "parallel jobs of a launcher (hydra/launcher=local) cannot run inside "
                "data-parallel ranks; sweep with the basic launcher under torchrun, or with "
                "hydra/launcher=slurm_ddp"
            )
        world = distributed.setup(str(cfg.get("device", "auto")))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if world.parallel and not world.main:
        logging.getLogger("prune_cli").setLevel(logging.WARNING)
    return world


def sweep_dir_override(overrides: list[str]) -> str | None:
    """``hydra.sweep.dir`` named by what the sweep runs (unless the user chose one): the preset
    name, if any, and a digest of the overrides, so the same sweep lands in the same place."""
    if any(o.lstrip("+").startswith("hydra.sweep.dir=") for o in overrides):
        return None
    ignored = {k for k in NON_RESULT_KEYS if "." not in k}
    keep = sorted(
        o
        for o in overrides
        if not o.startswith(("hydra.", "hydra/")) and o.partition("=")[0] not in ignored
    )
    presets = (o.partition("=")[2] for o in keep if o.startswith(("sweep=", "hparams_search=")))
    preset = next(presets, "sweep")
    digest = hashlib.sha256("\n".join(keep).encode()).hexdigest()[:10]
    return f"hydra.sweep.dir=${{output_root}}/multirun/{preset}-{digest}"


def _check_overrides(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """What the overrides themselves get wrong, before anything is composed."""
    check_choices(overrides, conf_dir)
    check_target_overrides(overrides)
    if any(o.startswith("sweep=") for o in overrides):
        raise UserError("sweep=NAME is a sweep preset: add -m (prune-run -m sweep=NAME ...)")


def _composed(compose: Callable[[], DictConfig], overrides: list[str]) -> DictConfig:
    """``compose()``, whose errors (Hydra's several lines with exit status 1) become one line."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose()
    except (OmegaConfBaseException, hydra.errors.HydraException) as exc:
        cause = exc.__cause__ or exc
        detail = str(cause).splitlines()[0]
        where = next((f" ({ln.strip()})" for ln in str(cause).splitlines() if "full_key" in ln), "")
        raise UserError(
            _not_a_dataset_setting(cause, overrides)
            or not_a_method_setting(cause)
            or not_a_mapping_key(cause)
            or f"{detail}{where}; check the override's key and type"
        ) from None


def _checked(cfg: DictConfig) -> tuple[RunConfig, Path | None]:
    """The composed config (``hydra`` node included, left as it is) as typed settings, and its
    run directory, refused if unusable before anything creates it."""
    from prune_cli.store import check_location

    run_dir = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=False)
    task = copy.deepcopy(cfg)  # the settings alone; ``cfg`` goes on to Hydra's job
    with read_write(task), open_dict(task):
        del task["hydra"]
    run_cfg = to_run_config(task)
    if run_dir:
        check_location(Path(str(run_dir)))
    return run_cfg, Path(str(run_dir)) if run_dir else None


def precheck(
    overrides: list[str], multirun: bool, conf_dir: Path = CONF_DIR
) -> tuple[RunConfig, Path | None] | None:
    """Compose and validate the config before Hydra starts a run (and makes its directory);
    returns the run's config and directory (None for a sweep).

    Hydra's own report of a bad key or type is several lines with exit status 1; here it is one
    line and status 2. Sweeps (``-m``) are checked per job by Hydra, after the names. A plain
    ``prune-run`` composes once instead, through :class:`SingleRun`, which checks the same way.
    """
    from hydra import compose, initialize_config_dir

    if multirun:
        check_choices(overrides, conf_dir)
        check_target_overrides(overrides)
        fixed = objective.fixed_overrides(overrides)
        if fixed is not None:  # a search: what its trials share is checked once, here
            precheck(fixed, multirun=False, conf_dir=conf_dir)
        return None
    _check_overrides(overrides, conf_dir)

    def composition() -> DictConfig:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)

    return _checked(_composed(composition, overrides))


class SingleRun:
    """A plain run (no ``-m``, no Hydra flag) composed once: the config that the pre-check
    validates is the one Hydra's job runs.

    ``@hydra.main`` would compose the config twice more (once to read ``hydra.mode``, once to
    run), about 0.1 s of CPU each; this does what its run does (Hydra 1.3's ``_run_hydra`` and
    ``Hydra.run``: the same search path, task name, ``hydra.mode=RUN``, callbacks and
    ``run_job``) with the one composition. :meth:`close` must follow (it clears GlobalHydra).
    """

    def __init__(self, overrides: list[str]) -> None:
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import (
            create_automatic_config_search_path,
            detect_calling_file_or_module_from_task_function,
            detect_task_name,
        )

        _check_overrides(overrides)
        calling_file, calling_module = detect_calling_file_or_module_from_task_function(_run)
        search_path = create_automatic_config_search_path(
            calling_file, calling_module, str(CONF_DIR)
        )
        self.app = Hydra.create_main_hydra2(
            task_name=detect_task_name(calling_file, calling_module),
            config_search_path=search_path,
        )
        try:
            # Hydra's run adds ``hydra.mode=RUN`` when the config names no mode (ours does not)
            self.overrides = [*overrides, "hydra.mode=RUN"]
            self.cfg = _composed(
                lambda: self.app.compose_config(
                    "config", self.overrides, run_mode=RunMode.RUN, with_log_configuration=False
                ),
                overrides,
            )
            self.checked = _checked(self.cfg)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def applies(flags: list[str], overrides: list[str]) -> bool:
        """Whether a command is a plain run: no flag at all (Hydra's flags, ``-m``: Hydra's own
        way), no ``hydra.mode`` of its own, and a Hydra whose internals this class knows."""
        plain = not flags and not any(o.lstrip("+~").startswith("hydra.mode") for o in overrides)
        return plain and SingleRun.supported()

    @staticmethod
    def supported() -> bool:
        """Whether the installed Hydra has the internals a run composed once goes through.
        They are private (``hydra._internal``), so another Hydra release may move them; the
        run then takes ``@hydra.main``'s way, which composes three times but runs the same."""
        try:
            from hydra._internal.callbacks import Callbacks  # noqa: F401
            from hydra._internal.hydra import Hydra
            from hydra._internal.utils import (  # noqa: F401
                create_automatic_config_search_path,
                detect_calling_file_or_module_from_task_function,
                detect_task_name,
                run_and_report,
            )
        except ImportError:
            return False
        return hasattr(Hydra, "create_main_hydra2") and hasattr(Hydra, "compose_config")

    def run(self) -> None:
        """Hydra's job, as ``Hydra.run`` runs it, with an unexpected error reported as Hydra
        reports it (a short traceback, exit status 1)."""
        from hydra._internal.utils import run_and_report

        run_and_report(self._run_job)

    def _run_job(self) -> None:
        from hydra._internal.callbacks import Callbacks
        from hydra.core.utils import configure_log, run_job
        from hydra.types import HydraContext

        cfg = self.cfg
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)  # Hydra's own logger
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name="config")
        ret = run_job(
            hydra_context=HydraContext(config_loader=self.app.config_loader, callbacks=callbacks),
            task_function=lambda task_cfg: _job(task_cfg, self.checked[0]),
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
        )
        callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
        _ = ret.return_value  # a failed job's exception, raised here as Hydra's run does

    def close(self) -> None:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


def _follow(run_cfg: RunConfig, run_dir: Path | None) -> None:
    """A torchrun rank other than 0: the run without Hydra's job, which would create the run
    directory; the rank trains with rank 0 and touches no file (``Experiment._follow``)."""
    from prune_cli.experiment import run_experiment

    distributed.setup(run_cfg.device)
    logging.getLogger("prune_cli").setLevel(logging.WARNING)
    try:
        run_experiment(run_cfg, run_dir or Path(run_cfg.output_root))
    except (UserError, RunFailed) as exc:
        fail(exc)


#: Hydra's own flags: with any of them Hydra answers by itself (help, config dumps, completion)
#: or composes from another config tree, so the pre-check, which composes prune-run's, stands back
HYDRA_FLAGS = (
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--resolve",
    "--package",
    "-p",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
)


#: Hydra's modes, of which one command takes one
EXCLUSIVE_MODES = {
    "--multirun": ("-m", "--multirun"),
    "--cfg": ("-c", "--cfg"),
    "--info": ("-i", "--info"),
    "--shell-completion": ("-sc", "--shell-completion"),
}


def config_groups(conf_dir: Path = CONF_DIR) -> list[str]:
    """The config tree's groups (folders holding YAML files: ``model``, ``hydra/launcher``),
    read from it, so a new group is listed without a change here: ``CHOICE_GROUPS`` in their
    order, then the others by name."""
    found = {p.parent.relative_to(conf_dir).as_posix() for p in conf_dir.rglob("*.yaml")}
    found.discard(".")
    return [g for g in CHOICE_GROUPS if g in found] + sorted(found - set(CHOICE_GROUPS))


def version_text() -> str:
    """``prune-run --version``: prune-run's and torch's versions (torch's from its package
    metadata: no config is composed)."""
    from importlib.metadata import PackageNotFoundError, version

    from prune_cli import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return f"prune-run {__version__} (torch {torch_version})"


def help_text(conf_dir: Path = CONF_DIR) -> str:
    """``prune-run --help``: the app, its groups and options (not the internal ``schema/``)."""
    lines = [
        "prune-run: train, prune and fine-tune networks; compare pruning methods fairly.",
        "",
        "Usage: prune-run [-m] [GROUP=OPTION ...] [KEY=VALUE ...]",
        "  prune-run                              the demonstration (LeNet-5 on bundled digits)",
        "  prune-run method=sap model=resnet56 dataset=cifar10 train=cifar",
        "  prune-run -m method=magnitude,random seed=0,1,2   a sweep (re-run: skips finished jobs)",
        "",
        "Config groups (GROUP=OPTION):",
    ]
    groups = config_groups(conf_dir)
    width = max(map(len, groups), default=0)
    for group in groups:
        lines.append(f"  {group:<{width}} {', '.join(group_options(group, conf_dir))}")
    lines += [
        "",
        "Settings: seed, device (auto|cpu|cuda), overwrite, progress, heartbeat_s (seconds",
        "between progress lines off a terminal), checkpoint_every, pqi_grid,",
        "dense_from=RUN_DIR, output_root, and every key of the groups (method.sparsity=0.9,",
        "train.epochs=30, ...): `prune-run --cfg job` prints the composed config.",
        "Your own: model=custom model.target=pkg.module:fn, model.weights=PATH|pretrained,",
        "dataset=folder dataset.root=PATH; `prune-export RUN` writes a level as ONNX or .pt2.",
        "Hydra's flags: -m/--multirun, --cfg, --info, --config-dir/-cd, --config-name/-cn,",
        "--shell-completion/-sc install=bash, --hydra-help. Documentation: README.md.",
    ]
    return "\n".join(lines)


def main() -> None:
    os.environ[SWEEP_OWNER_ENV] = str(os.getpid())
    register_configs()
    register_resolvers()
    args = sys.argv[1:]
    flags = [a.split("=", 1)[0] for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    multirun = any(f in ("-m", "--multirun") for f in flags)
    if "--version" in flags:  # Hydra's own would print Hydra's version
        print(version_text())
        return
    if any(f in ("-h", "--help") for f in flags):
        print(help_text())
        return
    refuse_flags(flags)
    try:
        extras.check_overrides(overrides)  # a launcher whose plugin is not installed
    except UserError as exc:
        fail(exc)
    handle_termination()
    modes = {m for f in flags for m in EXCLUSIVE_MODES if f in EXCLUSIVE_MODES[m]}
    if len(modes) > 1:
        fail(UserError(f"use only one of {', '.join(sorted(modes))} (Hydra runs one mode)"))
    checked, follower, single = None, False, None
    if not any(f in HYDRA_FLAGS for f in flags):
        try:
            objective.check_search(overrides, multirun)  # the sweeper's extra, -m
            if SingleRun.applies(flags, overrides):
                single = SingleRun(overrides)
                checked = single.checked
            else:
                checked = precheck(overrides, multirun=multirun)
            follower = checked is not None and not distributed.from_env().main
        except (UserError, ValueError) as exc:  # ValueError: a torchrun environment that is wrong
            if single is not None:
                single.close()  # Hydra's global state goes with the refused command
            fail(exc if isinstance(exc, UserError) else UserError(str(exc)))
        if follower and single is not None:
            single.close()  # a follower runs without Hydra's job
        if follower and checked is not None:
            try:
                _follow(*checked)
            except KeyboardInterrupt as exc:
                from prune_cli.io import interrupt_exit_status

                sys.exit(interrupt_exit_status(exc))
            finally:
                distributed.teardown()
            return
    if multirun and (sweep_dir := sweep_dir_override(overrides)) is not None:
        sys.argv.append(sweep_dir)
    if multirun:  # the jobs' outcomes and the workers' lifetime (prune_cli.sweep)
        sys.argv.append(sweep.CALLBACK_OVERRIDE)
    search = multirun and objective.is_search(overrides)
    if search:  # let the sweeper's own end-of-search error reach us instead of its traceback
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if single is not None:
            single.run()
        else:
            _run()
    except ValueError as exc:
        if not (search and objective.no_trial_completed(exc)):
            raise
        sweep.finish()  # one line per failed trial, and the count
        print("prune-run: no trial of the search completed; nothing to optimise", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        from prune_cli.entry import silence_signals

        silence_signals()  # a second Ctrl-C while the sweep's end is told must not escape as -2
        if multirun:
            sweep.finish(interrupted=True)
        interrupted(exc)
    finally:
        if single is not None:
            single.close()
        _SWEEP_LOCK.close()
        sweep.release()
        distributed.teardown()
    if multirun and sweep.finish():
        sys.exit(1)
    if FAILED_JOBS:  # a sweep whose records could not be written: what this process saw
        print(
            f"prune-run: {len(FAILED_JOBS)} job(s) of the sweep failed: {FAILED_JOBS}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
