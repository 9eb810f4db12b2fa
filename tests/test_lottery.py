"""Lottery tickets with rewinding and one-shot pruning: exact densities, nested masks,
rewinding to step k, resumable rounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_config
from sparsetrain import load_config, train
from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.cli import main
from sparsetrain.models import create_model
from sparsetrain.sparsity.allocate import allocate
from sparsetrain.sparsity.topk import global_masks, layerwise_masks
from sparsetrain.train.lottery import run_lottery, run_oneshot

MASKED = 270_896  # conv + linear weights of resnet20


def test_lottery_rounds_prune_20_percent_and_rewind(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1})))
    summaries = run_lottery(cfg, rounds=2, rewind=3)
    assert [round(s["density"]["global"] * MASKED) for s in summaries] == [
        MASKED, round(0.8 * MASKED), round(0.64 * MASKED)]
    run = cfg.run_dir
    rw = load_checkpoint(run / "rewind.pt")
    assert rw["trainer"]["step"] == 3
    r1 = load_checkpoint(run / "round_1" / "last.pt")["model"]
    r2 = load_checkpoint(run / "round_2" / "last.pt")["model"]
    for n in ("conv1.weight", "layer3.2.conv2.weight", "fc.weight"):
        m1, m2 = r1[n + "_mask"], r2[n + "_mask"]
        assert torch.all(m2 <= m1)  # pruned weights stay pruned
        assert torch.all(r2[n][m2 == 0] == 0)
    # round 1's mask = global magnitude top-80% of round 0's final weights
    r0 = load_checkpoint(run / "round_0" / "last.pt")["model"]
    names = [k[:-5] for k in r1 if k.endswith("_mask")]
    expected = global_masks({n: r0[n].abs() for n in names}, 0.8)
    assert all(torch.equal(expected[n], r1[n + "_mask"]) for n in names)
    # each round trained from the rewind point to the end: 8 steps per epoch, 5 after step 3
    assert summaries[1]["steps"] == summaries[2]["steps"] == 8
    # finished rounds are reused, not retrained
    before = (run / "round_2" / "summary.json").stat().st_mtime_ns
    again = run_lottery(cfg, rounds=2, rewind=3, resume=True)
    assert again[2]["final"] == summaries[2]["final"]
    assert (run / "round_2" / "summary.json").stat().st_mtime_ns == before


def test_rewound_round_starts_from_the_step_k_weights(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1})))
    run_lottery(cfg, rounds=1, rewind=0)
    rw = load_checkpoint(cfg.run_dir / "rewind.pt")
    assert rw["trainer"]["step"] == 0
    # k = 0: the rewind weights are the initialization (same seed -> same init)
    torch.manual_seed(0)
    fresh = create_model("resnet20")
    assert torch.equal(rw["model"]["conv1.weight"], fresh.state_dict()["conv1.weight"])


def test_oneshot_prunes_by_magnitude_and_fine_tunes(tmp_path: Path, capsys) -> None:
    dense = load_config(write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1})))
    train(dense)
    src = load_checkpoint(dense.run_dir / "last.pt")["model"]
    recipe = write_config(tmp_path, tiny_config(tmp_path, name="ft", train={"epochs": 1},
                                                sparsity={"density": 0.3}))
    assert main(["oneshot", "--config", str(recipe), "--checkpoint",
                 str(dense.run_dir / "last.pt")]) == 0
    assert "density 0.3000" in capsys.readouterr().out
    ft = load_checkpoint(tmp_path / "runs" / "ft" / "last.pt")["model"]
    names = [k[:-5] for k in ft if k.endswith("_mask")]
    expected = global_masks({n: src[n].abs() for n in names}, 0.3)
    assert all(torch.equal(expected[n], ft[n + "_mask"]) for n in names)
    assert sum(int(ft[n + "_mask"].sum()) for n in names) == round(0.3 * MASKED)
    s = run_oneshot(load_config(recipe), dense.run_dir / "last.pt", resume=True)  # reused
    assert s["steps"] == 8


def test_oneshot_prunes_foreign_weights_layerwise_with_an_erk_budget(tmp_path: Path) -> None:
    """A practitioner's path: a plain state dict trained elsewhere (here: saved from a run, then
    kept outside any run folder), pruned to ERK densities by per-layer magnitude."""
    dense = load_config(write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1})))
    train(dense)
    sd = {k: v for k, v in load_checkpoint(dense.run_dir / "last.pt")["model"].items()}
    weights = tmp_path / "elsewhere" / "resnet20.pth"
    weights.parent.mkdir()
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, weights)
    recipe = write_config(tmp_path, tiny_config(tmp_path, name="ft_erk", train={"epochs": 1},
                                                sparsity={"density": 0.2},
                                                model={"name": "resnet20",
                                                       "init_from": str(weights)}))
    assert main(["oneshot", "--config", str(recipe), "--budget", "erk"]) == 0
    ft = load_checkpoint(tmp_path / "runs" / "ft_erk" / "last.pt")["model"]
    names = [k[:-5] for k in ft if k.endswith("_mask")]
    plan = allocate("erk", {n: tuple(sd[n].shape) for n in names}, 0.2)
    expected = layerwise_masks({n: sd[n].abs() for n in names}, plan)
    assert all(torch.equal(expected[n], ft[n + "_mask"]) for n in names)
    for n in names:  # exact per-layer ERK counts, not a global threshold
        assert int(ft[n + "_mask"].sum()) == round(plan[n] * sd[n].numel())
    assert main(["oneshot", "--config", str(recipe), "--checkpoint",
                 str(dense.run_dir / "last.pt"), "name=both"]) == 2  # both sources: refused
    assert main(["oneshot", "--config", str(recipe), "--budget", "nope", "name=x"]) == 2
    assert not (tmp_path / "runs" / "both").exists() and not (tmp_path / "runs" / "x").exists()


def test_lottery_cli_and_bad_input(tmp_path: Path, capsys) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1}))
    assert main(["lottery", "--config", str(recipe), "--rounds", "1", "--rewind", "2"]) == 0
    out = capsys.readouterr().out
    assert "round 0: density 1.0000" in out and "round 1: density 0.8000" in out
    assert main(["lottery", "--config", str(recipe), "--rounds", "1", "--rewind", "99ep",
                 "name=other"]) == 2
    assert "rewind step" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "other").exists()  # the failed start left nothing
    with pytest.raises(SystemExit):
        main(["lottery", "--config", str(recipe)])
