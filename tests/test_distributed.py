"""Data-parallel training (``torchrun``): two CPU processes with gloo against one process.

The equality test runs a tiny MLP (no BatchNorm: its statistics would be per rank) on part of
digits, one pruning level, in two ranks started with ``torch.multiprocessing`` the way torchrun
starts them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, a rendezvous address), and the same
config in this process.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import run_config

from prune_cli import distributed
from prune_cli.data import build_dataset
from prune_cli.distributed import World, from_env, shard_bounds

#: 501 training examples in batches of 64: the last batch (53) splits 27 / 26, so the ranks'
#: unequal parts and their loss weights are exercised, not only equal halves
SETTINGS = [
    "model=mlp",
    "model.hidden=[32]",
    "dataset.limit_train=501",
    "train.epochs=2",
    "train.warmup_epochs=0",
    "method.levels=1",
    "method.sparsity=0.5",
    "method.rewind=1ep",
    "progress=false",
]


def test_shard_bounds_tile_a_batch() -> None:
    for n in (1, 2, 7, 53, 64):
        for size in (1, 2, 3):
            parts = [shard_bounds(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_world_from_torchrun_environment() -> None:
    assert from_env({}) == World()
    w = from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.main, w.parallel) == (1, 2, 1, False, True)
    with pytest.raises(ValueError, match="inconsistent"):
        from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_ranks_parts_tile_every_global_batch() -> None:
    """Each rank's batches, put side by side, are the single process's batches (augmented)."""
    data = build_dataset(run_config(["dataset.limit_train=101"]).dataset, torch.device("cpu"))
    data.crop_padding, data.flip = 1, True  # draws as CIFAR's augmentation makes them

    def batches(shard: tuple[int, int] | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(3)
        return list(
            data.batches("train", 16, shuffle=True, augment=True, generator=gen, shard=shard)
        )

    whole, parts = batches(None), [batches((r, 2)) for r in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 7
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][b][0], parts[1][b][0]]), x)
        assert torch.equal(torch.cat([parts[0][b][1], parts[1][b][1]]), y)


def test_a_batch_too_small_for_the_ranks_is_refused() -> None:
    """67 examples in batches of 64 leave a last batch of 3: not one example for each of 4."""
    from prune_cli.errors import ConfigError
    from prune_cli.training.loop import ddp

    data = build_dataset(run_config(["dataset.limit_train=67"]).dataset, torch.device("cpu"))
    model = torch.nn.Linear(64, 10)
    with pytest.raises(ConfigError, match="leaves a batch of 3 examples for 4"):
        ddp(model, data, 64, World(rank=0, size=4))


def test_streamed_batches_are_sharded_the_same_way() -> None:
    """Image folders: each rank's DataLoader gets its part of the same shuffled batches."""
    from torch.utils.data import BatchSampler, RandomSampler

    from prune_cli.data.imagenet import ShardedBatches

    def batches(shard: tuple[int, int] | None) -> list[list[int]]:
        gen = torch.Generator().manual_seed(5)
        sampler = BatchSampler(RandomSampler(range(23), generator=gen), 8, False)
        return list(sampler if shard is None else ShardedBatches(sampler, *shard))

    whole, parts = batches(None), [batches((r, 2)) for r in range(2)]
    assert [a + b for a, b in zip(*parts, strict=True)] == whole
    assert [len(b) for b in parts[1]] == [4, 4, 3]


def test_slurm_tasks_become_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task of a 2-node, 4-task SLURM job (submitit's tasks_per_node=2) is a rank."""
    pytest.importorskip("submitit")
    # every variable export() sets is first set here, so that the teardown restores it (to
    # absent): delenv of an absent variable records nothing, and a WORLD_SIZE left behind makes
    # every later CLI subprocess of the session wait for 3 more ranks
    for key in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    env = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "1234",
        "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert distributed.export_slurm()
    assert from_env() == World(rank=3, size=4, local_rank=1)
    assert os.environ["MASTER_ADDR"] == "node01"  # the rendezvous on the job's first node
    assert not distributed.export_slurm()  # torchrun's variables are set: nothing to do


def test_slurm_data_parallel_launcher_composes() -> None:
    from hydra import compose, initialize_config_dir

    from prune_cli.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm_ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert "submitit" in launcher._target_ and "Slurm" in launcher._target_
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4  # a rank per GPU
    assert launcher.nodes == 1 and launcher.timeout_min == 1440  # the rest from slurm.yaml


@pytest.mark.slow
def test_torchrun_command_runs_with_rank_0_writing(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m prune_cli.cli ...`` itself: the CLI joins the ranks."""
    run = tmp_path / "run"
    summary = _torchrun([*SETTINGS, "train.epochs=1", "device=cpu"], run, timeout=120)
    assert summary["status"] == "completed" and len(summary["levels"]) == 2
    log = (run / "run.log").read_text()
    assert log.count("level 0/1 epoch 1/1") == 1  # logged by rank 0 alone


@pytest.mark.slow
def test_two_ranks_prune_to_a_latency_target_inside_training(tmp_path: Path) -> None:
    """``method=filter`` with a latency target on the ``early`` schedule under torchrun: both
    ranks prune in their training callbacks, each times for itself, and they agree on rank 0's
    table and timings (``PruneContext.agree``, a collective: a rank that called it where the
    other did not would hang here until the timeout)."""
    method = [
        "method=filter",
        "method.when=early",
        "method.rounds=1",
        "method.latency_target=0.7",
        "method.latency_batch=8",
        "method.latency_repeats=1",
        "method.latency_points=2",
        "method.prune_first=true",  # the MLP's one hidden layer is its first
    ]
    args = [*SETTINGS[:4], *method, "train.epochs=1", "progress=false", "device=cpu"]
    args.append(f"output_root={tmp_path / 'out'}")
    summary = _torchrun(args, tmp_path / "run", timeout=180)
    assert summary["status"] == "completed"
    info = summary["method_info"]
    assert info["latency_target"] == 0.7 and info["filters_prunable"] == 32
    assert 0 < info["filter_sparsity"] < 1


def _torchrun(args: list[str], run: Path, timeout: int) -> dict:
    """``torchrun --nproc-per-node 2 -m prune_cli.cli ARGS`` into ``run`` (one thread per
    rank); its summary.json, after asserting that it exited 0."""
    import subprocess
    import sys

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    torchrun += ["--master-port", str(_free_port()), "-m", "prune_cli.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [*torchrun, *args, f"hydra.run.dir={run}"],
        cwd=run.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run / "summary.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, size: int, port: int, overrides: list[str], tmp: str) -> None:
    """One torchrun-style rank: the environment torchrun sets, then what the CLI does; a fresh
    run in ``run/``, the resumption of the interrupted one in ``crashed/``, then ``run/`` again
    (finished: rank 0 shows it, and the other rank stops with it)."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from conftest import run_config

    from prune_cli.data.base import InMemoryData
    from prune_cli.experiment import Experiment

    seen: list[int] = []  # examples of each training batch this rank trains on
    batches = InMemoryData.batches

    def counted(self, split, batch_size, **kw):
        for x, y in batches(self, split, batch_size, **kw):
            if kw.get("augment"):
                seen.append(len(y))
            yield x, y

    InMemoryData.batches = counted
    world = distributed.setup("cpu")
    try:
        for name in ("run", "crashed", "again"):
            seen.clear()
            # rank 1 is given a directory of its own: it must not even create it
            where = "run" if name == "again" else name
            exp = Experiment(run_config(overrides), Path(tmp) / (where if rank == 0 else "rank1"))
            summary = exp.run()
            if name == "again":
                assert seen == [] and (
                    summary["status"] == "completed" if rank == 0 else not summary
                )
                continue
            state = {
                "model": exp._s.model.state_dict(),
                "masks": dict(exp._s.masks.state_dict()),
                "world": world,
                "seen": list(seen),
            }
            torch.save(state, Path(tmp) / f"{name}-rank{rank}.pt")
    finally:
        distributed.teardown()


def _same_results(par: Path, one: Path, ranks: list[dict], single: dict) -> None:
    """Rank 0's run in ``par`` against the single process's in ``one`` (tolerance: see below);
    every rank holds the same masks and weights, bit for bit (rank 0's are broadcast)."""
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    for key, value in ranks[0]["masks"].items():
        assert torch.equal(value, ranks[1]["masks"][key]), key
    # tolerance 1e-6: the ranks sum each batch in two parts and all-reduce the gradients, so
    # the float32 sums differ in their order only; after 2 levels x 2 epochs x 8 steps the
    # weights differ by 3e-8 at most (measured), while weighing the ranks' unequal parts of
    # the last batch wrongly (27 and 26 as if equal) moves them by 1.5e-3
    for key, value in single["model"].items():
        torch.testing.assert_close(ranks[0]["model"][key], value, rtol=0, atol=1e-6)
    for key, value in single["masks"].items():
        assert torch.equal(ranks[0]["masks"][key], value), key
    a_sum, b_sum = (json.loads((d / "summary.json").read_text()) for d in (par, one))
    assert a_sum["status"] == b_sum["status"] == "completed"
    for a, b in zip(a_sum["levels"], b_sum["levels"], strict=True):
        for key in ("sparsity", "params_nonzero", "selected_epoch", "test_accuracy"):
            assert a[key] == b[key], key
        for key in ("val_accuracy", "test_loss", "pruned_test_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    rows_par, rows_one = ((d / "metrics.csv").read_text().splitlines() for d in (par, one))
    assert len(rows_par) == len(rows_one) == 1 + 2 * 2 * 5  # train loss/acc/lr, val loss/acc
    for rp, ro in zip(rows_par[1:], rows_one[1:], strict=True):
        *key_p, vp = rp.split(",")
        *key_o, vo = ro.split(",")
        assert key_p == key_o
        assert float(vp) == pytest.approx(float(vo), abs=1e-6)


@pytest.fixture
def one_thread():
    """One thread, as each rank has, restored afterwards: the thread count changes float
    reductions, so a leaked 1 changed the results of later tests in this process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_resume_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    from prune_cli.experiment import Experiment
    from prune_cli.training.loop import Trainer

    overrides = [*SETTINGS, "device=cpu"]
    # one process, the same global batch of 64
    single = Experiment(run_config(overrides), tmp_path / "single")
    single.run()
    one = {"model": single._s.model.state_dict(), "masks": single._s.masks.state_dict()}
    # one process again, interrupted in level 1's second epoch: the ranks resume it
    original, calls = Trainer.train_epoch, []

    def crash(self: Trainer, epoch: int, generator: torch.Generator) -> dict[str, float]:
        calls.append(epoch)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, epoch, generator)

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config(overrides), tmp_path / "crashed").run()
    monkeypatch.setattr(Trainer, "train_epoch", original)

    mp.start_processes(
        _rank,
        args=(2, _free_port(), overrides, str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing, took no lock
    # each rank trained on its part of every batch of 64 (7 x 64 + 53 per epoch): fresh, 2
    # levels x 2 epochs; resumed, the one epoch left
    per_epoch = [32] * 7 + [27], [32] * 7 + [26]
    for name, epochs in (("run", 4), ("crashed", 1)):
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt", weights_only=False) for r in (0, 1)]
        assert [r["world"].rank for r in ranks] == [0, 1]
        assert [r["seen"] for r in ranks] == [part * epochs for part in per_epoch]
        _same_results(tmp_path / name, tmp_path / "single", ranks, one)


def test_the_slurm_test_leaves_no_torchrun_variables_behind() -> None:
    """Runs after test_slurm_tasks_become_ranks (file order): a leaked WORLD_SIZE would make
    every CLI subprocess started later in the session wait for ranks that never come."""
    assert not any(k in os.environ for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
