"""Data parallelism: two gloo processes on CPU against one process with the same global batch.

Every rank must make the same mask decisions (static ERK, GraNet, RigL, SNIP), keep identical
weights after every step, and end where a single process ends (within float tolerance, with
global-batch BN). ``train.check_consistency`` must stop a run whose masks diverge, and
``torchrun ... sparsetrain train`` must work end to end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_config
from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.distributed import GlobalBatchNorm2d, mean_across_ranks

WORKER = Path(__file__).with_name("_dist_worker.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int | None, world: int, port: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSETRAIN_DIST_TIMEOUT": "120",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def _launch(config: Path, out: Path, world: int, *extra: str) -> list[subprocess.CompletedProcess]:
    """``world`` worker processes (or one plain process for world=1); wait for all."""
    port = _free_port()
    procs = []
    for rank in range(world):
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(config), str(out / f"rank{rank}.json"), *extra],
            env=_env(rank if world > 1 else None, world, port), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


METHODS = {
    "static_erk": {"method": "static", "density": 0.2, "budget": "erk"},
    "snip": {"method": "static", "density": 0.2, "budget": "global", "score": "snip"},
    "synflow": {"method": "static", "density": 0.2, "budget": "global", "score": "synflow"},
    "grasp": {"method": "static", "density": 0.2, "budget": "global", "score": "grasp"},
    "granet": {"method": "granet", "density": 0.2, "t_start": 0, "t_end": "50%", "delta_t": 2,
               "update_fraction": 0.5, "initial_density": 0.5},
    "rigl": {"method": "rigl", "density": 0.2, "delta_t": 2, "update_fraction": 0.3,
             "t_end": "75%"},
}


def _assert_close(a: dict, b: dict, *, rtol: float = 1e-9, atol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def _config(tmp_path: Path, name: str, sparsity: dict, **train) -> Path:
    cfg = tiny_config(tmp_path, sparsity=sparsity,
                      train={"sync_bn": True, "check_consistency": True, "epochs": 2,
                             "precision": "fp64", **train},
                      data={"path": "synthetic:256:128", "batch_size": 32})
    return write_config(tmp_path, {**cfg, "name": name})


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_match_each_other_and_one_process(tmp_path: Path, method: str) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    ddp = _launch(_config(two, method, METHODS[method]), two, 2)
    for r in ddp:
        assert r.returncode == 0, r.stderr[-3000:]
    single = _launch(_config(one, method, METHODS[method]), one, 1)
    assert single[0].returncode == 0, single[0].stderr[-3000:]

    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in range(2)]
    ref = json.loads((one / "rank0.json").read_text())
    assert ranks[0]["summary"]["world_size"] == 2 and ref["summary"]["world_size"] == 1
    steps = [row["step"] for row in ranks[0]["rows"]]
    assert steps == list(range(1, 17)) == [row["step"] for row in ref["rows"]]
    # identical masks and weights on both ranks after every step
    assert ranks[0]["rows"] == ranks[1]["rows"]
    # masks changed during training for the dynamic methods (several updates covered)
    distinct = {row["masks"] for row in ranks[0]["rows"]}
    if method in ("granet", "rigl"):
        assert ranks[0]["rows"][-1]["updates"] >= 4 and len(distinct) >= 4
    if method == "grasp":  # each rank draws its own class-balanced batch (documented)
        return
    # the same masks as one process with the same global batch, step by step
    assert [r["masks"] for r in ranks[0]["rows"]] == [r["masks"] for r in ref["rows"]]
    # weights equal within float tolerance. fp64: in fp32 the rounding differences of a
    # different reduction order flip a few ReLUs, which moves gradients enough to change
    # some near-tie regrowth choices (as one process with a permuted batch does)
    _assert_close(torch.load(two / "rank0.step1.pt"), torch.load(one / "rank0.step1.pt"))
    _assert_close(load_checkpoint(two / "runs" / method / "last.pt")["model"],
                  load_checkpoint(one / "runs" / method / "last.pt")["model"])
    # evaluation is over the whole test set (shards summed), as in one process
    acc2 = ranks[0]["summary"]["final"]["test_acc"]
    assert acc2 == ranks[1]["summary"]["final"]["test_acc"]
    assert abs(acc2 - ref["summary"]["final"]["test_acc"]) <= 2 / 128
    # rank 0 alone wrote the run directory (one metrics line per epoch)
    lines = (two / "runs" / method / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


@pytest.mark.parametrize("world_after", [2, 1])
def test_resume_under_ddp(tmp_path: Path, world_after: int) -> None:
    """GraNet stopped at step 5 (between the mask updates of steps 4 and 6) on two processes and
    resumed on ``world_after``: with the same world size it ends bitwise where the uninterrupted
    run ends; with another it sees the same global batches and ends there within rounding."""
    cfg = _config(tmp_path, "full", METHODS["granet"])
    for r in _launch(cfg, tmp_path, 2):
        assert r.returncode == 0, r.stderr[-3000:]
    for r in _launch(cfg, tmp_path, 2, "name=part", "train.max_steps=5"):
        assert r.returncode == 0, r.stderr[-3000:]
    for r in _launch(cfg, tmp_path, world_after, "--resume", "name=part"):
        assert r.returncode == 0, r.stderr[-3000:]
    a = load_checkpoint(tmp_path / "runs" / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / "part" / "last.pt")
    assert b["trainer"]["step"] == a["trainer"]["step"] == 16
    logs = [c["trainer"]["callbacks"]["sparsity"]["log"] for c in (a, b)]
    assert logs[0] == logs[1] and len(logs[0]) > 4
    if world_after == 2:
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), k
    else:
        _assert_close(a["model"], b["model"])


def test_check_consistency_stops_a_run_whose_masks_diverge(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "bad", METHODS["rigl"])
    done = _launch(cfg, tmp_path, 2, "--corrupt-step", "1")
    for r in done:
        assert r.returncode != 0
        assert "masks differ across ranks at step 2" in r.stderr


def test_torchrun_cli_end_to_end(tmp_path: Path) -> None:
    """The real launcher and CLI, per-rank BN (the default), then a resume with 1 process."""
    cfg = _config(tmp_path, "cli", METHODS["static_erk"], sync_bn=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "sparsetrain.cli", "train", "--config",
           str(cfg), "train.epochs=1"]
    r = subprocess.run(cmd, env=_env(None, 1, 0), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: ") == 1  # rank 0 alone reports
    run = tmp_path / "runs" / "cli"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8
    # a different world size continues the same run (documented: same global batches)
    r = subprocess.run([sys.executable, "-m", "sparsetrain.cli", "train", "--resume", str(run),
                        "train.epochs=2"], env=_env(None, 1, 0), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 16
    bad = subprocess.run([*cmd[:-1], "data.batch_size=33", "name=odd"], env=_env(None, 1, 0),
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "divisible" in bad.stderr


def test_global_batchnorm_is_batchnorm_on_one_process() -> None:
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(5)
    ours = GlobalBatchNorm2d(5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(8, 5, 4, 4)
    torch.testing.assert_close(ours(x), ref(x))
    t = [torch.ones(3)]
    mean_across_ranks(t)  # no process group: unchanged
    assert torch.equal(t[0], torch.ones(3))
