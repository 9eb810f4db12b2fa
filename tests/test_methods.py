"""Method API: registry, static masks from budgets and scores, config plumbing, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_config
from sparsetrain import load_config, train
from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.cli import main
from sparsetrain.config import SparsityConfig
from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.sparsity.allocate import allocate, counts
from sparsetrain.sparsity.methods import create_method, list_methods, method_from_config


def _batches(n: int = 2, bs: int = 20):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.arange(bs) % 10) for _ in range(n)]


def test_registry_and_unknown_names() -> None:
    assert {"dense", "static"} <= set(list_methods())
    model = create_model("resnet20")
    with pytest.raises(UserError, match="rigl2"):
        create_method("rigl2", model)
    with pytest.raises(UserError, match="erkk"):
        create_method("static", model, density=0.1, budget="erkk")
    with pytest.raises(UserError, match="snipp"):
        create_method("static", model, density=0.1, score="snipp")
    with pytest.raises(UserError, match="density"):
        create_method("static", model, density=1.5)
    with pytest.raises(UserError, match="drop dense_first"):
        create_method("static", model, density=0.1, budget="uniform_plus", dense_first=True)
    defaults = SparsityConfig().model_dump()
    opts = {**defaults, "budget": "er"}
    with pytest.raises(UserError, match=r"sparsity\.budget is not used by method 'dense'"):
        method_from_config(opts, defaults, model, None, seed=0)


@pytest.mark.parametrize("budget", ["uniform", "uniform_plus", "er", "erk"])
@pytest.mark.parametrize("score", ["random", "magnitude", "snip", "synflow"])
def test_static_masks_have_exact_layer_counts(budget: str, score: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20")
    method = create_method("static", model, density=0.1, budget=budget, score=score, seed=1)
    method.prepare(_batches())
    expected = counts(allocate(budget, method.masks.shapes(), 0.1), method.masks.shapes())
    assert method.masks.counts() == expected
    for n, p in method.masks.params.items():
        assert torch.all(p[method.masks.masks[n] == 0] == 0)


def test_global_budget_and_ratio_budgets() -> None:
    model = create_model("resnet20")
    m = create_method("static", model, density=0.1, budget="global", score="snip", seed=0)
    m.prepare(_batches())
    assert sum(m.masks.counts().values()) == round(0.1 * 270_896)
    for budget in ("snip_ratio", "grasp_ratio"):
        model = create_model("resnet20")
        m = create_method("static", model, density=0.1, budget=budget, seed=0)
        m.prepare(_batches())
        assert sum(m.masks.counts().values()) == pytest.approx(0.1 * 270_896, abs=22)
    with pytest.raises(UserError, match="needs data"):
        create_method("static", create_model("resnet20"), density=0.1, score="snip").prepare()


def test_same_seed_same_mask_different_seed_different_mask() -> None:
    def masks(seed: int) -> dict[str, torch.Tensor]:
        m = create_method("static", create_model("resnet20"), density=0.1, seed=seed).prepare()
        return {n: t.clone() for n, t in m.masks.masks.items()}

    a, b, c = masks(5), masks(5), masks(6)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_bernoulli_option_draws_near_the_layer_densities() -> None:
    m = create_method("static", create_model("resnet20"), density=0.1, bernoulli=True, seed=0)
    m.prepare()
    assert m.masks.density() == pytest.approx(0.1, abs=0.01)
    assert sum(m.masks.counts().values()) != round(0.1 * 270_896)  # not exact top-k


def test_sparse_run_reports_density_flops_params(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, sparsity={
        "method": "static", "density": 0.1, "budget": "erk"}, train={"epochs": 1})))
    summary = train(cfg)
    d = summary["density"]
    assert d["global"] == pytest.approx(0.1, abs=1e-5)
    assert d["layers"]["conv1.weight"] == pytest.approx(0.983, abs=2e-3)
    assert d["layers"]["fc.weight"] == 1.0
    assert summary["flops"]["dense"] == 81_626_368
    assert summary["flops"]["sparse"] < 0.2 * summary["flops"]["dense"]
    kept = round(0.1 * 270_896)
    assert abs(summary["params"]["nonzero"] - (272_474 - 270_896 + kept)) < 30
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["density"] == pytest.approx(0.1, abs=1e-5)


def test_sparse_resume_is_exact(tmp_path: Path) -> None:
    base = tiny_config(tmp_path, sparsity={"method": "static", "density": 0.2,
                                           "score": "snip", "budget": "er"})
    full = load_config(write_config(tmp_path, {**base, "name": "full"}))
    train(full)
    part = load_config(write_config(tmp_path, {**base, "name": "part"}), ["train.max_steps=8"])
    train(part)
    resumed = load_config(write_config(tmp_path, {**base, "name": "part"}))
    train(resumed, resume=True)
    a = load_checkpoint(full.run_dir / "last.pt")["model"]
    b = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    assert any(k.endswith("_mask") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_from_a_checkpoint_older_than_the_itop_union(tmp_path: Path) -> None:
    """Checkpoints written before `logged` and `union` joined the method state still resume."""
    base = tiny_config(tmp_path, sparsity={"method": "static", "density": 0.2})
    cfg = load_config(write_config(tmp_path, {**base, "name": "old"}), ["train.max_steps=4"])
    train(cfg)
    path = cfg.run_dir / "last.pt"
    ckpt = load_checkpoint(path)
    (state,) = ckpt["trainer"]["callbacks"].values()
    del state["logged"], state["union"]
    torch.save(ckpt, path)
    resumed = load_config(write_config(tmp_path, {**base, "name": "old"}))
    summary = train(resumed, resume=True)
    assert summary["steps"] > 4
    assert summary["density"]["itop"] == pytest.approx(summary["density"]["global"], abs=1e-6)


def test_budget_command(capsys) -> None:
    assert main(["budget", "--model", "resnet20", "--budget", "erk", "--density", "0.1",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in plan["layers"]}
    assert rows["conv1.weight"]["density"] == pytest.approx(0.983, abs=1e-3)
    assert rows["layer1.0.conv1.weight"]["density"] == pytest.approx(0.280, abs=1e-3)
    assert rows["layer3.1.conv2.weight"]["density"] == pytest.approx(0.062, abs=1e-3)
    assert rows["layer2.0.shortcut.0.weight"]["density"] == 1.0
    assert plan["masked_params"] == 270_896
    assert plan["kept_params"] == pytest.approx(27_090, abs=22)
    assert plan["flops_dense"] == 81_626_368 and plan["flops_sparse"] < plan["flops_dense"]
    with pytest.raises(SystemExit) as exc:  # argparse: --density missing
        main(["budget", "--model", "resnet20", "--budget", "erk"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["budget", "--model", "resnet20", "--budget", "nope", "--density", "0.1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["budget", "--model", "resnet20", "--density", "0"]) == 2
