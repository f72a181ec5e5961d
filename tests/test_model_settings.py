"""A model's typed settings, a model from the user's own code, and starting weights (issue 10)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_config, run_config
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError
from test_models import settings

from prune_cli.config import config_hash
from prune_cli.errors import ConfigError, UserError
from prune_cli.experiment import Experiment
from prune_cli.io import load_torch
from prune_cli.models import MODELS, ModelConfig, build_model, count_parameters, model_config
from prune_cli.models.weights import WeightsError, pretrained_file
from prune_cli.paths import RunPaths
from prune_cli.spec import DataSpec

CIFAR = DataSpec(3, 10, 32)
DIGITS = DataSpec(1, 10, 8)


# --- settings, typed per model ---------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS.names())
def test_every_setting_defaults_to_null_so_old_run_hashes_stay(name):
    """A non-null default would enter every run's config hash and orphan its directory."""
    config = MODELS.get(name).Config
    assert issubclass(config, ModelConfig)
    own = [f for f in dataclasses.fields(config) if f.name not in ("name", "weights_id")]
    assert all(f.default is None for f in own if f.default is not dataclasses.MISSING), name
    assert compose_config([f"model={name}"]).model.get("depth", None) is None


@pytest.mark.parametrize(
    ("name", "spec", "extra", "same_as"),
    [
        ("resnet20", CIFAR, {"depth": 56}, "resnet56"),  # the depth setting is the name's depth
        ("wrn28_8", CIFAR, {"width": 10}, "wrn28_10"),
        ("lenet5", DataSpec(1, 10, 28), {"channels": [20, 50], "hidden": [500]}, None),
    ],
)
def test_settings_build_the_architecture_they_name(name, spec, extra, same_as):
    model = build_model(settings(name, **extra), spec)
    if same_as is not None:
        assert count_parameters(model) == count_parameters(build_model(same_as, spec))
    else:  # lenet5 with the Caffe LeNet's widths, padding of lenet5: its own count
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [20, 50]
    out = model(torch.randn(2, *spec.input_shape))
    assert out.shape == (2, 10)


def test_width_settings_scale_the_network():
    base = count_parameters(build_model("resnet20", CIFAR))
    wide = count_parameters(build_model(settings("resnet20", width=32), CIFAR))
    assert 3.9 < wide / base < 4.1  # convolutions dominate: parameters grow as width squared
    half = build_model(settings("vgg11", width_mult=0.5, classifier_width=64), CIFAR)
    convs = [m.out_channels for m in half.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [32, 64, 128, 128, 256, 256, 256, 256]
    hidden = build_model(settings("mlp", hidden=[32]), DIGITS)
    assert [m.out_features for m in hidden.modules() if isinstance(m, torch.nn.Linear)] == [32, 10]


def test_settings_are_typed_and_checked_when_the_config_is_composed():
    cfg = run_config(["model=resnet56", "model.width=8"])
    assert (type(cfg.model).__name__, cfg.model.width, cfg.model.depth) == (
        "CifarResNetConfig",
        8,
        None,
    )
    for wrong in (["model=resnet56", "model.depth=deep"], ["model=lenet5", "model.depth=20"]):
        with pytest.raises((ConfigCompositionException, ValidationError)):
            compose_config(wrong)  # a wrong type, a setting lenet5 does not have
    for impossible, match in (
        (["model=resnet56", "model.depth=57"], "6n \\+ 2"),
        (["model=wrn28_10", "model.depth=28", "model.width=0"], "positive"),
        (["model=resnet18", "model.width_per_group=128"], "BasicBlocks"),
        (["model=lenet5", "model.channels=[6]"], "2 widths"),
    ):
        with pytest.raises(ConfigError, match=match):
            run_config(impossible)


def test_settings_change_the_run_name_and_null_keeps_it():
    base = config_hash(compose_config())
    assert config_hash(compose_config(["model.hidden=null"])) == base
    assert config_hash(compose_config(["model.hidden=[100]"])) != base


def test_settings_reach_the_level_file_and_rebuild_the_model(tmp_path):
    cfg = run_config([*FAST, "model.hidden=[24]", "train.epochs=1", "method.levels=0"])
    Experiment(cfg, tmp_path).run()
    info = load_torch(RunPaths(tmp_path).level_model(0))["model_info"]
    rebuilt = build_model(model_config(info["settings"]), DIGITS)
    assert [m.out_features for m in rebuilt.modules() if isinstance(m, torch.nn.Linear)] == [24, 10]


# --- model=custom ----------------------------------------------------------------------------
NETS = """
from torch import nn


def build(spec, width=16):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(spec.channels * spec.image_size ** 2, width),
        nn.ReLU(),
        nn.Linear(width, spec.num_classes),
    )


def not_a_model(spec):
    return "a string"
"""


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``my_nets/nets.py`` in a folder of its own, outside prune_cli, which is the current
    directory (as for a researcher who runs prune-run beside their code)."""
    package = tmp_path / "user" / "my_nets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.chdir(package.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    return package.parent


def test_a_custom_model_from_the_users_code_runs(tmp_path, user_package):
    """The builder gets the data spec and model.args; the run records and rebuilds it."""
    cfg = run_config(
        [
            "model=custom",
            "model.target=my_nets.nets:build",
            "+model.args.width=12",
            "train.epochs=1",
            "method.levels=1",
            "progress=false",
        ]
    )
    summary = Experiment(cfg, tmp_path / "run").run()
    assert summary["status"] == "completed" and summary["model"] == "custom"
    assert summary["params_total"] == 64 * 12 + 12 + 12 * 10 + 10  # 8x8 digits, width 12
    assert summary["levels"][1]["sparsity"] == pytest.approx(0.9, abs=1e-3)  # one-shot to 90%
    info = load_torch(RunPaths(tmp_path / "run").level_model(1))["model_info"]
    rebuilt = build_model(model_config(info["settings"]), DIGITS)
    assert count_parameters(rebuilt) == summary["params_total"]


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["model.target=my_nets.absent:build"], ConfigError, "cannot import my_nets.absent"),
        (["model.target=my_nets.nets:nothing"], ConfigError, "no function 'nothing'"),
        (["model.target=not a target"], ConfigError, "package.module:function"),
    ],
)
def test_a_bad_custom_target_fails_at_composition(user_package, overrides, error, match):
    with pytest.raises(error, match=match):
        run_config(["model=custom", *overrides])


def test_a_custom_builder_that_refuses_its_args_or_returns_no_module(user_package):
    wrong_args = run_config(["model=custom", "model.target=my_nets.nets:build", "+model.args.x=1"])
    with pytest.raises(UserError, match="refused its arguments"):
        build_model(wrong_args.model, DIGITS)
    no_module = run_config(["model=custom", "model.target=my_nets.nets:not_a_model"])
    with pytest.raises(UserError, match="returned a str"):
        build_model(no_module.model, DIGITS)


# --- starting weights ------------------------------------------------------------------------
def saved_lenet(path: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = build_model("lenet5", DIGITS).state_dict()
    torch.save(state, path)
    return state


def test_weights_file_is_loaded_and_identified_by_content(tmp_path):
    state = saved_lenet(tmp_path / "a.pt")
    cfg = run_config([f"model.weights={tmp_path / 'a.pt'}"])
    model = build_model(cfg.model, DIGITS)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the same file elsewhere is the same run; other contents under the same path another one
    shutil.copyfile(tmp_path / "a.pt", tmp_path / "b.pt")
    hash_a = config_hash(compose_config([f"model.weights={tmp_path / 'a.pt'}"]))
    assert hash_a == config_hash(compose_config([f"model.weights={tmp_path / 'b.pt'}"]))
    assert hash_a != config_hash(compose_config()) and cfg.model.weights_id.startswith("sha256:")
    saved_lenet(tmp_path / "a.pt", seed=4)
    assert hash_a != config_hash(compose_config([f"model.weights={tmp_path / 'a.pt'}"]))


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a torch file")


def _truncated(path: Path) -> None:
    saved_lenet(path)
    path.write_bytes(path.read_bytes()[:300])


def _pickled_module(path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), path)  # loading it would unpickle (run) code


def _other_model(path: Path) -> None:
    torch.save(build_model("resnet20", DIGITS).state_dict(), path)


def _other_shape(path: Path) -> None:
    torch.save(build_model(settings("lenet5", hidden=[120, 80]), DIGITS).state_dict(), path)


def _no_state_dict(path: Path) -> None:
    torch.save({"epoch": 3}, path)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_garbage, "corrupt"),
        (_truncated, "corrupt"),
        (_pickled_module, r"\(torch.nn.modules.linear.Linear\) that loading would run as code"),
        (_other_model, "does not fit model lenet5.*missing.*unexpected"),
        (_other_shape, "another shape \\(first: classifier.2.weight, file \\[80, 120\\]"),
        (_no_state_dict, "holds no state dict"),
    ],
)
def test_bad_weights_files_are_one_line_errors(tmp_path, make, match):
    path = tmp_path / "weights.pt"
    make(path)
    cfg = run_config([f"model.weights={path}"])
    with pytest.raises(WeightsError, match=match) as caught:
        build_model(cfg.model, DIGITS)
    assert "\n" not in str(caught.value)


def test_a_missing_weights_file_fails_at_composition(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        run_config([f"model.weights={tmp_path / 'absent.pt'}"])
    with pytest.raises(ConfigError, match=r"no pretrained weights.*resnet50"):
        run_config(["model=lenet5", "model.weights=pretrained"])


def test_pretrained_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    """Offline: a file put where torchvision caches its weights stands in for them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = run_config(["model=mobilenet_v2", "model.weights=pretrained"]).model
    path, _ = pretrained_file(MODELS.get("mobilenet_v2").pretrained)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(WeightsError, match=r"could not be downloaded.*copy mobilenet_v2-"):
        build_model(cfg, CIFAR)
    torch.manual_seed(5)
    imagenet = build_model("mobilenet_v2", DataSpec(3, 1000, 224)).state_dict()
    torch.save(imagenet, path)
    assert cfg.weights_id == f"torchvision:{path.name}"
    model = build_model(cfg, CIFAR).state_dict()
    head = {"classifier.1.weight", "classifier.1.bias"}  # 1000 ImageNet classes, 10 here
    assert all(torch.equal(model[k], v) for k, v in imagenet.items() if k not in head)
    assert model["classifier.1.weight"].shape == (10, 1280)


def _offline(*args: object, **kwargs: object) -> None:
    raise OSError("network is unreachable")


def test_dense_from_works_with_starting_weights_wherever_the_file_lies(tmp_path):
    saved = {"net.1.weight": torch.zeros(128, 64)}
    torch.manual_seed(0)
    state = build_model("mlp", DIGITS).state_dict()
    state.update(saved)  # recognisable: the first layer starts at zero
    torch.save(state, tmp_path / "w.pt")
    shutil.copyfile(tmp_path / "w.pt", tmp_path / "copy.pt")
    quick = [*FAST, "train.epochs=1"]
    first = Experiment(
        run_config([*quick, "method.levels=0", f"model.weights={tmp_path / 'w.pt'}"]),
        tmp_path / "dense",
    )
    first.run()
    assert not load_torch(RunPaths(tmp_path / "dense").init_state)["net.1.weight"].any()
    second = run_config(
        [
            *quick,
            "method.levels=1",
            f"model.weights={tmp_path / 'copy.pt'}",
            f"dense_from={tmp_path / 'dense'}",
        ]
    )
    summary = Experiment(second, tmp_path / "pruned").run()
    assert summary["status"] == "completed" and len(summary["levels"]) == 2
    with pytest.raises(UserError, match="other model settings"):
        Experiment(
            run_config([*quick, "method.levels=1", f"dense_from={tmp_path / 'dense'}"]),
            tmp_path / "other",
        ).run()


def test_runs_made_before_the_model_settings_report_with_runs_made_after(tmp_path):
    """A run whose config.yaml predates the settings (no model.width, no weights_id; dataset
    settings digits never read) is not told apart from a run that leaves them null: same
    hash, same report row."""
    import yaml

    from prune_cli.reporting.collect import collect

    cfg = run_config([*FAST, "model=resnet20", "train.epochs=0", "method.levels=0"])
    Experiment(cfg, tmp_path / "new").run()
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    old = RunPaths(tmp_path / "old").config
    config = yaml.safe_load(old.read_text())
    config["model"] = {"name": "resnet20"}
    config["dataset"].update(image_size=224, num_workers=8, augment=True, root="data")
    old.write_text(yaml.safe_dump(config))
    assert config_hash(config) == config_hash(cfg)
    runs = collect([tmp_path]).completed
    assert len(runs) == 2 and set(runs["label"]) == {"dense"}  # no setting told them apart
