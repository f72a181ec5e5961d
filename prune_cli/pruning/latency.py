"""The latency table: a model's latency on a device as a function of each filter unit's width.

The idea is HALP's (Shen, Yin, Molchanov, Mao, Liu and Alvarez, NeurIPS 2022, "Structural
Pruning via Latency-Saliency Knapsack"): the latency of a network is taken as the sum of its
layers' latencies, each looked up by the layer's (input channels, output channels), so that a
knapsack over the filters can price every channel it keeps without timing a network.

Each conv / linear layer the model runs is measured standalone (``structured.latency_ms``, as
the run times networks: plain forward passes and the median on the CPU; bf16, channels-last and
CUDA graphs on CUDA), built with the layer's kernel, stride, padding, dilation, groups and bias,
fed an input of the spatial size that forward hooks saw on the real model, and followed by its
BatchNorm where the layer feeds one (so the elementwise cost of the channels is in the layer's
price). The controlled dimensions of a layer are its output channels when it produces a unit's
channels, and its input channels when it reads them (``Unit.consumers``; a layer after a flatten
reads ``channels x spatial`` features); a depthwise conv has one (in = out = groups = kept).
Each distinct shape, and the two whole networks below, is timed once in each of ``rounds``
rounds in shuffled orders, and its fastest round kept: a change in a shared machine's load
then neither becomes a step along a layer's grid nor a gap between the layers and the network.
A grid value above that of a wider shape (a stall during a small layer's timing) is lowered
to it, so that the table never says that removing channels costs time.

Where this table differs from HALP's:

- HALP's table holds every (in, out) pair a group size allows, measured offline on one GPU
  (TitanV) and shipped with the code for ResNet-50; the layers, their feature-map sizes and the
  channel groups are written by hand in JSON files. Here the grid is sparse (at most ``points``
  widths per controlled dimension, in steps of ``round_to`` or of each unit's own block size,
  always the unit's full width and its floor), the value between grid points is interpolated
  (bilinear in (in, out), linear in one dimension), the layers and shapes come from forward
  hooks, the units from torch-pruning's dependency graph, and the table is measured on the
  run's own device and cached there.
- HALP sums convolution latencies only. Here BatchNorm is priced with its layer, and what the
  layers do not explain (activations, additions, pooling, Python and launch overhead) is a
  residual fitted on two whole networks: the dense one and the one where every unit keeps its
  floor. The residual is ``fixed + scaled * V(w) / V(dense)``, where ``V`` is the volume of the
  layers' output feature maps (channels x positions): elementwise work scales with it, overhead
  does not. ``predict({})`` therefore equals the measured dense latency. Where the two
  timings would make a part negative or larger than the dense residual, the nearest split with
  both parts of the dense residual's sign is taken (all of it scaled, or all of it fixed).
- HALP refuses a width missing from its table; here a width outside the grid (below a floor)
  is extrapolated linearly from the nearest grid segment, never below zero.

The table is cached as JSON (``paths.latency_table_path``), keyed by the device name, the torch
version, the model's layers and units and the setting; it is written atomically under an
``flock`` so that the jobs of a sweep started at once measure it once. A corrupt cache file is
reported in one warning line and measured again.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.io import load_json, open_nofollow, save_json
from prune_cli.paths import latency_table_lock, latency_table_path
from prune_cli.pruning.structured import FilterGroups, latency_ms, remove_channels

log = logging.getLogger("prune_cli.pruning")

#: ``format`` entry of a cached table, checked when it is read
TABLE_FORMAT = "prune-run latency table"
#: 2 (2026-12-07): the residual's fit projects onto a same-signed split instead of making all of
#: it fixed (``_fit_residual``); tables of version 1 are measured again (the key changes)
TABLE_VERSION = 2

#: a measurement: ``measure(module, batch)`` -> ms (``structured.latency_ms`` unless injected)
Measure = Callable[[nn.Module, Tensor], float]


@dataclass(frozen=True)
class LatencySetting:
    """How latency is measured: as ``structured.latency_ms`` times a network."""

    batch: int  # inputs per forward pass (``method.latency_batch``)
    input_shape: tuple[int, ...]  # (C, H, W) of one sample, or (features,)
    device: str  # "cpu" or "cuda": the run's device type
    repeats: int = 20  # timed passes (CPU) or passes per sample (CUDA); the median is kept
    bf16: bool = True  # CUDA only: bf16 autocast
    channels_last: bool = True  # CUDA only
    graphs: bool = True  # CUDA only: captured once, replayed

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.batch < 1:
            raise ConfigError(f"the latency batch must be at least 1, got {self.batch}")
        if self.repeats < 1:
            raise ConfigError(f"the latency repeats must be at least 1, got {self.repeats}")
        if not self.input_shape or min(self.input_shape) < 1:
            raise ConfigError(f"the latency input shape must be positive, got {self.input_shape}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"the latency device must be cpu or cuda, got {self.device!r}")


def device_name(device: str) -> str:
    """The name of the device a table is measured on (part of the cache key): the GPU's name, or
    the CPU's model (``/proc/cpuinfo``, else ``platform``) with torch's thread count."""
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    model = model or platform.processor() or platform.machine() or "cpu"
    return f"{model}, {torch.get_num_threads()} threads"


# --- the layers of a model -------------------------------------------------------------------
@dataclass
class _Layer:
    """One call of a conv / linear layer, and which unit widths its shape depends on."""

    name: str
    kind: str  # "conv" or "linear"
    in_full: int
    out_full: int
    shape: dict[str, Any]  # kernel, stride, padding, dilation, groups, bias, padding_mode, input
    bn: str | None  # "bn1d" / "bn2d" when the layer feeds a BatchNorm, else None
    out_positions: int  # output elements per channel and sample (H x W, or the middle dims)
    #: the input width is ``in_full - sum(scale * (channels - kept))`` over these units
    in_terms: list[tuple[str, int, int]] = field(default_factory=list)  # (root, scale, channels)
    out_root: str | None = None  # the unit whose channels the layer produces
    depthwise: bool = False  # in = out = groups = the out unit's kept count
    xs: list[int] = field(default_factory=list)  # grid of input widths (one value if fixed)
    ys: list[int] = field(default_factory=list)  # grid of output widths
    values: list[list[float]] = field(default_factory=list)  # ms at (xs[i], ys[j])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Layer:
        layer = cls(**d)
        layer.in_terms = [(str(r), int(s), int(c)) for r, s, c in layer.in_terms]
        return layer


def _record_layers(model: nn.Module, example: Tensor) -> list[_Layer]:
    """Every conv / linear call of one eval-mode pass of ``example``, with its input's size and
    the BatchNorm that reads its output, if any (found by tensor identity in forward hooks)."""
    names = {m: n for n, m in model.named_modules()}
    layers: list[_Layer] = []
    outputs: dict[int, tuple[Tensor, int]] = {}  # id(output) -> (the tensor, kept alive; layer)

    def after_layer(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            shape = {
                "kernel": list(module.kernel_size),
                "stride": list(module.stride),
                "padding": module.padding
                if isinstance(module.padding, str)
                else list(module.padding),
                "dilation": list(module.dilation),
                "groups": module.groups,
                "bias": module.bias is not None,
                "padding_mode": module.padding_mode,
                "input": list(x.shape[2:]),  # (H, W)
            }
            layer = _Layer(
                names[module],
                "conv",
                module.in_channels,
                module.out_channels,
                shape,
                None,
                math.prod(output.shape[2:]),
            )
        else:
            shape = {"bias": module.bias is not None, "input": list(x.shape[1:-1])}
            layer = _Layer(
                names[module],
                "linear",
                module.in_features,
                module.out_features,
                shape,
                None,
                math.prod(output.shape[1:-1]),
            )
        outputs[id(output)] = (output, len(layers))
        layers.append(layer)

    def before_bn(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        seen = outputs.get(id(inputs[0]))
        if seen is not None and seen[0] is inputs[0]:
            layers[seen[1]].bn = "bn2d" if isinstance(module, nn.BatchNorm2d) else "bn1d"

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            handles.append(module.register_forward_hook(after_layer))
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(before_bn))
    was_training = model.training
    model.eval()  # eval: BatchNorm's running statistics stay as they are
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return layers


def unit_steps(channels: int, floor: int, round_to: int | None, points: int) -> list[int]:
    """The widths a unit is measured at: multiples of ``round_to`` between its floor and its
    width, both always included, thinned evenly to at most ``points`` values."""
    floor = max(1, min(channels, floor))
    step = round_to or 1
    candidates = sorted({floor, channels, *range(step * (floor // step + 1), channels, step)})
    if len(candidates) <= points:
        return candidates
    last = len(candidates) - 1
    return sorted({candidates[round(k * last / (points - 1))] for k in range(points)})


def _attach_units(
    layers: list[_Layer], groups: FilterGroups, steps: Mapping[str, list[int]], points: int
) -> None:
    """Which unit controls each layer's input and output width, and the layer's grid."""
    producer = {w.rsplit(".", 1)[0]: u for u in groups.units for w in u.weights}
    readers: dict[str, list[Any]] = {}
    for u in groups.units:
        for name in u.consumers:
            readers.setdefault(name, []).append(u)
    warned: set[str] = set()
    for layer in layers:
        unit = producer.get(layer.name)
        groups_ = layer.shape.get("groups", 1)
        if unit is not None and groups_ > 1:
            if groups_ == layer.in_full == layer.out_full:
                layer.out_root, layer.depthwise = unit.root, True
            elif layer.name not in warned:  # torch-pruning splits it; not priced by width here
                warned.add(layer.name)
                log.warning(
                    "latency table: %s is a grouped convolution that is not depthwise; its "
                    "latency is taken as fixed at its full width",
                    layer.name,
                )
        elif unit is not None:
            layer.out_root = unit.root
        feeding = [] if layer.depthwise or groups_ > 1 else readers.get(layer.name, [])
        for u in feeding:
            # a layer after a flatten reads channels x positions features of the unit
            one = len(feeding) == 1 and layer.in_full % u.channels == 0
            layer.in_terms.append((u.root, layer.in_full // u.channels if one else 1, u.channels))
        layer.ys = list(steps[layer.out_root]) if layer.out_root else [layer.out_full]
        if len(layer.in_terms) == 1:
            root, scale, channels = layer.in_terms[0]
            layer.xs = [layer.in_full - scale * (channels - k) for k in steps[root]]
        elif layer.in_terms:  # several units concatenated: evenly spaced total widths
            low = layer.in_full - sum(s * (c - steps[r][0]) for r, s, c in layer.in_terms)
            span = layer.in_full - low
            layer.xs = sorted({low + round(span * k / (points - 1)) for k in range(points)})
        else:
            layer.xs = [layer.out_full if layer.depthwise else layer.in_full]


def _standalone(layer: _Layer, kept_in: int, kept_out: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The layer alone at the given widths (with its BatchNorm), and its input's shape less the
    batch: a freshly initialised module (latency does not depend on the weights' values)."""
    s = layer.shape
    if layer.kind == "conv":
        groups = kept_out if layer.depthwise else s["groups"]
        kept_in = kept_out if layer.depthwise else kept_in
        padding = s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"])
        module: nn.Module = nn.Conv2d(
            kept_in,
            kept_out,
            tuple(s["kernel"]),
            stride=tuple(s["stride"]),
            padding=padding,
            dilation=tuple(s["dilation"]),
            groups=groups,
            bias=s["bias"],
            padding_mode=s["padding_mode"],
        )
        shape = (kept_in, *s["input"])
    else:
        module = nn.Linear(kept_in, kept_out, bias=s["bias"])
        shape = (*s["input"], kept_in)
    if layer.bn is not None:
        bn = nn.BatchNorm2d(kept_out) if layer.bn == "bn2d" else nn.BatchNorm1d(kept_out)
        module = nn.Sequential(module, bn)
    return module.eval(), shape


def _shape_key(layer: _Layer, kept_in: int, kept_out: int) -> str:
    """What decides a standalone layer's latency: two layers with the same key are measured
    once (the nine identical blocks of a ResNet-56 stage)."""
    return json.dumps([layer.kind, kept_in, kept_out, layer.depthwise, layer.bn, layer.shape])


# --- the table ------------------------------------------------------------------------------
class LatencyTable:
    """Per-layer latencies of a model's units on a grid of widths, and their prediction."""

    def __init__(
        self,
        *,
        layers: list[_Layer],
        units: Mapping[str, Mapping[str, Any]],
        dense_ms: float,
        residual_fixed: float,
        residual_scaled: float,
        volume_dense: float,
        info: Mapping[str, Any],
    ) -> None:
        self.layers = layers
        self.units = {r: dict(u) for r, u in units.items()}  # root -> channels, steps
        self.dense_ms = float(dense_ms)
        self.residual_fixed = float(residual_fixed)
        self.residual_scaled = float(residual_scaled)
        self.volume_dense = float(volume_dense)
        self.info = dict(info)  # device name, setting, grid, calibration, timings
        self.cache_path: Path | None = None
        self.from_cache = False
        self._compile()

    def _compile(self) -> None:
        """Flat tuples for ``predict``: it runs thousands of times inside the knapsack."""
        self._channels = {r: int(u["channels"]) for r, u in self.units.items()}
        # layers no unit changes: one constant (and their share of the feature-map volume)
        fixed = [x for x in self.layers if x.out_root is None and not x.in_terms]
        self._fixed_ms = sum(max(0.0, x.values[0][0]) for x in fixed)
        self._fixed_volume = float(sum(x.out_full * x.out_positions for x in fixed))
        self._plan = tuple(
            (
                layer.in_full,
                tuple(layer.in_terms),
                layer.out_full,
                layer.out_root,
                layer.depthwise,
                tuple(layer.xs),
                tuple(layer.ys),
                tuple(tuple(row) for row in layer.values),
                layer.out_positions,
            )
            for layer in self.layers
            if layer.out_root is not None or layer.in_terms
        )

    def steps(self, root: str) -> list[int]:
        """The kept counts that unit ``root`` was measured at (ascending; floor to full)."""
        return list(self.units[root]["steps"])

    def roots(self) -> list[str]:
        return list(self.units)

    def predict(self, widths: Mapping[str, int]) -> float:
        """Predicted ms of the network whose unit roots keep ``widths[root]`` channels (a unit
        not in ``widths`` keeps all): the layers' interpolated latencies plus the residual.
        Pure Python: no torch op, no measurement."""
        channels = self._channels
        total = self._fixed_ms
        volume = self._fixed_volume
        for in_full, in_terms, out_full, out_root, dw, xs, ys, values, positions in self._plan:
            b = widths.get(out_root, channels[out_root]) if out_root is not None else out_full
            a = b if dw else in_full
            for root, scale, ch in in_terms:
                a -= scale * (ch - widths.get(root, ch))
            i, tx = _segment(xs, a)
            j, ty = _segment(ys, b)
            row, nxt = values[i], values[i + 1] if tx else values[i]
            low = row[j] + ty * (row[j + 1] - row[j]) if ty else row[j]
            high = nxt[j] + ty * (nxt[j + 1] - nxt[j]) if ty else nxt[j]
            total += max(0.0, low + tx * (high - low))
            volume += b * positions
        return total + self._residual(volume)

    def _residual(self, volume: float) -> float:
        share = volume / self.volume_dense if self.volume_dense > 0 else 1.0
        return self.residual_fixed + self.residual_scaled * share

    def layer_sum(self, widths: Mapping[str, int]) -> float:
        """The layers' part of :meth:`predict` (no residual)."""
        volume = self._volume(widths)
        return self.predict(widths) - self._residual(volume)

    def _volume(self, widths: Mapping[str, int]) -> float:
        volume = 0.0
        for layer in self.layers:
            root = layer.out_root
            b = widths.get(root, self._channels[root]) if root is not None else layer.out_full
            volume += b * layer.out_positions
        return volume

    # --- storing ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "dense_ms": self.dense_ms,
            "residual_fixed": self.residual_fixed,
            "residual_scaled": self.residual_scaled,
            "volume_dense": self.volume_dense,
            "units": self.units,
            "layers": [layer.to_dict() for layer in self.layers],
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyTable:
        if d.get("format") != TABLE_FORMAT or d.get("version") != TABLE_VERSION:
            raise ValueError(f"not a {TABLE_FORMAT} of version {TABLE_VERSION}")
        return cls(
            layers=[_Layer.from_dict(x) for x in d["layers"]],
            units=d["units"],
            dense_ms=d["dense_ms"],
            residual_fixed=d["residual_fixed"],
            residual_scaled=d["residual_scaled"],
            volume_dense=d["volume_dense"],
            info=d["info"],
        )

    def describe(self) -> dict[str, Any]:
        """What ``summary.json`` records about the table."""
        return {
            **self.info,
            "dense_ms": self.dense_ms,
            "residual_fixed_ms": self.residual_fixed,
            "residual_scaled_ms": self.residual_scaled,
            "layers": len(self.layers),
            "cache": str(self.cache_path) if self.cache_path is not None else None,
            "from_cache": self.from_cache,
        }


def _segment(axis: tuple[int, ...], value: float) -> tuple[int, float]:
    """(i, t): ``value`` lies at ``axis[i] + t * (axis[i + 1] - axis[i])``; t outside [0, 1]
    extrapolates the first or last segment. t = 0 on a one-point axis."""
    n = len(axis)
    if n == 1:
        return 0, 0.0
    i = min(max(bisect.bisect_right(axis, value) - 1, 0), n - 2)
    t = (value - axis[i]) / (axis[i + 1] - axis[i])
    return (i + 1, 0.0) if t == 1.0 else (i, t)


def kept_widths(keep: Mapping[str, Tensor]) -> dict[str, int]:
    """``predict``'s widths from the kept-channel masks of each unit (``keep[root]``, bool)."""
    return {root: int(k.sum()) for root, k in keep.items()}


def measure_thin_error(
    table: LatencyTable,
    widths: Mapping[str, int],
    measured_ms: float,
    measured_dense_ms: float | None = None,
) -> float:
    """The table's relative error on a thin network: predicted / measured - 1. With the dense
    network timed beside the thin one (``measured_dense_ms``), the error of the predicted
    latency ratio instead, (predicted / table.dense_ms) / (measured / measured_dense_ms) - 1:
    a machine whose load changed since the table was measured scales both timings alike."""
    if measured_dense_ms is None:
        return table.predict(widths) / measured_ms - 1
    return (table.predict(widths) / table.dense_ms) / (measured_ms / measured_dense_ms) - 1


# --- building -------------------------------------------------------------------------------
def _default_measure(setting: LatencySetting, rounds: int) -> Measure:
    repeats = math.ceil(setting.repeats / rounds)  # the setting's passes, spread over the rounds

    def measure(module: nn.Module, batch: Tensor) -> float:
        return latency_ms(
            module,
            batch,
            repeats,
            bf16=setting.bf16,
            channels_last=setting.channels_last,
            graphs=setting.graphs,
        )

    return measure


def _batch(example: Tensor, batch: int) -> Tensor:
    """``batch`` inputs made by repeating ``example`` (as the filter method times networks)."""
    return torch.cat([example] * math.ceil(batch / len(example)))[:batch]


def table_key(
    layers: Sequence[_Layer],
    groups: FilterGroups,
    steps: Mapping[str, list[int]],
    setting: LatencySetting,
    name: str,
    extra: Mapping[str, Any],
) -> str:
    """The cache key: a digest of everything the measured values depend on."""
    content = {
        "format": [TABLE_FORMAT, TABLE_VERSION],
        "device": name,
        "torch": torch.__version__,
        "setting": dataclasses.asdict(setting),
        "layers": [
            [x.name, x.kind, x.in_full, x.out_full, x.shape, x.bn, x.out_positions] for x in layers
        ],
        "units": [
            [u.root, u.channels, u.weights, u.consumers, steps[u.root]] for u in groups.units
        ],
        **extra,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``'s lock file, waiting for another holder."""
    lock = latency_table_lock(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(lock, os.O_RDWR | os.O_CREAT)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                break
            except OSError as exc:  # interrupted by a signal: wait again
                if exc.errno != errno.EINTR:
                    raise
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_cache(path: Path, key: str, warn: bool) -> LatencyTable | None:
    """The cached table, or None if there is none or it is unreadable (then, with ``warn``, a
    one-line warning: the caller measures it again and replaces the file)."""
    if not path.exists():
        return None
    try:
        d = load_json(path)
        if not isinstance(d, dict) or d.get("info", {}).get("key") != key:
            raise ValueError("not the table of this model, device and setting")
        table = LatencyTable.from_dict(d)
    except Exception as exc:  # unreadable, truncated, or not a table: measure it again
        if warn:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            log.warning(
                "latency table cache %s is unreadable (%s%s); measuring the table again",
                path,
                type(exc).__name__,
                f": {reason}" if reason else "",
            )
        return None
    table.cache_path, table.from_cache = path, True
    return table


def build_table(
    model: nn.Module,
    groups: FilterGroups,
    example: Tensor,
    setting: LatencySetting,
    *,
    round_to: int | Mapping[str, int] | None = None,
    points: int = 8,
    cache_dir: Path | None = None,
    floor_of: Callable[[str], int] | None = None,
    measure: Measure | None = None,
    rounds: int = 3,
) -> LatencyTable:
    """Measure (or read from the cache) the latency table of ``model``'s prunable units.

    ``example``: a few inputs of the model (one sample's shape is ``setting.input_shape``); the
    timed batch repeats them to ``setting.batch``. ``floor_of(root)``: the fewest channels unit
    ``root`` may keep (default 1). ``measure(module, batch) -> ms`` replaces the timing (a test's
    deterministic cost); it times the standalone layers and the two whole networks alike.
    ``rounds``: each shape is timed once per round, the rounds in shuffled orders, and its
    fastest round kept. ``round_to``: the multiple every unit keeps, or each unit's by root
    (HALP's per-layer channel groups; a unit not named keeps any count); the grid steps by it.
    ``cache_dir`` None: no cache. The model is left as it was (mode, weights, buffers).
    """
    if points < 2:
        raise ConfigError(f"the latency table needs at least 2 points per unit, got {points}")
    if rounds < 1:
        raise ConfigError(f"the latency table needs at least 1 round, got {rounds}")
    multiples = (
        {u.root: round_to.get(u.root) for u in groups.units}
        if isinstance(round_to, Mapping)
        else {u.root: round_to for u in groups.units}
    )
    bad = {r: m for r, m in multiples.items() if m is not None and m < 1}
    if bad:
        raise ConfigError(f"round_to must be at least 1 (or null), got {bad}")
    if tuple(example.shape[1:]) != setting.input_shape:
        raise ConfigError(
            f"the latency example's sample shape {tuple(example.shape[1:])} differs from the "
            f"setting's input_shape {setting.input_shape}: pass inputs of the model's data"
        )
    start = time.perf_counter()
    param = next(model.parameters(), None)
    example = example if param is None else example.to(param.device)  # hooks run the model
    layers = _record_layers(model, example)
    steps = {
        u.root: unit_steps(
            u.channels, floor_of(u.root) if floor_of else 1, multiples[u.root], points
        )
        for u in groups.units
    }
    _attach_units(layers, groups, steps, points)
    name = device_name(setting.device)
    # an injected measure keys its own tables (by its name; an instance by its class's)
    injected = (
        None if measure is None else getattr(measure, "__qualname__", type(measure).__qualname__)
    )
    # a mapping keys the table by every unit's multiple (JSON-able: roots are strings)
    grid = {
        "round_to": dict(round_to) if isinstance(round_to, Mapping) else round_to,
        "points": points,
        "rounds": rounds,
        "measure": injected,
    }
    key = table_key(layers, groups, steps, setting, name, grid)
    info = {
        "key": key,
        "device_name": name,
        "torch": torch.__version__,
        "setting": dataclasses.asdict(setting),
        **grid,
    }
    if cache_dir is None:
        return _measure(
            model, groups, example, setting, layers, steps, measure, rounds, info, start
        )
    path = latency_table_path(Path(cache_dir), key)
    table = _read_cache(path, key, warn=False)  # the common case, without waiting for a lock
    if table is not None:
        return table
    with _locked(path):
        # another job may have measured it while we waited; else it is ours to measure
        table = _read_cache(path, key, warn=True)
        if table is None:
            table = _measure(
                model, groups, example, setting, layers, steps, measure, rounds, info, start
            )
            save_json(table.to_dict(), path)
            table.cache_path = path
    return table


def _measure(
    model: nn.Module,
    groups: FilterGroups,
    example: Tensor,
    setting: LatencySetting,
    layers: list[_Layer],
    steps: Mapping[str, list[int]],
    measure: Measure | None,
    rounds: int,
    info: Mapping[str, Any],
    start: float,
) -> LatencyTable:
    """Time every distinct layer shape on the grid and the dense and floor networks, in
    ``rounds`` rounds of a shuffled order, keeping each one's fastest round; fit the residual.

    Rounds, not one pass in order: on a shared machine the load changes over seconds, and
    timing a layer's grid points one after the other turns such a change into a step in the
    table (or a gap between the layers and the dense network, which the residual would take).
    The fastest round, not the median: other work only ever adds time.
    """
    timer = measure or _default_measure(setting, rounds)
    device = torch.device(setting.device)
    shapes: dict[str, tuple[_Layer, int, int]] = {}
    for layer in layers:
        for a in layer.xs:
            for b in layer.ys:
                shapes.setdefault(_shape_key(layer, a, b), (layer, a, b))
    floors = {u.root: steps[u.root][0] for u in groups.units}
    was_training = model.training
    model.eval()  # an injected measure runs the model too: BatchNorm statistics stay as they are
    try:
        with torch.no_grad():
            # the whole networks the residual is fitted on: dense, and every unit at its floor
            param = next(model.parameters(), None)
            on_device = param is None or param.device.type == device.type
            net = model if on_device else copy.deepcopy(model).to(device)
            removed = {u.root: list(range(floors[u.root], u.channels)) for u in groups.units}
            thin = remove_channels(copy.deepcopy(net), removed, example.to(device)[:2])
            batch = _batch(example.to(device), setting.batch)
            networks = {DENSE: net, FLOOR: thin}
            samples: dict[str, list[float]] = {key: [] for key in [*shapes, *networks]}
            for r in range(rounds):
                order = list(samples)
                random.Random(r).shuffle(order)
                for key in order:
                    if key in networks:
                        samples[key].append(float(timer(networks[key], batch)))
                        continue
                    module, shape = _standalone(*shapes[key])
                    x = torch.randn(setting.batch, *shape, device=device)
                    samples[key].append(float(timer(module.to(device), x)))
    finally:
        model.train(was_training)
    value = {key: min(v) for key, v in samples.items()}
    lowered = 0
    for layer in layers:
        grid = [[value[_shape_key(layer, a, b)] for b in layer.ys] for a in layer.xs]
        layer.values = _monotone(grid)
        before = [v for row in grid for v in row]
        after = [v for row in layer.values for v in row]
        lowered += sum(v > w for v, w in zip(before, after, strict=True))

    units = {u.root: {"channels": u.channels, "steps": steps[u.root]} for u in groups.units}
    info = {
        **info,
        "measurements": len(shapes),  # distinct standalone layer shapes, each timed per round
        "lowered": lowered,  # grid values above a wider shape's, lowered to it (_monotone)
        "floor_widths_ms": value[FLOOR],  # the network with every unit at its floor
    }
    table = LatencyTable(
        layers=layers,
        units=units,
        dense_ms=value[DENSE],
        residual_fixed=0.0,
        residual_scaled=0.0,
        volume_dense=0.0,
        info=info,
    )
    table.volume_dense = table._volume({})
    table.residual_fixed, table.residual_scaled = _fit_residual(
        value[DENSE] - table.layer_sum({}),
        value[FLOOR] - table.layer_sum(floors),
        table._volume(floors) / table.volume_dense if table.volume_dense else 1.0,
    )
    table.info["measure_s"] = time.perf_counter() - start
    return table


#: the keys of the two whole networks among the measured shapes (not JSON lists: no clash)
DENSE, FLOOR = "dense network", "floor network"


def _monotone(grid: list[list[float]]) -> list[list[float]]:
    """The grid made non-decreasing in both widths: each value is the least of those at its
    own and every wider (in, out). A thinner layer that timed slower than a wider one is taken
    as the wider one's time, as on a loaded machine a few milliseconds of waiting can swamp a
    small layer's time (and the knapsack must not learn that removing channels costs time)."""
    rows = [list(r) for r in grid]
    for i in range(len(rows) - 1, -1, -1):
        for j in range(len(rows[i]) - 1, -1, -1):
            if j + 1 < len(rows[i]):
                rows[i][j] = min(rows[i][j], rows[i][j + 1])
            if i + 1 < len(rows):
                rows[i][j] = min(rows[i][j], rows[i + 1][j])
    return rows


def _fit_residual(dense: float, floor: float, share: float) -> tuple[float, float]:
    """(fixed, scaled) with fixed + scaled = ``dense`` (so the dense prediction is the measured
    latency) and fixed + scaled * ``share`` = ``floor`` where both parts then have the dense
    residual's sign. Otherwise the scaled part is clamped to [0, ``dense``] (or [``dense``, 0]),
    the split nearest to the floor network's timing with both of one sign: all of it scaled
    where the floor network left less than ``share`` of it (the floor network is thin and fast;
    on one CPU thread, VGG-11's dense residual was 11.6 of 25.7 ms and its floor network ran in
    1.9 ms, where making it all fixed would predict every thin network 11.6 ms slower than it
    is), all of it fixed where it left more (timing noise), and all fixed where the floor
    network is no thinner (``share`` 1)."""
    if share >= 1.0 - 1e-9:
        return dense, 0.0
    scaled = (dense - floor) / (1.0 - share)
    low, high = (0.0, dense) if dense >= 0 else (dense, 0.0)
    scaled = min(max(scaled, low), high)
    return dense - scaled, scaled
