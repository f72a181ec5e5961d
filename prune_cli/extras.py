"""prune-run's optional extras (``pyproject.toml``): which Hydra launcher needs which, and the
one line that says how to install a missing one.

Without its plugin, a launcher fails inside Hydra with several lines ("Could not load
'hydra/launcher/joblib'") that do not say what to install. The launcher options of
``prune_cli/conf/hydra/launcher/`` name their plugin's config in their defaults list
(``local`` -> ``joblib``, ``slurm_ddp`` -> ``slurm`` -> ``submitit_slurm``); that name says which
plugin, and which extra installs it. The trackers (``logger=``, :mod:`prune_cli.trackers`) and
ONNX export (:mod:`prune_cli.export`) make the same check where they are used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from prune_cli.config import CONF_DIR
from prune_cli.errors import UserError

#: the installed distribution's name, as ``pip install`` takes it
DISTRIBUTION = "prune-cli"

#: a launcher plugin's config name -> (the plugin's module, the extra that installs it)
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "local"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (a missing parent package counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # no parent package; a module set to None
        return False


def plugin_config(option: str, conf_dir: Path = CONF_DIR) -> str:
    """The plugin config a launcher option rests on: prune-run's options are followed through
    their defaults lists to the first name that is not one of them (Hydra's plugin's own)."""
    seen = set()
    while option not in seen:
        seen.add(option)
        path = conf_dir / "hydra" / "launcher" / f"{option}.yaml"
        if not path.is_file():
            return option
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        parents = [d for d in defaults if isinstance(d, str) and d != "_self_"]
        if not parents:
            return option
        option = parents[0]
    return option


def check_overrides(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse ``hydra/launcher=NAME`` when the plugin NAME needs is not installed, naming the
    extra to install."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or key.lstrip("+~").removeprefix("override ") != "hydra/launcher":
            continue
        plugin = LAUNCHER_PLUGINS.get(plugin_config(value.strip(), conf_dir))
        if plugin is not None and not installed(plugin[0]):
            module, extra = plugin
            raise UserError(
                f"{override} needs Hydra's {module.rpartition('.')[2]} plugin, which is not "
                f"installed: pip install '{DISTRIBUTION}[{extra}]'"
            )
