"""The latency-budget benchmark (scripts/bench_latency.py) and its part in scripts/gpu_check.py:
the sweep's arms compose to the three selections, the tables and verdicts say what the rows
hold, each script writes only its own section of docs/BENCHMARKS.md, and gpu-check's latency
step runs (on the CPU, at toy sizes) through the filter method with one table per network."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_latency  # noqa: E402 (scripts/ is not a package)
import gpu_check  # noqa: E402


def _row(arm: str, ratio: float, target: float = 0.5) -> dict:
    return {
        "model": "resnet56",
        "input": "32x32",
        "batch": 64,
        "target": target,
        "arm": arm,
        "predicted_ratio": 0.5,
        "dense_ms": 10.0,
        "thin_ms": 10.0 * ratio,
        "ratio": ratio,
        "error": ratio / target - 1,
        "macs_ratio": 0.4,
        "params_ratio": 0.3,
        "filters_kept": 0.45,
        "importance_kept": 0.6,
        "seconds": 3.0,
    }


def test_the_table_marks_the_rows_that_miss_the_target_by_more_than_5_percent():
    rows = [_row("knapsack", 0.51), _row("knapsack", 0.54), _row("global ranking, tuned", 0.45)]
    # the table predicts 0.6 with every unit at its floor: a target of 0.5 is out of reach
    rows[1]["floor_ratio"], rows[2]["floor_ratio"] = 0.6, 0.3
    lines = bench_latency.budget_table(rows).splitlines()[2:]
    assert ["(missed)" in line for line in lines] == [False, True, True]  # +2%, +8%, -10%
    assert ["(floors: 0.600)" in line for line in lines] == [False, True, False]
    assert "floors" not in lines[0] + lines[2]
    verdict = bench_latency.budget_verdict(rows).splitlines()
    assert verdict[0].startswith("- knapsack: 1 of 2 within 5% of the target")
    assert "(largest error 8.0%)" in verdict[0]
    assert verdict[1].startswith("- global ranking, tuned: 0 of 1 within")
    assert len(verdict) == 2  # no line for an arm without rows


@pytest.mark.parametrize("experiment", bench_latency.Study().experiments)
def test_the_sweeps_arms_compose_to_the_knapsack_and_the_two_tuned_rankings(experiment):
    study = bench_latency.Study(target=0.7, method=(("latency_points", "3"),))
    chosen = []
    for arm in bench_latency.arm_overrides(study):
        method = run_config([f"experiment={experiment}", f"method={arm}"]).method
        assert method.name == "filter" and method.when == "trained"  # dense shared per seed
        assert method.latency_target == 0.7 and method.latency_points == 3
        chosen.append((method.latency_by, method.scope))
    assert chosen == [("knapsack", None), ("fraction", "global"), ("fraction", "layer")]
    command = bench_latency.sweep_command(study, Path("/tmp/x"))
    assert f"experiment={','.join(study.experiments)}" in command  # one sweep, both models
    assert "output_root=/tmp/x" in command  # the dense models shared under it


def test_the_study_verdict_reads_the_pruned_level_of_the_reports_csv(tmp_path):
    header = "dataset,model,label,level,test_mean,test_std,latency_reached_mean,"
    header += "method.latency_by,method.scope\n"
    rows = [
        "fashion_mnist,lenet5,dense,0,0.99,0.0,,knapsack,",  # level 0: not compared
        "fashion_mnist,lenet5,k,1,0.85,0.01,0.51,knapsack,",
        "fashion_mnist,lenet5,g,1,0.84,0.01,0.50,fraction,global",
        "fashion_mnist,lenet5,l,1,0.86,0.02,0.49,fraction,layer",
        "fashion_mnist,vgg11,k,1,0.90,0.01,0.50,knapsack,",
        "fashion_mnist,vgg11,g,1,0.80,0.01,0.50,fraction,global",
    ]
    path = tmp_path / "accuracy.csv"
    path.write_text(header + "\n".join(rows) + "\n")
    lenet, vgg = bench_latency.study_verdict(path).splitlines()
    assert lenet == (
        "- lenet5: knapsack 85.00 ± 1.00% at latency 0.510; global 84.00 ± 1.00% at latency "
        "0.500; layer 86.00 ± 2.00% at latency 0.490 — knapsack less accurate"  # 85 < 86
    )  # 0.51 / 0.49 is within 5%: no warning
    assert vgg.endswith("knapsack at least as accurate")
    path.write_text(header + rows[4] + "\n" + rows[5].replace(",0.50,", ",0.40,") + "\n")
    assert bench_latency.study_verdict(path).endswith("not at equal latency)")


def test_each_script_writes_its_own_section_and_leaves_the_others(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    gpu = f"{gpu_check.BEGIN}\nH100 figures\n{gpu_check.END}"
    doc.write_text(
        f"# Benchmarks\n\n{gpu}\n\ntext\n\n{bench_latency.BEGIN}\nold\n{bench_latency.END}\n"
    )
    bench_latency.write_section(doc, "new figures")
    text = doc.read_text()
    assert f"{bench_latency.BEGIN}\nnew figures\n{bench_latency.END}" in text
    assert "old" not in text and gpu in text and "\ntext\n" in text
    gpu_check.write_section(doc, "GPU again")
    assert "H100 figures" not in doc.read_text() and "new figures" in doc.read_text()
    fresh = tmp_path / "other.md"  # no markers yet: appended with them
    fresh.write_text("# Other\n")
    bench_latency.write_section(fresh, "figures")
    assert fresh.read_text() == f"# Other\n\n{bench_latency.BEGIN}\nfigures\n{bench_latency.END}\n"


def test_gpu_checks_latency_step_prunes_each_network_to_its_target_on_the_cpu(monkeypatch):
    """The code path ``make gpu-check`` runs on CUDA, here on the CPU with a tiny network: one
    row per way of choosing filters, the table measured once and read from the cache after."""
    case = bench_latency.Case("lenet5", 32, 10, 2, 2, 1)  # seconds, not minutes
    monkeypatch.setattr(bench_latency, "QUICK_CASES", (case,))
    rows: list[dict] = []
    real = bench_latency.run_budgets

    def keep_rows(*args, **kwargs):
        rows.extend(real(*args, **kwargs))
        return rows

    monkeypatch.setattr(bench_latency, "run_budgets", keep_rows)
    args = argparse.Namespace(device="cpu", latency_models=["lenet5"], latency_targets=[0.7])
    section = gpu_check.latency_section(args)
    assert [r["arm"] for r in rows] == [label for label, *_ in bench_latency.PART1_ARMS]
    assert [r["table_from_cache"] for r in rows] == [False, True, True, True]
    for r in rows:
        assert r["target"] == 0.7 and r["model"] == "lenet5"
        assert 0 < r["macs_ratio"] <= 1 and 0 < r["params_ratio"] <= 1
        assert 0 < r["filters_kept"] <= 1 and 0 < r["importance_kept"] <= 1
        assert r["ratio"] == pytest.approx(r["thin_ms"] / r["dense_ms"])
    assert section.count("| lenet5 | 32x32, 2 | 0.7 |") == len(bench_latency.PART1_ARMS)
    assert "- lenet5: the dense network against a copy of itself, 5 pairs: ratios " in section
    assert "- knapsack: " in section and "- per-layer ranking, tuned: " in section


def test_part_1_with_an_experiments_per_layer_multiples_keeps_them_in_every_arm(
    tmp_path, monkeypatch
):
    """``--round-to-layers EXPERIMENT``: every arm keeps each unit at its multiple from that
    experiment's ``method.round_to_layers`` (``--round-to`` for the others), and the section
    says which experiment's they are. The HALP experiment's are HALP's table (spot values)."""
    # in a fresh process: the script composes the experiment without the CLI's registrations
    code = (
        "import bench_latency; m = bench_latency.experiment_multiples('halp_resnet50_imagenet');"
        "print(m['layer3.[1-5].conv1'], m['layer4.[12].conv[12]'], len(m))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["128", "32", "15"], out.stderr[-2000:]
    case = bench_latency.Case("lenet5", 32, 10, 2, 2, 1)
    monkeypatch.setattr(bench_latency, "QUICK_CASES", (case,))
    given = {"features.3": 4, "classifier.0": 24}
    monkeypatch.setattr(bench_latency, "experiment_multiples", lambda name: given)
    rows: list[dict] = []
    real = bench_latency.run_budgets
    monkeypatch.setattr(
        bench_latency, "run_budgets", lambda *a, **k: rows.extend(real(*a, **k)) or rows
    )
    doc = tmp_path / "BENCHMARKS.md"
    args = ["--part", "1", "--quick", "--targets", "0.6", "--rounds", "1", "--round-to", "7"]
    bench_latency.main([*args, "--round-to-layers", "mine", "--doc", str(doc)])
    assert len(rows) == len(bench_latency.PART1_ARMS)
    for r in rows:
        widths = r["widths"]
        assert widths["features.3"] % 4 == 0 and widths["classifier.0"] % 24 == 0, widths
        assert widths["classifier.2"] % 7 == 0 or widths["classifier.2"] == 84, widths
    assert "per-layer multiples of `experiment=mine`" in doc.read_text()


def test_part_1_at_a_thread_count_has_its_own_section_beside_the_default_one(tmp_path, monkeypatch):
    """``--threads 1`` writes between markers of its own: the figures at torch's own thread
    count stay, so the two can be read side by side."""
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n\n{bench_latency.BEGIN}\npart one figures\n{bench_latency.END}\n")
    case = bench_latency.Case("lenet5", 32, 10, 2, 2, 1)
    monkeypatch.setattr(bench_latency, "QUICK_CASES", (case,))
    threads = torch.get_num_threads()
    try:
        args = ["--part", "1", "--quick", "--threads", "1", "--targets", "0.7", "--rounds", "1"]
        bench_latency.main([*args, "--doc", str(doc)])
    finally:
        torch.set_num_threads(threads)
    text = doc.read_text()
    assert f"{bench_latency.BEGIN}\npart one figures\n{bench_latency.END}" in text
    begin, end = bench_latency.section_markers(1, "threads-1")
    assert (begin, end) != (bench_latency.BEGIN, bench_latency.END)
    section = text.split(begin)[1].split(end)[0]
    assert "1 torch threads" in section and "| lenet5 | 32x32, 2 | 0.7 |" in section


def test_part_2_alone_keeps_part_1s_section_and_runs_one_sweep_per_measure(tmp_path, monkeypatch):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n\n{bench_latency.BEGIN}\npart one figures\n{bench_latency.END}\n")
    calls = []

    def fake_run_study(study, out, name):
        calls.append((dict(study.method)["measure"], name, out))
        return "| table |", "- verdict", ["prune-run -m ..."]

    monkeypatch.setattr(bench_latency, "run_study", fake_run_study)
    bench_latency.main(["--part", "2", "--doc", str(doc), "--study-dir", str(tmp_path / "s")])
    text = doc.read_text()
    assert f"{bench_latency.BEGIN}\npart one figures\n{bench_latency.END}" in text
    # one output_root for both sweeps: each seed's dense model is trained once for the two
    measures = ["l1", "l1", "taylor", "halp"]
    names = ["sweep-l1", "sweep-l1-normalize-mean", "sweep-taylor", "sweep-halp"]
    assert calls == [(m, n, tmp_path / "s") for m, n in zip(measures, names, strict=True)]
    study = text.split(bench_latency.STUDY_BEGIN)[1].split(bench_latency.STUDY_END)[0]
    assert study.count("| table |") == 4 and "filter importance `halp`" in study


def test_a_named_study_section_adds_its_overrides_and_keeps_the_default_study(
    tmp_path, monkeypatch
):
    doc = tmp_path / "BENCHMARKS.md"
    default = f"{bench_latency.STUDY_BEGIN}\nthe default study\n{bench_latency.STUDY_END}"
    doc.write_text(f"# B\n\n{default}\n")
    extras = []

    def fake_run_study(study, out, name):
        extras.append((study.extra, dict(study.method)["when"], name))
        return "| steps table |", "- verdict", ["prune-run -m ..."]

    monkeypatch.setattr(bench_latency, "run_study", fake_run_study)
    args = ["--part", "2", "--doc", str(doc), "--study-dir", str(tmp_path / "s")]
    args += ["--study-measure", "l1,when=steps,rounds=10", "--section", "steps"]
    bench_latency.main([*args, "--study-override", "train.retrain.epochs=6"])
    # the override is in the sweep's name: its jobs never join another sweep's folder
    name = "sweep-l1-when-steps-rounds-10-train.retrain.epochs-6"
    assert extras == [(("train.retrain.epochs=6",), "steps", name)]
    text = doc.read_text()
    begin, end = bench_latency.section_markers(2, "steps")
    assert default in text and "| steps table |" in text.split(begin)[1].split(end)[0]
    for bad in (["--section", "a b"], ["--study-override", "epochs"]):
        with pytest.raises(SystemExit):
            bench_latency.main([*args[:4], *bad])


def test_the_timing_noise_is_the_spread_of_the_dense_networks_ratio_to_its_copy(monkeypatch):
    """Pairs of (copy, dense) in alternating order: scripted times give ratios 0.9 .. 1.2."""
    case = bench_latency.Case("lenet5", 32, 10, 2, 2, 1)
    dense = bench_latency.build_dense(case, torch.device("cpu"))
    copy_ms, dense_ms = iter([9.0, 12.0, 10.0, 11.0, 10.5]), iter([10.0] * 5)
    order: list[str] = []

    def one(model):
        order.append("dense" if model is dense else "copy")
        return next(dense_ms) if model is dense else next(copy_ms)

    def fake(first, second, batch, repeats):  # a pair, the first network first
        return one(first), one(second)

    monkeypatch.setattr(bench_latency, "time_pair", fake)
    noise = bench_latency.timing_noise(case, dense, torch.device("cpu"))
    assert (noise["low"], noise["high"]) == (0.9, 1.2)
    assert order == ["copy", "dense", "dense", "copy"] * 2 + ["copy", "dense"]
    assert bench_latency.noise_lines([noise]) == (
        "- lenet5: the dense network against a copy of itself, 5 pairs: ratios 0.900 to 1.200"
    )


def test_rows_that_chose_one_network_give_the_spread_of_its_measured_ratio():
    rows = [_row("knapsack", 0.53), _row("global ranking, tuned", 0.70), _row("knapsack", 0.6)]
    rows[2]["macs_ratio"] = 0.5  # another network
    assert bench_latency.same_network_lines(rows) == (
        "- resnet56: one network chosen 2 times, measured ratios 0.530 to 0.700"
    )
    assert bench_latency.same_network_lines(rows[2:]) == ""


def test_gpu_check_stops_at_its_deadline_and_leaves_what_it_finished(tmp_path, monkeypatch):
    """A GPU session has one 10-minute command: the section is on disk after every step and
    every network (a check stopped from outside keeps them), and nothing starts after
    ``--deadline-s``; what was left out is named."""
    now = [1000.0]
    monkeypatch.setattr(gpu_check, "clock", lambda: now[0])
    out = tmp_path / "gpu.md"
    seen: list[str] = []

    def tests() -> tuple[str, int]:
        now[0] += 10
        return "3 passed in 9.0s", 0

    def one_network(cases, targets, *args, **kwargs):
        seen.append(out.read_text())  # what a kill at this moment would leave
        now[0] += 200
        (case,) = cases
        return [dict(_row("knapsack", 0.51), model=case.model)]

    def never(*args, **kwargs):
        raise AssertionError("started after the deadline")

    monkeypatch.setattr(gpu_check, "run_tests", tests)
    monkeypatch.setattr(bench_latency, "run_budgets", one_network)
    monkeypatch.setattr(gpu_check, "thin_section", never)
    monkeypatch.setattr(gpu_check, "train_summary", never)
    argv = ["--device", "cpu", "--no-doc", "--out", str(out), "--deadline-s", "100"]
    gpu_check.main([*argv, "--latency-models", "resnet56", "vgg16", "--latency-targets", "0.5"])
    # the first network began at 10 s with the tests' line on disk and the run marked partial
    (partial,) = seen
    assert "GPU tests (`pytest -m gpu`): 3 passed in 9.0s (exit code 0)." in partial
    assert "was in its step `latency` when this was written" in partial
    text = out.read_text()
    assert text.count("| resnet56 | 32x32, 64 | 0.5 | knapsack |") == 1
    assert "Not measured: vgg16 (210 s used, deadline 100 s)." in text
    assert "- step `thin` not run: 210 s used, deadline 100 s." in text
    assert "- step `train` not run: 210 s used, deadline 100 s." in text
    assert text.rstrip().endswith("gpu-check took 210 s.")
    assert "was in its step" not in text
    assert "--deadline-s 100 --latency-models resnet56 vgg16" in text  # the command as typed


def test_gpu_check_names_its_command_as_typed(monkeypatch):
    monkeypatch.delenv("GPU_CHECK_COMMAND", raising=False)
    assert gpu_check.command_line([]) == "python3 scripts/gpu_check.py"
    assert gpu_check.command_line(["--no-train"]) == "python3 scripts/gpu_check.py --no-train"
    monkeypatch.setenv("GPU_CHECK_COMMAND", "make gpu-check")
    assert gpu_check.command_line([]) == "make gpu-check"
    assert gpu_check.command_line(["--no-train", "--out", "x.md"]) == (
        'make gpu-check GPU_CHECK_ARGS="--no-train --out x.md"'
    )


def test_a_failed_gpu_check_section_is_one_line_in_its_place():
    def broken() -> str:
        raise RuntimeError("no CUDA")

    assert gpu_check.guarded("latency benchmark", lambda: "figures") == "figures"
    assert gpu_check.guarded("latency benchmark", broken) == (
        "latency benchmark failed: RuntimeError: no CUDA"
    )


def test_a_study_entry_adds_its_settings_to_every_arm_and_names_its_sweep(tmp_path, monkeypatch):
    assert bench_latency.study_entry("l1,normalize=mean") == ("l1", (("normalize", "mean"),))
    assert bench_latency.study_entry("taylor") == ("taylor", ())
    calls = []

    def fake_run_study(study, out, name):
        calls.append((bench_latency.arm_overrides(study), name))
        return "| table |", "- verdict", ["prune-run -m ..."]

    monkeypatch.setattr(bench_latency, "run_study", fake_run_study)
    doc = tmp_path / "B.md"
    doc.write_text("# B\n")
    argv = ["--part", "2", "--doc", str(doc), "--study-measure", "l1,normalize=mean"]
    bench_latency.main([*argv, "--study-dir", str(tmp_path / "s")])
    ((arms, name),) = calls
    assert name == "sweep-l1-normalize-mean"
    assert len(arms) == len(bench_latency.ARMS)
    assert all("measure:l1" in a and "normalize:mean" in a for a in arms)
    assert "filter importance `l1`, `method.normalize=mean`" in doc.read_text()
    with pytest.raises(SystemExit) as exit_info:
        bench_latency.main(["--part", "2", "--no-doc", "--study-measure", "l1,normalize"])
    assert exit_info.value.code == 2


def test_threads_are_set_for_the_timing_and_checked(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        bench_latency.main(["--part", "1", "--no-doc", "--threads", "0"])
    assert exit_info.value.code == 2
    seen = []
    monkeypatch.setattr(bench_latency, "run_budgets", lambda *a, **k: seen.append(1) or [])
    monkeypatch.setattr(bench_latency.torch, "set_num_threads", seen.append)
    bench_latency.main(["--part", "1", "--no-doc", "--threads", "1", "--models", "resnet56"])
    assert seen[:2] == [1, 1]  # one thread set, then part 1 ran


def test_the_kept_widths_are_each_arms_median_per_unit_in_the_models_order(tmp_path):
    """From the runs' ``filters_by_unit``: the knapsack's and the per-layer ranking's widths,
    the median over seeds, in the model's order (the level mask's); a failed run and one without
    the field are left out."""

    def run(name, arm, units, accuracy, status="completed"):
        folder = tmp_path / "sweep" / name
        folder.mkdir(parents=True)
        method = {"latency_by": "knapsack"} if arm == "knapsack" else {"scope": arm}
        (folder / "config.yaml").write_text(yaml.safe_dump({"method": method}))
        summary = {
            "status": status,
            "model": "vgg11",
            "method_info": {"filters_by_unit": units} if units else {},
            "levels": [{"level": 0, "test_accuracy": 0.9}, {"level": 1, "test_accuracy": accuracy}],
        }
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "levels" / "level_0").mkdir(parents=True)  # its parameters in model order
        order = {"c1.weight": torch.ones(2, dtype=torch.bool), "c2.weight": torch.ones(2) > 0}
        torch.save(order, folder / "levels" / "level_0" / "mask.pt")

    run("k0", "knapsack", {"c2": [30, 32], "c1": [1, 16]}, 0.80)  # as the graph lists them
    run("k1", "knapsack", {"c1": [3, 16], "c2": [32, 32]}, 0.84)
    run("k2", "knapsack", {"c1": [2, 16], "c2": [31, 32]}, 0.82)
    run("k3", "knapsack", {"c1": [16, 16], "c2": [32, 32]}, 0.10, status="failed")
    run("l0", "layer", {"c1": [8, 16], "c2": [16, 32]}, 0.85)
    run("l1", "layer", None, 0.85)  # an older run: no widths recorded
    run("l2", "layer", {"c1": [4, 16], "c2": [8, 32]}, None)  # no test accuracy: left out
    run("k4", "knapsack", {"c2": [31, 32], "c1": [2, 16]}, 0.82)
    (tmp_path / "sweep" / "k4" / "levels" / "level_0" / "mask.pt").write_bytes(b"not torch")
    lines = bench_latency.width_lines(tmp_path / "sweep").splitlines()
    assert lines == [
        "- vgg11, knapsack: 2/16, 31/32 (median of 4; test 82.0%)",
        "- vgg11, layer: 8/16, 16/32 (median of 1; test 85.0%)",
    ]
