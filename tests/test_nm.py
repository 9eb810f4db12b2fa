"""N:M structured sparsity (sparsity/structure.py): the group layout, capped top-k and grow
selection on hand-checked tensors, N:M-aware budgets, and the invariant "every group of M has at
most N active weights" after every step of every method (GMP/GraNet: at most the scheduled cap,
N once the density reaches N/M), lottery rounds and one-shot pruning included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import tiny_config, write_config
from sparsetrain import load_config
from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.errors import UserError
from sparsetrain.sparsity.allocate import allocate
from sparsetrain.sparsity.methods import create_method
from sparsetrain.sparsity.structure import (
    NM,
    cap_scores,
    group_counts,
    grow_scores,
    parse_structure,
)
from sparsetrain.train.lottery import run_lottery, run_oneshot

NEG = float("-inf")


@pytest.mark.parametrize(("text", "expected"), [
    ("unstructured", None), (None, None), ("2:4", NM(2, 4)), ("1:8", NM(1, 8)),
    (" 4:16 ", NM(4, 16)),
])
def test_parse_structure(text, expected) -> None:
    assert parse_structure(text) == expected


@pytest.mark.parametrize("text", ["4:4", "3:2", "0:4", "2-4", "two:four", "2:64", ""])
def test_bad_structure_is_a_one_line_error(text: str) -> None:
    with pytest.raises(UserError, match="structure"):
        parse_structure(text)


def test_unquoted_yaml_structure_reads_as_written(tmp_path: Path) -> None:
    """YAML 1.1 reads ``structure: 2:4`` as the base-60 integer 124; the config reads it back."""
    recipe = tmp_path / "r.yaml"
    cfg = tiny_config(tmp_path, sparsity={"method": "static", "density": 0.3})
    recipe.write_text(yaml.safe_dump(cfg))
    text = recipe.read_text().replace("method: static", "method: static\n  structure: 2:4")
    recipe.write_text(text)
    assert yaml.safe_load(text)["sparsity"]["structure"] == 124
    assert load_config(recipe).sparsity.structure == "2:4"
    assert load_config(recipe, ["sparsity.structure=4:8"]).sparsity.structure == "4:8"


def test_groups_run_along_the_input_dimension() -> None:
    # linear [out=2, in=8]: groups are w[o, 0:4], w[o, 4:8]
    s = torch.tensor([[1.0, 5, 3, 2, 0, 0, 9, 1], [4, 4, 4, 4, -1, -2, -3, -4]])
    got = cap_scores(s, 2, 4)
    assert got.tolist() == [[NEG, 5.0, 3.0, NEG, NEG, NEG, 9.0, 1.0],
                            [4.0, 4.0, NEG, NEG, -1.0, -2.0, NEG, NEG]]  # ties: lower index
    # conv [out=1, in=4, 1, 2]: a group is the 4 input channels at one kernel position
    w = torch.tensor([[[[1.0, 8]], [[2.0, 7]], [[3.0, 6]], [[4.0, 5]]]])
    got = cap_scores(w, 1, 4)
    assert got[0, :, 0, 0].tolist() == [NEG, NEG, NEG, 4.0]  # kernel position 0: in-ch 3
    assert got[0, :, 0, 1].tolist() == [8.0, NEG, NEG, NEG]  # kernel position 1: in-ch 0
    mask = (got > NEG).float()
    assert group_counts(mask, 4).tolist() == [1, 1]


def test_grow_fills_at_most_the_room_of_each_group() -> None:
    mask = torch.tensor([[1.0, 1, 0, 0, 1, 0, 0, 0]])  # group 0 full at 2:4, group 1 has 1
    score = torch.tensor([[9.0, 9, 8, 7, 1, 6, 5, 4]])
    got = grow_scores(score, mask, 2, 4)
    assert got.tolist() == [[NEG, NEG, NEG, NEG, NEG, 6.0, NEG, NEG]]  # one slot, the best
    assert grow_scores(score, mask, 3, 4).tolist() == [[NEG, NEG, 8.0, NEG, NEG, 6.0, 5.0, NEG]]


def test_budgets_are_capped_at_n_over_m() -> None:
    nm = NM(2, 4)
    shapes = {"a": (16, 16, 3, 3), "b": (32, 16, 3, 3), "c": (10, 64)}
    exact = nm.densities("erk", shapes, 0.5)
    assert exact == {"a": 0.5, "b": 0.5, "c": 0.5}  # exactly N/M: every layer exactly 2:4
    below = nm.densities("erk", shapes, 0.2)
    assert below == {n: 0.5 * d for n, d in allocate("erk", shapes, 0.4).items()}
    assert max(below.values()) <= 0.5
    with pytest.raises(UserError, match="above"):
        nm.densities("erk", shapes, 0.6)


def net() -> nn.Module:
    torch.manual_seed(0)  # the stem (3 input channels) cannot carry 2:4 and stays dense
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 12))


def assert_caps(method, cap: int) -> None:
    for n, m in method.masks.masks.items():
        counts = group_counts(m, method.nm.m)
        assert int(counts.max()) <= cap, (n, method.step_count)
        assert torch.all(method.masks.params[n].detach()[m == 0] == 0)


CASES = {
    "static_erk": dict(method="static", density=0.3, budget="erk"),
    "static_magnitude_global": dict(method="static", density=0.5, budget="global",
                                    score="magnitude"),
    "gmp_global": dict(method="gmp", density=0.2, delta_t=2, t_end="50%"),
    "gmp_layerwise": dict(method="gmp", density=0.5, delta_t=2, t_end="50%",
                          pruning="layerwise"),
    "granet": dict(method="granet", density=0.2, delta_t=2, t_end="50%"),
    "granet_st": dict(method="granet", density=0.2, initial_density=0.5, delta_t=2,
                      t_end="50%"),
    "set": dict(method="set", density=0.3, delta_t=2),
    "rigl": dict(method="rigl", density=0.5, delta_t=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_group_respects_the_pattern_after_every_step(case: str) -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    options = dict(CASES[case])
    name = options.pop("method")
    m = create_method(name, model, opt, structure="2:4", seed=1, total_steps=24,
                      steps_per_epoch=6, **options).prepare()
    assert "0.weight" not in m.masks.names and len(m.masks.names) == 2
    assert_caps(m, m.group_cap(0))
    g = torch.Generator().manual_seed(3)
    changes = 0
    for _ in range(24):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 12, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        m.pre_step()
        opt.step()
        before = {n: t.clone() for n, t in m.masks.masks.items()}
        m.step()
        changes += any(not torch.equal(before[n], t) for n, t in m.masks.masks.items())
        cap = m.group_cap(m.step_count)
        assert 2 <= cap <= 4
        assert_caps(m, cap)
    assert_caps(m, 2)  # the final masks are 2:4
    total = sum(t.numel() for t in m.masks.masks.values())
    assert abs(sum(m.masks.counts().values()) - options["density"] * total) <= 2
    if name != "static":
        assert changes >= 3  # the pattern held through real mask updates


def test_a_static_mask_above_n_over_m_takes_the_cap_that_fits() -> None:
    m = create_method("static", net(), density=0.7, budget="erk", structure="2:4").prepare()
    assert m.group_cap(0) == 3  # ceil(0.7 * 4): 3:4, as a lottery round at 70%
    assert_caps(m, 3)
    total = sum(t.numel() for t in m.masks.masks.values())
    assert abs(sum(m.masks.counts().values()) - 0.7 * total) <= 2


def test_exact_two_four_keeps_two_of_every_four() -> None:
    m = create_method("static", net(), density=0.5, budget="erk", score="magnitude",
                      structure="2:4").prepare()
    for mask in m.masks.masks.values():
        assert group_counts(mask, 4).unique().tolist() == [2]


@pytest.mark.parametrize(("method", "options", "match"), [
    ("rigl", {"density": 0.6}, "at most 0.5"),
    ("gmp", {"density": 0.7}, "at most 0.5"),
    ("static", {"density": 0.3, "bernoulli": True}, "top-k"),
    ("static", {"density": 0.3, "budget": "snip_ratio"}, "top-k"),
    ("dense", {}, "no masks"),
])
def test_bad_combinations(method: str, options: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        create_method(method, net(), structure="2:4", total_steps=10, steps_per_epoch=5,
                      **options)


def test_lottery_rounds_and_oneshot_keep_the_pattern(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(
        tmp_path, train={"epochs": 1}, sparsity={"structure": "2:4"})))
    summaries = run_lottery(cfg, rounds=3, prune_fraction=0.2, rewind=0)
    caps = {1: 4, 2: 3, 3: 3}  # densities 0.8, 0.64, 0.512: ceil(d * 4)
    for r, cap in caps.items():
        model = load_checkpoint(cfg.run_dir / f"round_{r}" / "last.pt")["model"]
        masks = {k[:-5]: v for k, v in model.items() if k.endswith("_mask")}
        assert "conv1.weight" not in masks  # the RGB stem stays dense
        assert max(int(group_counts(v, 4).max()) for v in masks.values()) <= cap
        assert summaries[r]["density"]["global"] == pytest.approx(0.8 ** r, abs=1e-3)
    recipe = write_config(tmp_path, tiny_config(tmp_path, name="os24", train={"epochs": 1},
                                                sparsity={"density": 0.5,
                                                          "structure": "2:4"}))
    run_oneshot(load_config(recipe), cfg.run_dir / "round_0" / "last.pt", budget="erk")
    model = load_checkpoint(tmp_path / "runs" / "os24" / "last.pt")["model"]
    for k, v in model.items():
        if k.endswith("_mask"):
            assert group_counts(v, 4).unique().tolist() == [2], k
