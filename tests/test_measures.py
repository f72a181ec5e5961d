"""Issue 9's measurements: Gini beside PQI, compute cost, collapse; and the Python API.

Hand-computed values on tiny layers, then one real run (MLP on digits, one epoch, one level)
whose files are checked against recomputations: the sparse MACs of an MLP are its non-zero
weights (one output position per layer), the Gini rows are the Gini of the saved weights, and
the model that ``load_run(...).model(k)`` rebuilds scores the recorded test accuracy.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import run_config
from torch import nn

import prune_cli
from prune_cli.data import build_dataset
from prune_cli.errors import UserError
from prune_cli.experiment import Experiment
from prune_cli.metrics import gini_index, unconnected_units
from prune_cli.paths import RunPaths
from prune_cli.recording.cost import level_cost
from prune_cli.recording.measure import THIN_LAYER, collapse
from prune_cli.recording.records import RunRecords
from prune_cli.training.loop import evaluate


def test_unconnected_units_by_hand():
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # (out 2, in 3)
    # output 0 has no incoming weight; inputs 1 and 2 have no outgoing weight
    assert unconnected_units(w) == (1, 2)
    conv = torch.ones(4, 3, 3, 3)
    conv[1] = 0  # filter 1 cut off
    conv[:, 2] = 0  # input channel 2 read by no filter
    assert unconnected_units(conv) == (1, 1)
    assert unconnected_units(torch.ones(5)) == (0, 0)


class Tiny(nn.Module):
    """conv 1->2 (3x3, padding 1) on 4x4 -> flatten (32) -> linear 32->3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_macs_dense_and_unstructured_sparse_by_hand():
    model = Tiny()
    params = {"conv.weight": model.conv.weight, "fc.weight": model.fc.weight}
    # dense: conv 18 weights x 16 output positions = 288; linear 32 x 3 = 96
    cost = level_cost(model, params, (1, 4, 4))
    assert cost == {"params": 18 + 2 + 96 + 3, "macs_dense": 384, "macs_sparse": 384}
    with torch.no_grad():
        model.conv.weight[1] = 0  # 9 weights x 16 positions
        model.fc.weight[:, :16] = 0  # 48 weights x 1 position
    cost = level_cost(model, params, (1, 4, 4))
    assert cost["macs_dense"] == 384 and cost["macs_sparse"] == 384 - 144 - 48
    assert model.training  # counted in eval mode, the mode restored


def test_collapse_names_zero_recall_classes_thin_layers_and_cut_units():
    records = RunRecords()
    # level 1: class b lost (recall 0, support 5); class c has no test examples (not counted)
    records.recall += [(1, "trained", 0, "a", 5, 0.8), (1, "trained", 1, "b", 5, 0.0)]
    records.recall += [(1, "trained", 2, "c", 0, 0.0), (1, "pruned", 0, "a", 5, 0.0)]
    first = torch.ones(3, 2)
    second = torch.zeros(4, 3)
    second[0, 0] = 1.0  # one weight of 12 left: thin; rows 1-3 and columns 1-2 cut off
    params = {"l1.weight": first, "l2.weight": second}
    counts = {"l1.weight": (6, 6), "l2.weight": (12, 1)}
    found = collapse(records, 1, params, counts)
    assert found["zero_recall_classes"] == ["b"] and found["collapsed"]
    assert found["units_no_incoming"] == 3 and found["units_no_outgoing"] == 2
    assert found["dead_units_by_layer"] == {"l2.weight": {"no_incoming": 3, "no_outgoing": 2}}
    assert THIN_LAYER < 1 / 12 and found["thin_layers"] == {}  # 8% left is not thin
    counts["l2.weight"] = (1000, 1)
    assert collapse(records, 1, params, counts)["thin_layers"] == {"l2.weight": 0.001}
    # an empty layer collapses the model even when every class keeps some recall
    records.recall[1] = (1, "trained", 1, "b", 5, 0.4)
    counts["l2.weight"] = (12, 0)
    found = collapse(records, 1, {"l1.weight": first, "l2.weight": second * 0}, counts)
    assert found["zero_recall_classes"] == [] and found["collapsed"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api") / "run"
    cfg = run_config(
        ["model=mlp", "train.epochs=1", "method.levels=1", "method.sparsity=0.8", "progress=false"]
    )
    summary = Experiment(cfg, root).run()
    assert summary["status"] == "completed"
    return root, cfg


def test_a_run_records_gini_macs_and_collapse_per_level(real_run):
    root, _ = real_run
    run = prune_cli.load_run(root)
    sparsity = run.sparsity
    state = torch.load(RunPaths(root).level_model(1), weights_only=True)
    for lv in run.summary["levels"]:
        k = lv["level"]
        nonzero = int(sparsity[sparsity.level == k].nonzero.sum())
        numel = int(sparsity[sparsity.level == k].numel.sum())
        # an MLP's layers have one output position each: MACs = (non-zero) weights
        assert lv["macs_dense"] == numel and lv["macs_sparse"] == nonzero
        assert lv["params"] == run.summary["params_total"]
        for key in ("units_no_incoming", "units_no_outgoing", "thin_layers", "collapsed"):
            assert key in lv
    gini = run.gini
    assert set(gini.stage) == {"trained", "pruned"} and set(gini.scope) == {"global", "layer"}
    weights = {k: state["model"][k] for k in state["mask"]}
    row = gini[(gini.level == 1) & (gini.stage == "trained") & (gini.scope == "global")]
    expected = gini_index(
        torch.cat([w.reshape(-1) for w in weights.values()]),
        torch.cat([state["mask"][k].reshape(-1) for k in weights]),
    )
    assert row.gini.item() == pytest.approx(expected)
    assert run.summary["levels"][1]["gini"] == pytest.approx(expected)


def test_load_run_rebuilds_the_model_of_a_level_without_naming_it(real_run):
    root, cfg = real_run
    run = prune_cli.load_run(str(root))
    assert run.level_numbers == [0, 1]
    assert list(run.levels.level) == [0, 1] and not run.metrics.empty
    assert {"recall", "class_name"} <= set(run.recall.columns)
    assert {"pqi", "p", "q"} <= set(run.pqi.columns) and not run.distortion.empty
    data = build_dataset(cfg.dataset, torch.device("cpu"))
    for k in (0, 1):
        model = run.model(k)
        result = evaluate(model, data, "test", cfg.train)
        assert result.accuracy == pytest.approx(run.summary["levels"][k]["test_accuracy"])
    mask = run.mask(1)
    model = run.model()  # the last level
    params = dict(model.named_parameters())
    assert all(bool((params[k][~m] == 0).all()) for k, m in mask.items())
    kept = sum(int(m.sum()) for m in mask.values())
    assert kept == int(run.sparsity[run.sparsity.level == 1].nonzero.sum())
    # an attached mask keeps pruned weights at zero through an update
    attached = run.model(1, attach_mask=True)
    opt = torch.optim.SGD(attached.parameters(), lr=1.0)
    attached(torch.randn(4, *data.spec.input_shape)).sum().backward()
    opt.step()
    names = dict(attached.named_modules())
    for k, m in mask.items():
        module, _, attr = k.rpartition(".")
        assert bool((getattr(names[module], attr)[~m] == 0).all())
    with pytest.raises(UserError, match="no level 7"):
        run.model(7)


def test_load_runs_concatenates_tables_with_run_columns(real_run):
    root, _ = real_run
    runs = prune_cli.load_runs([root.parent])
    assert len(runs) == 1 and isinstance(runs[0], prune_cli.Run)
    levels = runs.levels
    assert list(levels.columns[:5]) == ["run", "method", "model", "dataset", "seed"]
    assert list(levels.level) == [0, 1] and set(levels.method) == {"magnitude"}
    assert isinstance(runs.gini, pd.DataFrame) and len(runs.gini) == len(runs[0].gini)


def test_import_prune_cli_stays_cheap():
    code = (
        "import sys, prune_cli; "
        "assert not {'torch', 'pandas', 'prune_cli.api'} & set(sys.modules), sorted(sys.modules); "
        "assert callable(prune_cli.load_run) and 'pandas' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
