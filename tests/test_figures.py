"""prune-report's figures, read back from the files they were saved to (and from the Figure
objects the save was handed): fonts embedded as TrueType in the PDFs, plain tick labels on log
axes, layers in network order, titles that name the study, error bars that are one std over the
seeds and say so, crosses on collapsed points."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from test_report import make_run

from prune_cli.paths import RunPaths
from prune_cli.reporting import figures
from prune_cli.reporting.collect import collect
from prune_cli.reporting.pivot import count_text

#: the model's layers in network order: neither alphabetical (``classifier`` first, then
#: ``features.10``) nor natural (``classifier`` first) order gives it
LAYERS = ("features.2.weight", "features.10.weight", "classifier.weight")
#: remaining fraction of each layer at each level, before the seed's offset
REMAINING = {0: (1.0, 1.0, 1.0), 1: (0.6, 0.5, 0.4), 2: (0.3, 0.25, 0.15)}
#: test accuracy of magnitude's levels 1 and 2, per seed; seed 1 collapses at level 2
TESTS = {0: (0.90, 0.80), 1: (0.92, 0.70), 2: (0.94, 0.79)}
SEEDS = tuple(TESTS)
NUMEL = 1000


def remaining(level: int, layer: int, seed: int) -> float:
    """What the run of ``seed`` kept of ``layer`` (as the nonzero count it writes rounds it)."""
    if level == 0:
        return 1.0
    return round(NUMEL * (REMAINING[level][layer] - 0.02 * seed)) / NUMEL


def layered_run(root: Path, seed: int) -> None:
    """A 3-level magnitude run of a 3-layer model, its per-layer tables in network order."""
    t1, t2 = TESTS[seed]
    make_run(
        root,
        "magnitude",
        seed,
        [(0.0, 0.95, 0.96, None), (0.5, 0.93, t1, 1.1), (0.75, 0.9, t2, 1.3)],
        extra={k: {"collapsed": seed == 1 and k == 2} for k in range(3)},
    )
    paths = RunPaths(root)
    rows = []
    for k in range(3):
        for i, name in enumerate(LAYERS):
            nonzero = round(NUMEL * remaining(k, i, seed))
            rows.append((k, name, NUMEL, nonzero, 1 - nonzero / NUMEL))
    pd.DataFrame(rows, columns=["level", "name", "numel", "nonzero", "sparsity"]).to_csv(
        paths.sparsity, index=False
    )
    pqi = []
    for k in range(3):
        for p, q in ((0.5, 1.0), (1.0, 2.0)):
            pqi.append((k, "trained", "global", "all", p, q, 0.1 + 0.01 * k))
            for i, name in enumerate(LAYERS):
                value = 0.1 + 0.01 * k + 0.001 * i + 0.002 * seed
                pqi.append((k, "trained", "layer", name, p, q, value))
    pd.DataFrame(pqi, columns=["level", "stage", "scope", "name", "p", "q", "pqi"]).to_csv(
        paths.pqi, index=False
    )


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """One study's figures as PNG, PDF and SVG, and the Figure behind each file stem.

    magnitude: 3 seeds of the layered run above; random: 2 seeds of one layer kept at 100, 80
    and 70 % (a range narrower than a decade)."""
    tmp = tmp_path_factory.mktemp("figures")
    runs = tmp / "runs"
    for seed in SEEDS:
        layered_run(runs / f"magnitude-{seed}", seed)
    for seed in (0, 1):
        levels = [
            (0.0, 0.95, 0.96, None),
            (0.2, 0.9, 0.9, 1.0),
            (0.3, 0.9, 0.88 + 0.02 * seed, 1.0),
        ]
        make_run(runs / f"random-{seed}", "random", seed, levels)
    fonttype = matplotlib.rcParams["pdf.fonttype"]
    saved: dict[str, object] = {}
    save = figures.FigureDir.save

    def keep(self, fig, stem):
        saved[stem] = fig
        return save(self, fig, stem)

    out = tmp / "out"
    out.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures.FigureDir, "save", keep)
        names = figures.study_plots(collect([runs]), "digits", "mlp", out, ("pdf", "svg"))
    return {"out": out, "names": names, "figures": saved, "fonttype": fonttype}


SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(path: Path, group: str) -> list[str]:
    """The text of every ``<text>`` under the SVG groups whose id starts with ``group``
    (``xtick_``, ``ytick_``, ``legend_``; ``""``: the whole figure), in document order."""
    root = ET.parse(path).getroot()
    texts = []
    for g in root.iter(f"{SVG}g"):
        if g.get("id", "").startswith(group) and (group or g.get("id") == "figure_1"):
            texts += ["".join(t.itertext()) for t in g.iter(f"{SVG}text")]
    return texts


def test_pdfs_embed_truetype_fonts_and_leave_the_global_setting_alone(drawn):
    pdfs = sorted(drawn["out"].glob("*.pdf"))
    assert len(pdfs) == len(drawn["names"]) >= 8
    for pdf in pdfs:
        data = pdf.read_bytes()
        subtypes = set(re.findall(rb"/Subtype\s*/(\w+)", data)) & {
            b"Type1",
            b"Type3",
            b"Type0",
            b"TrueType",
            b"CIDFontType0",
            b"CIDFontType2",
        }
        assert b"/Type3" not in data and subtypes, pdf.name
        assert subtypes <= {b"Type0", b"CIDFontType2", b"TrueType"}, pdf.name
        assert b"/FontFile2" in data, pdf.name  # the TrueType program itself is embedded
    assert matplotlib.rcParams["pdf.fonttype"] == drawn["fonttype"]


def test_per_layer_figures_list_layers_in_network_order_and_name_the_study(drawn):
    out = drawn["out"]
    for stem in ("layer_remaining_digits_mlp_magnitude", "pqi_layers_digits_mlp_magnitude"):
        legend = svg_texts(out / f"{stem}.svg", "legend_")
        assert legend[:3] == list(LAYERS), stem
        assert figures.COLLAPSED_LABEL in legend  # seed 1 collapsed at level 2
        title = drawn["figures"][stem]._suptitle.get_text()
        assert title.startswith("digits / mlp, magnitude: ")
        assert title in svg_texts(out / f"{stem}.svg", "")


def test_log_axes_are_labelled_in_plain_numbers(drawn):
    """Remaining weights 15-100 % are labelled 100, 50, 20; a range within one decade (random:
    70-100 %) by its ends; no matplotlib 10^x notation anywhere."""
    out = drawn["out"]
    layers = svg_texts(out / "layer_remaining_digits_mlp_magnitude.svg", "ytick_")
    assert sorted(layers, key=float) == ["20", "50", "100"]
    narrow = svg_texts(out / "layer_remaining_digits_mlp_random.svg", "ytick_")
    assert sorted(narrow, key=float) == ["70", "100"]
    accuracy = svg_texts(out / "accuracy_remaining_digits_mlp.svg", "xtick_")
    assert sorted(accuracy, key=float) == ["50", "100"]  # 100, 80, 75, 70, 50, 25 %
    levels = svg_texts(out / "layer_remaining_digits_mlp_magnitude.svg", "xtick_")
    assert all(re.fullmatch(r"−?\d+", t) for t in levels) and "2" in levels


def _bars(ax, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and the half-length of the error bars of the line ``label`` of ``ax``."""
    (container,) = [c for c in ax.containers if c.get_label() == label]
    line, _, (bars, *_) = container.lines
    segments = np.array(bars.get_segments())  # (points, 2 ends, xy)
    return line.get_xdata(), line.get_ydata(), (segments[:, 1, 1] - segments[:, 0, 1]) / 2


def test_error_bars_are_one_std_over_the_seeds_and_say_so(drawn):
    ax = drawn["figures"]["layer_remaining_digits_mlp_magnitude"].axes[0]
    x, y, half = _bars(ax, LAYERS[1])
    assert list(x) == [0, 1, 2]  # level 0: every seed keeps 100 %, a bar of length 0
    for k, mean, h in zip(x.astype(int), y, half, strict=True):
        kept = [100 * remaining(k, 1, s) for s in SEEDS]
        assert mean == pytest.approx(np.mean(kept)) and h == pytest.approx(np.std(kept, ddof=1))
    texts = svg_texts(drawn["out"] / "layer_remaining_digits_mlp_magnitude.svg", "")
    assert "error bars: ± 1 std over n = 3 seeds" in texts
    accuracy = svg_texts(drawn["out"] / "accuracy_remaining_digits_mlp.svg", "")
    assert "error bars: ± 1 std over n = 2-3 seeds" in accuracy  # random has 2 seeds
    ax = drawn["figures"]["accuracy_remaining_digits_mlp"].axes[0]
    x, y, half = _bars(ax, "magnitude")
    assert list(x) == pytest.approx([100, 50, 25])
    level1 = [TESTS[s][0] for s in SEEDS]
    assert y[1] == pytest.approx(100 * np.mean(level1))
    assert half[1] == pytest.approx(100 * np.std(level1, ddof=1))


def test_collapsed_points_are_marked_and_explained(drawn):
    """magnitude's seed 1 collapsed at level 2 (25 % remaining): a red cross there alone."""
    ax = drawn["figures"]["accuracy_remaining_digits_mlp"].axes[0]
    (crosses,) = [c for c in ax.collections if c.get_label() == figures.COLLAPSED_LABEL]
    level2 = 100 * np.mean([TESTS[s][1] for s in SEEDS])
    assert crosses.get_offsets().tolist() == [pytest.approx([25.0, level2])]
    texts = svg_texts(drawn["out"] / "accuracy_remaining_digits_mlp.svg", "")
    assert figures.COLLAPSED_NOTE in texts and figures.COLLAPSED_LABEL in texts
    # random never collapsed: its per-layer figure has no cross and no such note
    random = svg_texts(drawn["out"] / "layer_remaining_digits_mlp_random.svg", "")
    assert figures.COLLAPSED_NOTE not in random and figures.COLLAPSED_LABEL not in random


def test_layer_order_is_the_stored_order_and_natural_without_one():
    names = ["layer10", "fc", "layer2"]
    assert figures.layer_order(names) == ["fc", "layer2", "layer10"]
    stored = pd.DataFrame({"run": ["a", "a", "b", "b"], "name": ["layer10", "layer2"] * 2})
    # the stored order first (as the runs wrote it); a layer no run lists after, naturally
    assert figures.layer_order(names, pd.DataFrame(), stored) == ["layer10", "layer2", "fc"]


def test_the_macs_axis_is_labelled_as_counts():
    fig, ax = plt.subplots()
    ax.plot([1500, 9000], [1, 2])
    figures.log_axis(ax, "x", np.array([1500.0, 9000.0]), text=count_text)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    assert labels == ["2K", "5K"]  # 1-2-5 steps within 1.5K-9K, no 10^3 notation
