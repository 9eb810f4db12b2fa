"""Foreign weights in: ``model.init_from`` (plain state dicts and the usual checkpoint dicts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_config
from sparsetrain import Callback, load_config, train
from sparsetrain.checkpoint import foreign_state_dict
from sparsetrain.errors import UserError
from sparsetrain.models import create_model


class FirstWeights(Callback):
    name = "first_weights"

    def on_train_start(self, trainer) -> None:
        self.seen = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "state_dict", "lightning"])
def test_foreign_state_dict_forms(tmp_path: Path, wrap: str) -> None:
    sd = create_model("resnet20").state_dict()
    obj = {"plain": sd, "module_prefix": {f"module.{k}": v for k, v in sd.items()},
           "state_dict": {"state_dict": sd, "epoch": 3},
           "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}}}[wrap]
    torch.save(obj, tmp_path / "w.pth")
    got = foreign_state_dict(tmp_path / "w.pth")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_sparse_training_starts_from_pretrained_weights(tmp_path: Path) -> None:
    """GMP from a dense state dict trained elsewhere: the run starts at exactly those weights
    (GMP's first mask is all ones) and the magnitude pruning sees them."""
    torch.manual_seed(123)
    pretrained = create_model("resnet20").state_dict()
    torch.save({f"module.{k}": v for k, v in pretrained.items()}, tmp_path / "pre.pth")
    cfg = load_config(write_config(tmp_path, tiny_config(
        tmp_path, model={"init_from": str(tmp_path / "pre.pth")}, train={"epochs": 1},
        sparsity={"method": "gmp", "density": 0.5, "delta_t": 2})))
    spy = FirstWeights()
    train(cfg, callbacks=[spy])
    for k, v in pretrained.items():
        assert torch.equal(spy.seen[k].to(v.dtype), v), k


@pytest.mark.parametrize(("content", "fragment"), [
    ("missing", "weights file not found"),
    ("r32", "does not fit the model (unexpected layer1.3.conv1.weight"),
    ("list", "holds no state dict"),
    ("garbage", "corrupt or unreadable"),
])
def test_bad_init_from_is_one_line_before_any_work(tmp_path: Path, capsys, content: str,
                                                   fragment: str) -> None:
    from sparsetrain.cli import main

    path = tmp_path / "w.pth"
    if content == "r32":
        torch.save(create_model("resnet32").state_dict(), path)
    elif content == "list":
        torch.save([1, 2], path)
    elif content == "garbage":
        path.write_bytes(b"not a file torch can read")
    recipe = write_config(tmp_path, tiny_config(tmp_path, model={"init_from": str(path)}))
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsetrain: error: model.init_from") and fragment in err, err
    assert not (tmp_path / "runs").exists()
    if content != "r32":  # the others are not weights at all
        with pytest.raises(UserError):
            foreign_state_dict(path)
