"""The practitioner's path end to end, through the CLI (issue 17): dense weights trained
elsewhere (a plain state dict outside any run folder) -> one-shot ERK-magnitude pruning +
fine-tune, GraNet fine-tuning to the same density, or EagleEye channel pruning to 50% MACs ->
`sparsetrain export` -> the artifact, loaded in a process where sparsetrain cannot be imported,
reproduces the run's test accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BLOCK_SPARSETRAIN, tiny_config, write_config
from sparsetrain import load_config, train
from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.cli import main
from sparsetrain.train.run import load_data, make_loaders

_ACCURACY = BLOCK_SPARSETRAIN + '''
import torch

artifact, data = sys.argv[1:3]
x, y = torch.load(data, weights_only=True)
module = torch.export.load(artifact).module()
with torch.no_grad():
    pred = torch.cat([module(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)])
print((pred == y).double().mean().item())
'''


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(weights trained elsewhere, the recipe's test set as model inputs)."""
    tmp = tmp_path_factory.mktemp("elsewhere")
    cfg = load_config(write_config(tmp, tiny_config(tmp, name="dense", train={"epochs": 2})))
    train(cfg)
    state = {k: v for k, v in load_checkpoint(cfg.run_dir / "last.pt")["model"].items()}
    weights = tmp / "downloads" / "resnet20_cifar.pth"
    weights.parent.mkdir()
    torch.save(state, weights)  # a bare state dict, as model zoos ship them
    _, evals = make_loaders(cfg, load_data(cfg), torch.device("cpu"))
    test = evals["test"]
    plan = test.plan(0)
    xs, ys = zip(*(test.batch(plan, i) for i in range(len(test))), strict=True)
    data = tmp / "test_inputs.pt"
    torch.save((torch.cat(xs), torch.cat(ys)), data)
    return weights, data


def _artifact_accuracy(artifact: Path, data: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _ACCURACY, str(artifact), str(data)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flow", ["oneshot_erk", "granet", "eagleeye"])
def test_foreign_weights_to_a_shipped_sparse_artifact(flow: str, pretrained, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    weights, data = pretrained
    monkeypatch.chdir(tmp_path)
    sparsity = {"density": 0.1} if flow != "eagleeye" else {}
    if flow == "granet":
        sparsity.update(method="granet", delta_t=2, t_end="50%")
    recipe = write_config(tmp_path, tiny_config(
        tmp_path, name=flow, train={"epochs": 1}, model={"init_from": str(weights)},
        sparsity=sparsity))
    if flow == "oneshot_erk":
        assert main(["oneshot", "--config", str(recipe), "--budget", "erk"]) == 0
    elif flow == "granet":
        assert main(["train", "--config", str(recipe)]) == 0
    else:
        assert main(["prune", "eagleeye", "--config", str(recipe), "--flops", "0.5",
                     "--candidates", "2", "--abn-batches", "1", "--holdout", "64",
                     "--baselines", "none", "--workers", "1"]) == 0
    run = tmp_path / "runs" / flow
    summary = json.loads((run / "summary.json").read_text())
    if flow == "eagleeye":
        assert abs(summary["structured"]["macs_ratio"] - 0.5) <= 0.005
    else:
        assert summary["density"]["global"] == pytest.approx(0.1, abs=2e-3)
    artifact = tmp_path / f"{flow}.pt2"
    assert main(["export", str(run / "last.pt"), "--format", "pt2", "--out", str(artifact)]) == 0
    card = json.loads(artifact.with_name(artifact.name + ".card.json").read_text())
    assert card["accuracy"]["section"] == "final"
    assert card["accuracy"]["test_acc"] == summary["final"]["test_acc"]
    acc = _artifact_accuracy(artifact, data)
    assert acc == pytest.approx(summary["final"]["test_acc"], abs=1 / 256)  # <= 1 tie flip
    assert not any(p.name.endswith(".pth") for p in run.iterdir())  # nothing written back
