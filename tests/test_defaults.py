"""One source of defaults: a bare ``method=NAME`` (``model=``, ``dataset=``) composes to exactly
the defaults of the option's config dataclass (issue 22).

Each method, model and dataset declares its settings and their defaults once, in its dataclass;
its YAML file names the schema, the option's name and, for a method, perhaps a train preset. Were
a YAML file to set a value again, the Python API (``METHODS.get(name).Config()``,
``dataset_config(name)``) and the CLI would disagree, as eight methods once did; these tests
fail then, for every registered entry.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from prune_cli.config import CONF_DIR, group_options
from prune_cli.data import DATASET_CONFIGS, dataset_config
from prune_cli.models import MODELS
from prune_cli.pruning.method import METHODS

#: what a group's YAML file may hold besides comments: no setting, so no second default
YAML_KEYS = {"defaults", "name"}
#: settings an option cannot go without (given alike to the CLI and to the dataclass)
REQUIRED = {"custom": {"target": "test_models:small_net"}}


def composed(group: str, name: str, **given: Any) -> dict[str, Any]:
    """The group's node as the CLI composes it for ``group=name``, resolved as a run resolves
    it (``model.weights_id``, ``dataset.data_id``: the dataclasses compute them in Python)."""
    overrides = [f"{group}.{k}={v}" for k, v in given.items()]
    node = compose_config([f"{group}={name}", *overrides])[group]
    return OmegaConf.to_container(node, resolve=True)


def declared(settings: Any) -> dict[str, Any]:
    """A settings dataclass instance, built as from Python, as the same kind of container."""
    return OmegaConf.to_container(OmegaConf.structured(settings), resolve=True)


def assert_same(cli: dict[str, Any], python: dict[str, Any]) -> None:
    assert cli == python
    # and of the same types: the config hash is taken of the JSON text, where 5000 != 5000.0
    assert json.dumps(cli, sort_keys=True) == json.dumps(python, sort_keys=True)


@pytest.mark.parametrize("name", METHODS.names())
def test_a_bare_method_composes_to_its_dataclass_defaults(name: str) -> None:
    assert_same(composed("method", name), declared(METHODS.get(name).Config()))


@pytest.mark.parametrize("name", MODELS.names())
def test_a_bare_model_composes_to_its_dataclass_defaults(name: str) -> None:
    given = REQUIRED.get(name, {})
    python = MODELS.get(name).Config(name=name, **given)
    assert_same(composed("model", name, **given), declared(python))


@pytest.mark.parametrize("name", DATASET_CONFIGS.names())
def test_a_bare_dataset_composes_to_its_dataclass_defaults(name: str) -> None:
    assert_same(composed("dataset", name), declared(dataset_config(name)))


@pytest.mark.parametrize("group", ["method", "model", "dataset"])
def test_no_yaml_file_repeats_a_default(group: str) -> None:
    # a value written in the YAML too would be a second source, free to drift from the first
    repeated = {
        option: sorted(set(OmegaConf.load(CONF_DIR / group / f"{option}.yaml")) - YAML_KEYS)
        for option in group_options(group)
    }
    assert {k: v for k, v in repeated.items() if v} == {}
