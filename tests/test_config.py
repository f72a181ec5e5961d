"""Every config option composes into typed objects; bad values are refused when composing."""

from __future__ import annotations

import itertools
import re

import pytest
from conftest import compose_config, run_config
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from prune_cli.cli import check_choices, precheck
from prune_cli.config import CONF_DIR, config_hash, differing_keys, group_options, result_settings
from prune_cli.errors import ConfigError, UserError
from prune_cli.pruning.method import METHODS


@pytest.mark.parametrize("group", ["model", "dataset", "method", "train"])
def test_every_group_option_composes(group):
    needs = {"model": {"custom": ["model.target=test_models:small_net"]}}.get(group, {})
    for option in group_options(group):
        cfg = run_config([f"{group}={option}", *needs.get(option, [])])
        if group in ("model", "dataset", "method"):
            assert getattr(cfg, group).name == option


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = run_config([f"experiment={experiment}"])
    assert cfg.method.name in METHODS


def test_method_configs_match_the_registry():
    assert group_options("method") == METHODS.names()
    for name in METHODS.names():
        assert isinstance(run_config([f"method={name}"]).method, METHODS.get(name).Config)


def test_defaults_are_the_demonstration():
    cfg = run_config()
    assert (cfg.model.name, cfg.dataset.name, cfg.method.name) == ("lenet5", "digits", "magnitude")
    assert cfg.method.levels >= 2


def test_overrides_from_the_issue():
    cfg = run_config(
        [
            "model=resnet56",
            "dataset=cifar10",
            "method=magnitude",
            "method.sparsity=0.7",
            "train.epochs=160",
        ]
    )
    assert (cfg.model.name, cfg.method.sparsity, cfg.train.epochs) == ("resnet56", 0.7, 160)
    cfg = run_config(["method.levels=5", "method.scope=layer"])
    assert (cfg.method.levels, cfg.method.scope) == (5, "layer")


@pytest.mark.parametrize(
    "override",
    [
        "method.sparsity=1.0",
        "method.sparsity=-0.5",
        "train.epochs=-3",
        "pqi_grid=[[1.0,0.5]]",
        "method.scope=rows",
        "seed=-1",
        "device=tpu",
    ],
)
def test_impossible_values_fail_at_composition(override):
    with pytest.raises(ConfigError):
        run_config([override])


@pytest.mark.parametrize("override", ["method.sparsty=0.5", "train.epochs=many"])
def test_typos_and_wrong_types_fail_at_composition(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


def test_unknown_group_option_lists_the_valid_names():
    with pytest.raises(UserError, match=r"unknown method 'sappp'; valid methods: .*magnitude"):
        check_choices(["method=sappp"])
    with pytest.raises(UserError, match="unknown model"):
        check_choices(["model=resnet20,resnet21"])
    check_choices(["model=resnet20,resnet56", "hydra.run.dir=x", "method.levels=2"])


def test_config_hash_is_stable_and_ignores_display_settings():
    base = config_hash(compose_config())
    # pinned: a new setting must default to something that leaves old hashes valid (null, or a
    # value that changes nothing), or every existing run directory stops matching its config
    # (changed once on purpose: each dataset lost the settings it never read, digits' image_size)
    assert base == "73fc322905be"
    assert config_hash(compose_config(["method=sap", "model=resnet56"])) == "f7591f77d997"
    assert base == config_hash(compose_config(["progress=false", "overwrite=true", "device=cpu"]))
    imagenet = config_hash(compose_config(["dataset=imagenet"]))
    assert imagenet == config_hash(compose_config(["dataset=imagenet", "dataset.num_workers=2"]))
    assert base != config_hash(compose_config(["method.sparsity=0.8"]))
    assert base == config_hash(run_config())


def test_an_empty_per_layer_mapping_leaves_filter_hashes_as_they_were():
    """``method.round_to_layers`` defaults to {} (OmegaConf cannot merge a command line's
    mapping into a null one): left out of the hash while empty, so the filter runs stored
    before it existed keep theirs; a mapping given changes it."""
    overrides = ["method=filter", "model=resnet20"]
    cfg = compose_config(overrides)
    assert cfg.method.round_to_layers == {}
    container = OmegaConf.to_container(cfg, resolve=True)
    del container["method"]["round_to_layers"]  # as stored before the setting existed
    assert config_hash(cfg) == config_hash(container)
    given = compose_config([*overrides, "++method.round_to_layers={layer1.*:8}"])
    assert given.method.round_to_layers == {"layer1.*": 8}
    assert config_hash(given) != config_hash(cfg)
    # null clears an experiment's mapping (for the same experiment in one round_to), and
    # hashes as the empty one
    halp = ["experiment=halp_resnet50_imagenet"]
    assert len(compose_config(halp).method.round_to_layers) == 15
    cleared = compose_config([*halp, "method.round_to_layers=null"])
    assert cleared.method.round_to_layers is None
    empty = OmegaConf.to_container(cleared, resolve=True)
    empty["method"]["round_to_layers"] = {}
    assert config_hash(cleared) == config_hash(empty)


#: what each dataset reads; a setting outside its list is neither shown nor accepted
DATASET_SETTINGS = {
    "digits": {"test_size"},
    "mnist": {"root", "download"},
    "fashion_mnist": {"root", "download"},
    "cifar10": {"root", "download", "augment"},
    "cifar100": {"root", "download", "augment"},
    "imagenet": {"root", "augment", "image_size", "num_workers"},
    "folder": {"root", "augment", "image_size", "num_workers", "test_size", "data_id"},
}
EVERY_DATASET = {"name", "val_size", "split_seed", "limit_train"}


def test_every_dataset_lists_the_settings_it_reads():
    # apart from the parametrized test below, so that a new dataset missing from the table is
    # one failure here, not one in every dataset's case
    assert set(DATASET_SETTINGS) == set(group_options("dataset"))


@pytest.mark.parametrize("name", group_options("dataset"))
def test_a_dataset_shows_and_accepts_only_the_settings_it_reads(name):
    shown = set(compose_config([f"dataset={name}"]).dataset)
    assert shown == EVERY_DATASET | DATASET_SETTINGS[name]
    for key in sorted({k for v in DATASET_SETTINGS.values() for k in v} - shown - {"data_id"}):
        with pytest.raises(UserError, match=f"dataset {name} does not read dataset.{key} "):
            precheck([f"dataset={name}", f"dataset.{key}=1"], multirun=False)


def test_settings_a_dataset_never_read_are_no_difference_from_an_earlier_run():
    # a run stored when every dataset carried every setting: digits with image_size,
    # num_workers, augment, root and download, values it never read
    ours = run_config()
    theirs = result_settings(ours)
    theirs["dataset"].update(image_size=224, num_workers=8, augment=True, download=False)
    theirs["dataset"]["root"] = "data"
    assert differing_keys(theirs, ours) == []
    theirs["dataset"]["test_size"] = 0.3  # one it reads
    assert differing_keys(theirs, ours) == ["dataset.test_size"]


@pytest.mark.parametrize("preset", group_options("sweep"))
def test_every_sweep_preset_names_valid_options(preset):
    """Each preset's grid composes: every combination of its first values is a valid run."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"sweep={preset}"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params, preset
    overrides = [f"{k}={str(v).split(',')[0]}" for k, v in params.items()]
    for key, value in params.items():
        for option in str(value).split(","):
            if key in ("experiment", "method", "model", "dataset"):
                assert option in group_options(key), (preset, key, option)
    run_config([*overrides, f"sweep={preset}"])


MAKEFILE = CONF_DIR.parents[1] / "Makefile"


def makefile_sweeps() -> list[tuple[str, list[str]]]:
    """(target, overrides) of every ``$(SWEEP)`` and ``$(RUN)`` command in the Makefile's
    reproduction recipes, continuation lines joined, a shell loop's ``for x in A B; do``
    expanded into one command per value, make's variables replaced by a value of theirs."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    found, target = [], ""
    for line in text.splitlines():
        head = re.match(r"^([a-z0-9-]+):", line)
        if head:
            target = head.group(1)
        if not line.startswith("\t") or not target.startswith("reproduce"):
            continue
        loop = re.match(r"^\t\s*for (\w+) in ([^;]+); do (.*?);\s*done", line)
        values = loop.group(2).split() if loop else [None]
        body = loop.group(3) if loop else line
        for value in values:
            command = re.search(r"\$\((?:SWEEP|RUN)\)\s+([^;|]*)", body)
            if command is None:
                continue
            words = command.group(1)
            if loop:
                words = words.replace(f"$${loop.group(1)}", value)
            words = re.sub(r"\$\([A-Z_]*SEED_LIST\)", "0,1", words)
            words = words.replace("$(RESULTS)", "results")
            found.append((target, [w for w in words.split() if "=" in w and "$" not in w]))
    return found


def test_every_reproduction_target_has_its_commands_read():
    """The parametrized test below covers every reproduction target the Makefile declares."""
    phony = re.search(r"^\.PHONY:(.*)$", MAKEFILE.read_text(), re.M)
    assert phony is not None
    declared = {t for t in phony.group(1).split() if t.startswith("reproduce")}
    assert declared and {t for t, _ in makefile_sweeps()} == declared
    # the limit's shell loop gives one command per experiment
    assert sum(t == "reproduce-limit" for t, _ in makefile_sweeps()) == 4


@pytest.mark.parametrize(
    "target, overrides",
    makefile_sweeps(),
    ids=[f"{t}-{i}" for i, (t, _) in enumerate(makefile_sweeps())],
)
def test_every_reproduction_target_composes(target, overrides):
    """Each reproduction target's grid composes at every value the command line sweeps (a
    preset's own grid at its first values, as the test above composes them): a target that
    names a setting its experiment lacks fails here, not after a day of dense training."""
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("sweep=")), None)
    base = []
    if preset is not None:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"sweep={preset}"], return_hydra_config=True)
        given = {o.split("=", 1)[0] for o in overrides}
        base = [
            f"{k}={str(v).split(',')[0]}"
            for k, v in cfg.hydra.sweeper.params.items()
            if k not in given
        ]
    kept = [o for o in overrides if not o.startswith(("hydra.", "progress="))]
    grid = [[f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in kept]
    for combination in itertools.product(*grid):
        cfg = run_config([*base, *combination])
        assert cfg.method.name in METHODS, (target, combination)


def test_parallel_jobs_share_the_cores():
    from prune_cli.cli import threads_per_job

    assert threads_per_job(16, 4) == 4
    assert threads_per_job(2, 2) == 1
    assert threads_per_job(2, 8) == 1  # never zero
    assert threads_per_job(8, 1) == 8
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=local"], return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == 2  # what _share_cores reads
