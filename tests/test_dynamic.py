"""GMP, GraNet, SET, RigL: schedules, exact densities, drop/grow invariants, dense-gradient
regrowth, topology statistics and exact resume (DESIGN.md §3.3–3.4)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config, write_config
from sparsetrain import load_config, train
from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.errors import UserError
from sparsetrain.sparsity.methods import create_method
from sparsetrain.sparsity.methods.dynamic import drop_grow
from sparsetrain.sparsity.schedules import CosineDecay, CubicSchedule, to_steps


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def run_steps(method, model, optimizer, steps: int, *, explicit_pre: bool = True,
              on_step=None) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if explicit_pre:
            method.pre_step()
        optimizer.step()
        method.step()
        if on_step is not None:
            on_step(method)


# -- schedules ---------------------------------------------------------------------------
def test_cubic_schedule_values() -> None:
    s = CubicSchedule(0.0, 0.9, t_0=0, t_f=100, delta_t=10)
    assert s.sparsity(0) == 0.0 and s.sparsity(100) == 0.9 and s.sparsity(150) == 0.9
    assert s.sparsity(50) == pytest.approx(0.9 - 0.9 * 0.5**3)  # 0.7875
    assert s.sparsity(10) == pytest.approx(0.9 - 0.9 * 0.9**3)  # 0.2439
    assert [t for t in range(0, 130) if s.is_update(t)] == list(range(10, 101, 10))
    st = CubicSchedule(0.5, 0.98, t_0=20, t_f=60, delta_t=20)
    assert st.sparsity(40) == pytest.approx(0.98 + (0.5 - 0.98) * 0.5**3)
    assert CubicSchedule.fit(0.0, 0.9, 0, 105, 10).t_f == 100
    with pytest.warns(UserWarning, match="delta_t=2"):
        short = CubicSchedule.fit(0.0, 0.9, 0, 8, 1000)
    assert (short.delta_t, short.t_f) == (2, 8)
    with pytest.raises(UserError):
        CubicSchedule(0.5, 0.4, 0, 10, 5)


def test_cosine_decay_and_times() -> None:
    d = CosineDecay(0.5, 0.005, 1000)
    assert d(0) == 0.5 and d(1000) == pytest.approx(0.005) and d(5000) == pytest.approx(0.005)
    assert d(500) == pytest.approx(0.005 + 0.495 / 2)
    assert to_steps("80ep", steps_per_epoch=391, total_steps=62560) == 31280
    assert to_steps("50%", steps_per_epoch=391, total_steps=1000) == 500
    assert to_steps(1000, steps_per_epoch=391, total_steps=10) == 1000
    for bad in ("abc", -3, 2.5):
        with pytest.raises(UserError):
            to_steps(bad, steps_per_epoch=10, total_steps=100)


# -- drop / grow -------------------------------------------------------------------------
def test_drop_grow_hand_example() -> None:
    mask = torch.tensor([1.0, 1, 0, 0, 0, 0])
    w = torch.tensor([0.5, -0.1, 0, 0, 0, 0])
    grad = torch.tensor([0.0, 0, 0.3, 0.9, 0.1, 0.2])
    assert drop_grow(mask, w, grad, 1).tolist() == [1, 0, 0, 1, 0, 0]
    assert drop_grow(mask, w, grad, 2).tolist() == [0, 0, 1, 1, 0, 0]
    # a dropped weight can be regrown when its score wins (it then keeps its value)
    assert drop_grow(mask, w, torch.tensor([0.0, 5, 0, 0, 0, 0]), 1).tolist() == [1, 1, 0, 0,
                                                                                   0, 0]


@pytest.mark.parametrize("name", ["set", "rigl"])
def test_dst_update_keeps_counts_and_zeroes_new_connections(name: str) -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    m = create_method(name, model, opt, density=0.3, delta_t=3, seed=0, total_steps=30,
                      steps_per_epoch=10)
    m.prepare()
    before: dict = {}

    def check(method) -> None:
        if method.step_count % 3 == 2:  # the step before an update: remember the masks
            before.update({n: t.clone() for n, t in method.masks.masks.items()})
        if method.step_count % 3 == 0 and method.step_count < 22:
            for n, new in method.masks.masks.items():
                assert new.sum() == before[n].sum()  # active count per layer unchanged
                grown = (new == 1) & (before[n] == 0)
                assert grown.sum() == ((new == 0) & (before[n] == 1)).sum()
                p = method.masks.params[n]
                assert torch.all(p[grown] == 0)
                assert torch.all(opt.state[p]["momentum_buffer"][grown] == 0)

    run_steps(m, model, opt, 30, on_step=check)
    updates = [e for e in m.log if e["event"] == "update"]
    assert [e["step"] for e in updates] == [3, 6, 9, 12, 15, 18, 21]  # T_end = 75% of 30
    assert all(e["dropped"] == e["grown"] for e in updates) and updates[0]["grown"] > 0
    assert m.masks.density() == pytest.approx(0.3, abs=2e-3)


def test_rigl_grows_where_the_dense_gradient_is_largest() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights fixed, easy to check
    m = create_method("rigl", model, opt, density=0.25, delta_t=1, update_fraction=0.25,
                      seed=0, total_steps=8, steps_per_epoch=8)
    m.prepare()
    old = m.masks.masks["1.weight"].clone()
    w = model[1].weight
    x, y = torch.randn(5, 12), torch.tensor([0, 1, 2, 3, 0])
    F.cross_entropy(model(x), y).backward()
    dense_grad = w.grad.detach().abs().clone()
    m.pre_step()
    assert torch.all(w.grad[old == 0] == 0)  # gradients are masked after RigL read them
    opt.step()
    m.step()
    new = m.masks.masks["1.weight"]
    # alpha_1 = 0.25/2 * (1 + cos(pi * 1/6)) = 0.2333 (T_end = 75% of 8 = 6); 0.2333 * 12 = 2.8
    # -> 2: the official RigL floors the drop count (int cast), round() would give 3
    k = math.floor(m.decay(1) * 12)
    assert k == 2
    assert torch.equal(new, _hand_drop_grow(old, w.detach(), dense_grad, k))


@pytest.mark.parametrize("recipe", ["cpu/rigl_resnet20_cifar10", "cpu/set_resnet20_cifar10",
                                    "dst/rigl_resnet50_cifar_cifar10_s90",
                                    "dst/set_resnet50_cifar_cifar10_s90"])
def test_rigl_and_set_recipes_keep_the_stem_dense_outside_the_budget(recipe: str) -> None:
    from sparsetrain.cli import resolve_recipe
    from sparsetrain.models import create_model

    cfg = load_config(resolve_recipe(recipe))
    assert cfg.sparsity.dense_first is True
    model = create_model(cfg.model.name, num_classes=10)
    m = create_method(cfg.sparsity.method, model, density=cfg.sparsity.density,
                      dense_first=True, total_steps=1000, steps_per_epoch=10).prepare()
    stem = next(n for n, p in model.named_parameters() if p.dim() == 4)
    assert stem not in m.masks.names
    assert m.masks.density() == pytest.approx(cfg.sparsity.density, abs=1e-3)


def test_set_growth_is_reproducible_from_the_seed() -> None:
    def final(seed: int) -> dict:
        model = tiny_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        m = create_method("set", model, opt, density=0.2, delta_t=2, seed=seed,
                          total_steps=12, steps_per_epoch=6).prepare()
        run_steps(m, model, opt, 12)
        return {n: t.clone() for n, t in m.masks.masks.items()}

    a, b, c = final(3), final(3), final(4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


# -- GMP / GraNet ------------------------------------------------------------------------
@pytest.mark.parametrize("pruning", ["global", "layerwise"])
def test_gmp_reaches_the_target_exactly_and_stays(pruning: str) -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    m = create_method("gmp", model, opt, density=0.1, delta_t=5, t_end="50%", pruning=pruning,
                      total_steps=40, steps_per_epoch=10).prepare()
    n_total = sum(p.numel() for p in m.masks.params.values())
    seen = []
    run_steps(m, model, opt, 40, on_step=lambda mt: seen.append(sum(mt.masks.counts().values())))
    expected = [1.0 - m.cubic.sparsity(t) for t in range(1, 41)]
    for t in (5, 10, 15, 20):
        if pruning == "global":
            assert seen[t - 1] == round(expected[t - 1] * n_total)
    assert all(c == seen[19] for c in seen[19:])  # t_f = 20, then fixed
    if pruning == "global":
        assert seen[19] == round(0.1 * n_total)
    else:
        assert abs(seen[19] - 0.1 * n_total) <= len(m.masks.names)
    for n, p in m.masks.params.items():
        assert torch.all(p[m.masks.masks[n] == 0] == 0)


def test_granet_regrowth_reads_the_dense_gradient() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = create_method("granet", model, opt, density=0.5, initial_density=0.5, delta_t=1,
                      t_end=1, update_fraction=0.25, seed=0, total_steps=4,
                      steps_per_epoch=4).prepare()
    w = model[1].weight
    old = m.masks.masks["1.weight"].clone()
    F.cross_entropy(model(torch.randn(6, 16)), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    dense = w.grad.detach().abs().clone()
    assert torch.any(dense[old == 0] > 0)
    m.pre_step()
    opt.step()
    m.step()  # step 1 = t_f: prune to 0.5 (a no-op here), then regrow by the dense gradient
    new = m.masks.masks["1.weight"]
    # r_1 = 0.005 + (0.25 - 0.005) * (1 + cos(pi * 1/4)) / 2 = 0.2141; ceil(0.2141 * 32) = 7
    k = math.ceil(m.decay(1) * 32)
    assert new.sum() == old.sum() == 32 and k == 7
    expected = _hand_drop_grow(old, w.detach(), dense, k)
    assert torch.equal(new, expected)
    masked_grad_result = _hand_drop_grow(old, w.detach(), dense * old, k)
    assert not torch.equal(new, masked_grad_result)  # the masked gradient would differ


@pytest.mark.parametrize("revive", ["zero", "keep"])
def test_granet_revived_weights_restart_at_zero_like_the_official_code(revive: str) -> None:
    """Official GraNet: pruning() ends in apply_mask() before truncate_weights() regrows, so a
    weight pruned and revived in one update is 0 with 0 momentum; "keep" is the ablation."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = create_method("granet", model, opt, density=0.5, delta_t=2, t_end=2,
                      update_fraction=0.5, update_fraction_min=0.5, seed=0, revive=revive,
                      total_steps=4, steps_per_epoch=4).prepare()
    w = model[1].weight
    x, y = torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    for _ in range(2):  # step 1: plain SGD (momentum builds up); step 2 = t_f: prune + regrow
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        dense = w.grad.detach().abs().clone()
        m.pre_step()
        opt.step()
        before = w.detach().clone()  # after this step's SGD update, before the mask update
        mom = opt.state[w]["momentum_buffer"].clone()
        m.step()
    new = m.masks.masks["1.weight"]
    # the masks do not depend on the option: GMP to 16 of 64 by |w|, then ceil(0.5 * 32) = 16
    # dropped by |w| and regrown by |dense gradient| among the 32 inactive ones
    gmp = torch.zeros(64)
    gmp[before.abs().flatten().topk(32).indices] = 1
    expected = _hand_drop_grow(gmp.view(4, 16), before * gmp.view(4, 16), dense, 16)
    assert torch.equal(new, expected)
    revived = (gmp.view(4, 16) == 0) & (new == 1)  # all were active before (dense start)
    assert int(revived.sum()) >= 3  # the case this test is about occurs here
    kept = (gmp.view(4, 16) == 1) & (new == 1)
    assert torch.equal(w.detach()[kept], before[kept])
    if revive == "zero":
        assert torch.all(w.detach()[revived] == 0)
        assert torch.all(opt.state[w]["momentum_buffer"][revived] == 0)
    else:
        assert torch.equal(w.detach()[revived], before[revived])
        assert torch.equal(opt.state[w]["momentum_buffer"][revived], mom[revived])
        assert torch.all(before[revived] != 0)


def _hand_drop_grow(mask, w, score, k):
    flat = mask.clone().flatten()
    drop = torch.where(flat.bool(), -w.abs().flatten(), float("-inf")).topk(k).indices
    flat[drop] = 0
    grow = torch.where(flat.bool(), float("-inf"), score.flatten()).topk(k).indices
    flat[grow] = 1
    return flat.view_as(mask)


def test_itop_is_monotone_and_equals_the_union_density() -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    m = create_method("set", model, opt, density=0.1, delta_t=2, seed=1, total_steps=20,
                      steps_per_epoch=10).prepare()
    run_steps(m, model, opt, 20)
    rates = [e["itop"] for e in m.log]
    assert rates == sorted(rates) and rates[0] == pytest.approx(m.log[0]["density"])
    union = sum(int(u.sum()) for u in m.union.values())
    total = sum(u.numel() for u in m.union.values())
    assert rates[-1] == union / total > 0.15


def test_unknown_times_and_missing_lengths() -> None:
    with pytest.raises(UserError, match="bad time"):
        create_method("gmp", tiny_net(), density=0.1, t_end="half")
    with pytest.raises(UserError, match="total_steps"):
        create_method("rigl", tiny_net(), density=0.1).prepare()


# -- engine ------------------------------------------------------------------------------
def test_granet_resume_between_updates_is_exact(tmp_path: Path) -> None:
    sp = {"method": "granet", "density": 0.1, "delta_t": 4, "t_end": "50%"}
    base = tiny_config(tmp_path, sparsity=sp)  # 2 epochs x 8 steps; updates at 4, 8, 12, 16
    full = load_config(write_config(tmp_path, {**base, "name": "full"}))
    s_full = train(full)
    part = load_config(write_config(tmp_path, {**base, "name": "part"}), ["train.max_steps=6"])
    train(part)
    again = load_config(write_config(tmp_path, {**base, "name": "part"}))
    s_again = train(again, resume=True)
    a = load_checkpoint(full.run_dir / "last.pt")
    b = load_checkpoint(again.run_dir / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ua, ub = a["trainer"]["callbacks"]["sparsity"], b["trainer"]["callbacks"]["sparsity"]
    assert all(torch.equal(ua["union"][n], ub["union"][n]) for n in ua["union"])
    assert s_full["density"]["global"] == s_again["density"]["global"] == pytest.approx(
        0.1, abs=1e-5)
