"""Structured (filter) pruning: coupled filter groups, masking them, and removing them.

The dependency graph comes from torch-pruning (VainF/Torch-Pruning), a maintained library that
traces the model and couples what must change together: the filters of a convolution with its
BatchNorm and the next layer's input channels, the channels of a depthwise convolution with the
pointwise convolution that feeds it, and the residual stream shared by the blocks of a stage.

A *unit* is one group of coupled output channels (rooted at a conv or linear layer). Masking a
channel zeroes everything that produces it (conv filters and biases, BatchNorm gamma and beta,
depthwise channels), so the masked network computes exactly zero there; the thinner network
made by removing those channels then gives the same outputs (tested for every registered
model, with and without the first convolution). The classifier is never pruned; the first
convolution is pruned only when asked (``prune_first``: Lubana and Dick prune it in VGG and
MobileNet and exempt it in ResNet-56, whose residual stream it feeds). Layers given as
``fixed`` (those a method's ``ignore`` patterns leave dense) keep their filters, and so does
every group they produce channels for.

A group is a unit only if all its producers have the same number of channels. torch-pruning
follows the data through elementwise operations, but it reads the channel-padding ``F.pad`` of
the CIFAR ResNets' option-A shortcuts as one of them, and so couples a 16-channel residual stream
to the 32- and 64-channel streams after it; such a group cannot be masked channel by channel.
Without ``prune_first`` it contains the unpruned first convolution and is no unit anyway; with
it, or with such an operation elsewhere in a custom model, ``FilterGroups`` raises a one-line
``ConfigError`` that names the layers and what to set, rather than failing later in a multiply.

The thinner network is stored without pickling a module (``thin_checkpoint``): its state dict plus
the removed channel indices of each unit and the input shape, all plain tensors, lists, ints and
strings, so ``torch.load(..., weights_only=True)`` reads it. ``rebuild_thin`` applies the stored
removal to a freshly built dense model of the same architecture and loads the weights; building
that dense model is the caller's (``prune_cli.thin.load_thin_model``), since this package never
imports a model.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from prune_cli.errors import ConfigError


@dataclass
class Unit:
    """One group of coupled output channels."""

    root: str  # name of the conv / linear module the group is rooted at
    channels: int
    weights: list[str] = field(default_factory=list)  # params whose rows are the channels
    vectors: list[str] = field(default_factory=list)  # biases, BN gamma / beta (1-d)
    bn: list[str] = field(default_factory=list)  # BN weight params (for the |gamma| score)
    #: conv / linear modules whose input channels are the unit's (the next layers; a
    #: depthwise conv, whose inputs and outputs are both the unit's, is among the producers)
    consumers: list[str] = field(default_factory=list)


def _out_fn(module: nn.Module):
    return (
        tp.prune_conv_out_channels
        if isinstance(module, nn.Conv2d)
        else (tp.prune_linear_out_channels)
    )


def _first_and_last(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The first layer (its filters stay unless ``prune_first``) and the classifier (the
    classes: its outputs always stay)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[0], layers[-1]


def _check_widths(unit: Unit, params: Mapping[str, Tensor], first: str) -> None:
    """Raise a ``ConfigError`` if the producers of a unit's channels differ in width (a
    coupling torch-pruning followed wrongly, such as a channel-padding shortcut)."""
    other = {
        name.rsplit(".", 1)[0]: params[name].shape[0]
        for name in unit.weights + unit.vectors
        if params[name].shape[0] != unit.channels
    }
    if not other:
        return
    shown = ", ".join(f"{layer} ({n})" for layer, n in list(other.items())[:3])
    remedy = (
        "set method.prune_first=false, so that the first convolution keeps its filters"
        if f"{first}.weight" in unit.weights
        else f"add {unit.root}.weight to method.ignore, so that these channels stay"
    )
    raise ConfigError(
        f"the {unit.channels} filters of {unit.root} are coupled to layers of other widths "
        f"({shown}{', ...' if len(other) > 3 else ''}) through an operation torch-pruning "
        f"does not split by channel (such as a zero-padding shortcut); {remedy}"
    )


class FilterGroups:
    """The prunable filter units of a model, found once from an example input; the first
    layer's filters are a unit only with ``prune_first``, and no group a ``fixed`` layer
    produces channels for is one."""

    def __init__(
        self,
        model: nn.Module,
        example: Tensor,
        prune_first: bool = False,
        fixed: Sequence[nn.Module] = (),
    ) -> None:
        self.model = model
        was_training = model.training
        model.eval()
        self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        model.train(was_training)
        modules = dict(model.named_modules())
        self.names = {m: n for n, m in modules.items()}
        self.units: list[Unit] = []
        first, last = _first_and_last(model)
        ignored = [last, *fixed] if prune_first else [first, last, *fixed]
        params = dict(model.named_parameters())
        for group in self.graph.get_all_groups(
            ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]
        ):
            root = group[0].dep.target.module
            channels = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
            unit = Unit(self.names[root], channels)
            self._describe(unit, group)
            _check_widths(unit, params, self.names[first])
            self.units.append(unit)

    def _describe(self, unit: Unit, group: tp.Group) -> None:
        """Which parameters produce the unit's channels (rows of weights, entries of vectors)."""
        for item in group:
            module = item.dep.target.module
            if module not in self.names:
                continue
            name = self.names[module]
            # torch-pruning's own test of its handler functions (a set of the registered
            # pruners' bound ``prune_out_channels``), not a guess from the function's name
            produces = self.graph.is_out_channel_pruning_fn(item.dep.handler) or (
                isinstance(module, nn.Conv2d) and module.groups > 1
            )
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if module.affine:
                    unit.vectors += [f"{name}.weight", f"{name}.bias"]
                    unit.bn.append(f"{name}.weight")
            elif isinstance(module, nn.Conv2d | nn.Linear) and produces:
                if f"{name}.weight" not in unit.weights:
                    unit.weights.append(f"{name}.weight")
                if module.bias is not None:
                    unit.vectors.append(f"{name}.bias")
            elif (
                isinstance(module, nn.Conv2d | nn.Linear)
                and self.graph.is_in_channel_pruning_fn(item.dep.handler)
                and name not in unit.consumers
            ):
                unit.consumers.append(name)  # reads the unit's channels (the latency table's)

    def weight_names(self) -> list[str]:
        return sorted({w for u in self.units for w in u.weights})

    def channel_factors(self, keep: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(tensors, 0/1 factors) that zero every producer of the masked channels, for one
        fused multiply (``torch._foreach_mul_``) per step."""
        params = dict(self.model.named_parameters())
        tensors, factors = [], []
        for unit in self.units:
            kept = keep[unit.root]
            if bool(kept.all()):
                continue
            for name in unit.weights + unit.vectors:
                p = params[name]
                shape = (-1,) + (1,) * (p.dim() - 1)  # channels are the first dimension
                tensors.append(p.data)
                factors.append(kept.to(device=p.device, dtype=p.dtype).view(shape))
        return tensors, factors

    @torch.no_grad()
    def zero_channels(self, keep: dict[str, Tensor]) -> None:
        """Zero all producers of the masked channels; ``keep[root]`` is a bool (channels,)."""
        tensors, factors = self.channel_factors(keep)
        if tensors:
            torch._foreach_mul_(tensors, factors)

    def removed(self, keep: dict[str, Tensor]) -> dict[str, list[int]]:
        """The masked channel indices of each unit, in unit order (what ``thin`` removes)."""
        return {u.root: torch.nonzero(~keep[u.root].cpu()).flatten().tolist() for u in self.units}

    def thin(self, keep: dict[str, Tensor], example: Tensor) -> nn.Module:
        """A copy of the model with the masked channels physically removed."""
        thin = copy.deepcopy(self.model)
        return remove_channels(thin, self.removed(keep), example)


def remove_channels(
    model: nn.Module, removed: Mapping[str, Sequence[int]], example: Tensor
) -> nn.Module:
    """Remove ``removed[root]`` output channels of each unit root (a conv or linear module name)
    and everything coupled to them, in place; returns ``model`` in eval mode.

    The indices are those of the dense model: units are disjoint groups, so removing one unit's
    channels leaves the indices of another unit's output channels unchanged.
    """
    model.eval()
    with torch.enable_grad():  # torch-pruning traces the graph with autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    modules = dict(model.named_modules())
    for name, idxs in removed.items():
        if idxs:
            root = modules[name]
            graph.get_pruning_group(root, _out_fn(root), idxs=list(idxs)).prune()
    return model


#: ``format`` entry of a stored thin model, checked when it is read
THIN_FORMAT = "prune-run thin model"
THIN_VERSION = 1


def thin_checkpoint(
    thin: nn.Module,
    removed: Mapping[str, Sequence[int]],
    input_shape: Sequence[int],
    num_classes: int,
    model: str | None = None,
) -> dict[str, Any]:
    """What rebuilds ``thin``: its weights and how it differs from the dense model.

    Only tensors, dicts, lists, ints and strings, so that ``torch.load(weights_only=True)`` reads
    it and loading a file cannot run code (a pickled ``nn.Module`` needs ``weights_only=False``).
    ``input_shape`` (channels, height, width) and ``num_classes`` are the model's ``DataSpec``;
    ``model`` is its registry name, when the caller knows it.
    """
    return {
        "format": THIN_FORMAT,
        "version": THIN_VERSION,
        "model": model,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "removed": {name: [int(i) for i in idxs] for name, idxs in removed.items()},
        "state_dict": {k: v.detach().cpu() for k, v in thin.state_dict().items()},
    }


def rebuild_thin(dense: nn.Module, checkpoint: Mapping[str, Any]) -> nn.Module:
    """The thin model of ``checkpoint``, made from ``dense``, a freshly built model of the same
    architecture and input shape (changed in place): remove the stored channels, load the
    weights (strictly, so an architecture that does not match fails here)."""
    example = torch.zeros(1, *checkpoint["input_shape"])
    thin = remove_channels(dense.cpu(), checkpoint["removed"], example)
    thin.load_state_dict(checkpoint["state_dict"])
    return thin


def macs_and_params(model: nn.Module, example: Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass of ``example`` in eval mode.

    The MACs are counted as every level's cost is (``recording/cost.py``): by
    :class:`torch.utils.flop_counter.FlopCounterMode`, convolutions and matrix products only
    (FLOPs / 2), so a filter run's ``macs_before`` equals its dense level's ``macs_dense``.
    torch-pruning's ``count_ops_and_params`` would add BatchNorm, activations and pooling
    (+0.9% for ResNet-56, +5.4% for MobileNetV2), a second convention in one report.
    """
    from torch.utils.flop_counter import FlopCounterMode  # imported when a run ends

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return int(counter.get_total_flops()) // 2, int(params)


def latency_ms(
    model: nn.Module,
    example: Tensor,
    repeats: int = 20,
    *,
    bf16: bool = True,
    channels_last: bool = True,
    graphs: bool = True,
    compiled: bool = False,
) -> float:
    """Median time of one forward pass of ``example`` (eval mode, no gradients), in ms.

    CPU: wall time of single passes after a warm-up. CUDA: the network as training runs it
    there (bf16 autocast and channels-last, each optional) on a copy of the model, with cuDNN's
    algorithm search on; the passes are timed with CUDA events over ``repeats`` back-to-back
    passes per sample (5 samples, median), after a warm-up that includes the search. With
    ``graphs`` the pass is captured once as a CUDA graph and replayed: the time is then the
    GPU's, not the Python and kernel-launch overhead of ~100-300 small kernels, which at small
    inputs exceeds the compute and would hide what removing filters saves (a deployed model
    would be compiled or graphed too). Falls back to eager passes if capture fails. CUDA with
    ``compiled``: the copy is compiled first (``torch.compile`` with inductor's freezing, which
    folds BatchNorm into the convolutions and fuses the element-wise work, as a deployment
    would); the compile takes a minute or more per network.
    """
    if example.is_cuda:
        return _cuda_latency_ms(model, example, repeats, bf16, channels_last, graphs, compiled)
    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(example)
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append(1000 * (time.perf_counter() - start))
    model.train(was_training)
    return sorted(times)[len(times) // 2]


def interleaved_ms(
    first: nn.Module,
    second: nn.Module,
    example: Tensor,
    repeats: int = 20,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """Median ms of one forward pass of ``first`` and of ``second`` (eval mode, no gradients)
    on the CPU, their passes interleaved: ``repeats`` rounds of an untimed then a timed pass of
    ``first``, then the same of ``second``.

    For a latency *ratio* on a shared CPU. Timed one after the other, each network's passes
    fall in a stretch of a second or more, and the machine's speed moves by 10-20% between such
    stretches (another tenant, the host's clock): the ratio of a fixed thin / dense pair timed
    that way spread 0.43-0.58 in 30 alternating measurements of MobileNet-V1, where interleaved
    passes spread 0.48-0.51. The untimed pass before each timed one warms the caches the other
    network's pass evicted (timed back to back with no such pass, the ratio came out about 2%
    high).
    ``clock`` is injectable for tests."""
    states = (first.training, second.training)
    first.eval()
    second.eval()
    times: tuple[list[float], list[float]] = ([], [])
    try:
        with torch.inference_mode():
            for net in (first, second, first, second):
                net(example)
            for _ in range(repeats):
                for net, out in ((first, times[0]), (second, times[1])):
                    net(example)
                    start = clock()
                    net(example)
                    out.append(1000 * (clock() - start))
    finally:
        first.train(states[0])
        second.train(states[1])
    return statistics.median(times[0]), statistics.median(times[1])


def _cuda_latency_ms(
    model: nn.Module,
    example: Tensor,
    repeats: int,
    bf16: bool,
    channels_last: bool,
    graphs: bool,
    compiled: bool = False,
) -> float:
    fmt = torch.channels_last if channels_last and example.dim() == 4 else torch.contiguous_format
    net = copy.deepcopy(model).eval().to(memory_format=fmt)  # the caller's model is left as is
    if compiled:
        torch._dynamo.reset()  # each network compiles afresh, never against the cache limit
        net = torch.compile(net)
    x = example.contiguous(memory_format=fmt)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True

    def forward() -> Tensor:
        # no autocast weight cache: a captured graph must cast in every replay
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            return net(x)

    freezing = contextlib.nullcontext()
    if compiled:
        import torch._inductor.config as inductor_config

        freezing = inductor_config.patch(freezing=True)  # BatchNorm folded, weights constant
    try:
        with torch.inference_mode(), freezing:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (and cuDNN's search) off the capture
                for _ in range(5):
                    forward()
            torch.cuda.current_stream().wait_stream(side)
            run = forward
            if graphs:
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        forward()
                    run = graph.replay
                except RuntimeError:  # an op that cannot be captured: time eager passes
                    torch.cuda.synchronize()
                    run = forward
            for _ in range(3):
                run()
            samples = []
            for _ in range(5):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    run()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / repeats)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return sorted(samples)[len(samples) // 2]
