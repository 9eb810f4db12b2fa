"""DESIGN.md §2 invariants 1, 2 and 5: masked weights, gradients and every optimizer-state
tensor stay exactly zero over 50+ steps, for SGD-nesterov with weight decay and AdamW, in fp32
and bf16 autocast, through optimizer hooks and through explicit calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsetrain.models import create_model
from sparsetrain.sparsity.methods import create_method

STEPS = 52


def _optimizer(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                               weight_decay=5e-4)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


def _check(method, optimizer) -> None:
    for n, p in method.masks.params.items():
        off = method.masks.masks[n] == 0
        assert torch.all(p[off] == 0), f"weight {n}"
        for k, v in optimizer.state[p].items():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert torch.all(v[off] == 0), f"{k} of {n}"


@pytest.mark.parametrize("path", ["hooks", "explicit", "explicit_post_only"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_masked_weights_and_state_stay_zero(opt_kind: str, precision: str, path: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("resnet20")
    optimizer = _optimizer(opt_kind, model)
    method = create_method("static", model, optimizer, density=0.1, budget="erk", seed=3)
    method.prepare()
    if path == "hooks":
        method.attach()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    assert method.masks.density() == pytest.approx(0.1, abs=1e-4)
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if path == "explicit":
            method.pre_step()
        optimizer.step()
        if path != "hooks":
            method.step()
        if path != "explicit_post_only":
            for n, p in method.masks.params.items():  # gradients were masked before the step
                assert torch.all(p.grad[method.masks.masks[n] == 0] == 0), n
        _check(method, optimizer)
    assert method.step_count == STEPS
    assert torch.isfinite(loss)
    # the surviving connections did train: their optimizer state is nonzero
    p = method.masks.params["layer1.0.conv1.weight"]
    on = method.masks.masks["layer1.0.conv1.weight"] == 1
    assert any(torch.any(v[on] != 0) for v in optimizer.state[p].values() if v.shape == p.shape)
