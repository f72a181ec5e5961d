"""Export a run's pruned model to ONNX or ``torch.export`` (the ``prune-export`` command).

The model of level k is rebuilt from its level file (``levels/level_<k>/model.pt``: the weights,
the mask and the run's config, whose ``model`` settings rebuild the architecture, a custom
model's included), the masked weights are set to zero (DNS keeps training its masked weights:
the mask is what defines its network), and the network is exported in eval mode with a dynamic
batch size. Where the method saved a plain network for its last level (its declaration's
``networks``, in ``summary.json``), that level is exported as that network: the thinner network
of a structured method (rebuilt by ``thin.load_thin_model``), or the folded plain network of a
method that re-parametrises the weights.

The exported model takes the images as the run fed them: (B, C, H, W) float32, normalised with
the dataset's mean and std; it returns (B, classes) logits.

Every export is checked before it is reported: the ONNX file is run with onnxruntime (when it
is installed) and the ``torch.export`` program is loaded back and run, on the same random batch
as the PyTorch model; outputs that differ by more than 1e-4 (relative to their scale) fail.

A custom model's ``model.target`` named by the run's files is code chosen by whoever wrote the
directory: it is refused before anything is imported unless ``trust_code`` (``--trust-code``).

ONNX export uses PyTorch's ``torch.export``-based exporter, which needs ``onnxscript`` (and
``onnx``); ``pip install 'prune-cli[export]'`` installs them with onnxruntime.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.errors import UserError
from prune_cli.io import load_torch
from prune_cli.models import build_model, model_config
from prune_cli.models.custom import loading_stored_run
from prune_cli.paths import RunPaths
from prune_cli.pruning.results import stored_results
from prune_cli.spec import DataSpec
from prune_cli.stored import Unreadable, check_level_state, inside_run, level_numbers

FORMATS = ("onnx", "torch_export")
#: largest accepted difference between the exported and the PyTorch outputs, relative to the
#: outputs' scale (float32 kernels of another runtime differ in the last bits)
TOLERANCE = 1e-4


class ExportError(UserError):
    """A run, level or model that cannot be exported, or an export that does not match."""


@dataclass
class Exported:
    path: Path
    format: str
    level: int
    #: "masked" (the level's network, masked weights zero), "thin" (a structured run's thinner
    #: network) or "folded" (a re-parametrised network folded into plain weights)
    network: str
    params: int
    params_nonzero: int
    #: largest |exported - PyTorch| output on a random batch; None when it could not be run
    #: (ONNX without onnxruntime)
    max_difference: float | None


def _summary(paths: RunPaths) -> dict[str, Any]:
    if not paths.summary.is_file():
        raise ExportError(f"{paths.root} is not a prune-run run directory (no summary.json)")
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{paths.summary} is unreadable ({type(exc).__name__})") from None
    if not isinstance(summary, dict):
        raise ExportError(f"{paths.summary} does not hold a run summary")
    try:
        level_numbers(summary.get("levels") or [])
    except Unreadable as exc:
        raise ExportError(f"{paths.summary}: {exc}") from None
    return summary


def _level_file(paths: RunPaths, level: int, done: list[int]) -> dict[str, Any]:
    if level not in done:
        have = ", ".join(map(str, done)) or "none yet"
        raise ExportError(f"{paths.root} has no finished level {level} (finished: {have})")
    path = paths.level_model(level)
    try:
        return check_level_state(load_torch(path, what=f"level {level} model"))
    except Unreadable as exc:
        raise ExportError(f"{path}: {exc}") from None


def level_architecture(state: dict[str, Any], path: Path) -> nn.Module:
    """The network a level file (checked by :func:`~prune_cli.stored.check_level_state`)
    describes, with fresh weights: its ``model_info``'s settings (else the run config's model,
    else the registry name) on its data's shape. Build it inside ``loading_stored_run``."""
    info = state["model_info"]
    config = state.get("config")
    stored = config.get("model") if isinstance(config, dict) else None
    settings = info.get("settings") or (stored if isinstance(stored, dict) else None)
    spec = DataSpec(info["channels"], info["num_classes"], info["image_size"])
    try:
        return build_model(model_config(settings or info["name"]), spec)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        # settings of the wrong type, or a shape the architecture cannot take (a 2x2 image
        # for LeNet-5): what prune-run never writes into a level file it made
        raise ExportError(
            f"{path}: its model_info does not build a {info['name']} "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _masked_model(state: dict[str, Any], level: int, path: Path) -> nn.Module:
    """The level's network with its masked weights zeroed (``path``: the level file)."""
    info = state["model_info"]
    model = level_architecture(state, path)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # a re-parametrised model (block attention) or another shape
        detail = str(exc).strip().splitlines()[0][:160]
        raise ExportError(
            f"level {level}'s weights do not load into a plain {info['name']} ({detail}); the "
            "method re-parametrises the network: export the run's last level, whose plain "
            "network the method saved"
        ) from None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in state["mask"].items():
            if name in params:
                if mask.shape != params[name].shape:
                    raise ExportError(
                        f"{path}: its mask of {name} is {tuple(mask.shape)}, the weight "
                        f"{tuple(params[name].shape)}"
                    )
                params[name].mul_(mask.to(params[name].dtype))
    return model


def _final_network(
    paths: RunPaths, summary: dict[str, Any], trust_code: bool = False
) -> tuple[nn.Module, str] | None:
    """The plain network a method saved for its last level, as its declaration names it
    (:class:`~prune_cli.pruning.results.Network`): thin (structured) or folded."""
    info = summary.get("method_info")
    info = info if isinstance(info, dict) else {}
    try:
        networks = stored_results(summary).networks
    except ValueError as exc:
        raise ExportError(f"{paths.summary}: {exc}") from None
    saved = [n for n in networks if isinstance(info.get(n.key), str)]
    for n in saved:
        if not inside_run(info[n.key]):
            raise ExportError(
                f"{paths.summary}: method_info.{n.key} names {info[n.key]!r}, a file outside "
                "the run directory"
            )
    if not saved:
        return None
    network = saved[0]
    path = paths.root / info[network.key]
    if network.kind == "thin":
        from prune_cli.thin import load_thin_model

        return load_thin_model(path, trust_code=trust_code), "thin"
    if network.kind == "folded":
        folded = load_torch(path, what="folded model")
        if not isinstance(folded, dict) or not isinstance(folded.get("state_dict"), dict):
            raise ExportError(f"{path} is not a folded model (no state_dict entry)")
        last = _done(summary)[-1]
        state = _level_file(paths, last, _done(summary))  # the architecture and data spec
        # the folded weights are W * A * mask already: nothing left to mask
        model = _masked_model({**state, "model": folded["state_dict"], "mask": {}}, last, path)
        return model, "folded"
    return None


def _done(summary: dict[str, Any]) -> list[int]:
    """The finished levels' numbers (``_summary`` has checked their shape)."""
    return level_numbers(summary.get("levels") or [])


def _example(channels: int, size: int, batch: int = 3) -> Tensor:
    """A random batch: traces the network (batch > 1: a batch of 1 would be specialised, not
    dynamic) and compares the exported outputs with PyTorch's."""
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


def _check(reference: Tensor, exported: Tensor, what: str) -> float:
    difference = float((reference - exported).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if not difference <= TOLERANCE * scale:
        raise ExportError(
            f"the {what} gives outputs {difference:.3g} away from PyTorch's on the same batch; "
            "the export is wrong: report it with the model's name"
        )
    return difference


def _onnx(model: nn.Module, example: Tensor, path: Path) -> float | None:
    missing = [m for m in ("onnxscript", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs {' and '.join(missing)} (PyTorch's exporter uses them); install "
            "them with: pip install 'prune-cli[export]'"
        )
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,  # one file; the protobuf limit is 2 GB (ResNet-50: 100 MB)
            verbose=False,
        )
    except Exception as exc:  # an operator the exporter does not support: one line, no trace
        raise ExportError(
            f"torch.onnx.export failed ({type(exc).__name__}: {_first_line(exc)}); try "
            "--format torch_export"
        ) from None
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(["logits"], {"input": example.numpy()})
    with torch.no_grad():
        return _check(model(example), torch.from_numpy(output), "ONNX model (onnxruntime)")


def _torch_export(model: nn.Module, example: Tensor, path: Path) -> float:
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    except Exception as exc:
        raise ExportError(
            f"torch.export failed ({type(exc).__name__}: {_first_line(exc)}); try --format onnx"
        ) from None
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return _check(model(example), loaded(example), "torch.export program")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no detail"


def _check_output(path: Path) -> None:
    """Refuse an output that cannot be a file: a folder, or a path under a file."""
    if path.is_dir():
        raise ExportError(f"-o {path} is a folder; give the file to write (-o FILE.onnx)")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ExportError(
                    f"-o {path}: {parent} exists and is not a folder; give a file in a folder"
                )
            return


def export_level(
    run_dir: Path,
    level: int | None,
    fmt: str,
    output: Path | None = None,
    trust_code: bool = False,
) -> Exported:
    """Export the model of ``level`` (default: the last) of the run in ``run_dir``;
    ``trust_code``: a custom model's code named by the run's files may be imported."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    paths = RunPaths(Path(run_dir))
    summary = _summary(paths)
    done = _done(summary)
    level = done[-1] if level is None and done else level
    if level is None:
        raise ExportError(f"{paths.root} has no finished level yet")
    path = output or paths.level_export(level, fmt)
    _check_output(path)  # before the model is built: a wrong -o costs no wait and makes nothing
    state = _level_file(paths, level, done)
    with loading_stored_run(paths.root, trust_code):
        final = _final_network(paths, summary, trust_code) if level == done[-1] else None
        if final is None:
            final = _masked_model(state, level, paths.level_model(level)), "masked"
        model, network = final
    model = model.cpu().float().eval()
    info = state["model_info"]
    example = _example(info["channels"], info["image_size"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot make the folder {path.parent} ({exc.strerror})") from None
    if fmt == "onnx":
        difference = _onnx(model, example, path)
    else:
        difference = _torch_export(model, example, path)
    params = list(model.parameters())
    return Exported(
        path=path,
        format=fmt,
        level=level,
        network=network,
        params=sum(p.numel() for p in params),
        params_nonzero=sum(int(p.count_nonzero()) for p in params),
        max_difference=difference,
    )
