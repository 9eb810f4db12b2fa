"""LR schedules (pure functions of the step) and optimizer parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.train.optim import build_optimizer, param_groups
from sparsetrain.train.schedules import LRSchedule, build_schedule


def test_cosine_with_linear_warmup() -> None:
    s = build_schedule("cosine", epochs=10, steps_per_epoch=10, warmup_epochs=1)
    assert s.total_steps == 100 and s.warmup_steps == 10
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5)  # halfway through the cosine part
    assert s(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert s(100) == pytest.approx(0.0)


def test_cosine_final_fraction() -> None:
    s = LRSchedule("cosine", total_steps=20, final_frac=0.1)
    assert s(0) == pytest.approx(1.0) and s(20) == pytest.approx(0.1)


def test_multistep_milestones_in_epochs_convert_with_real_steps() -> None:
    s = build_schedule("multistep", epochs=160, steps_per_epoch=391, milestones=[80, 120])
    assert s.milestones == (80 * 391, 120 * 391)
    assert s(80 * 391 - 1) == 1.0
    assert s(80 * 391) == pytest.approx(0.1)
    assert s(120 * 391) == pytest.approx(0.01)


def test_onecycle_and_constant() -> None:
    s = LRSchedule("onecycle", total_steps=100, warmup_steps=30)
    assert s(0) == pytest.approx(1 / 25) and s(30) == pytest.approx(1.0)
    assert s(100) == pytest.approx(0.0) and s(65) == pytest.approx(0.5)
    c = LRSchedule("constant", total_steps=10, warmup_steps=2)
    assert [c(i) for i in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_bad_schedule_raises_user_error() -> None:
    with pytest.raises(UserError, match="cosin"):
        LRSchedule("cosin", total_steps=10)
    with pytest.raises(UserError, match="warmup_steps"):
        LRSchedule("cosine", total_steps=10, warmup_steps=10)


def test_weight_decay_exclusion_groups() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    (g,) = param_groups(model, 5e-4, exclude_norm_bias=False)
    assert len(g["params"]) == 6
    decay, no_decay = param_groups(model, 5e-4, exclude_norm_bias=True)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3]), torch.Size([2, 4])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=5e-4, exclude_norm_bias=True)
    assert opt.defaults["nesterov"] and len(opt.param_groups) == 2
    adam = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    assert isinstance(adam, torch.optim.AdamW)
    with pytest.raises(UserError, match="lamb"):
        build_optimizer(model, "lamb", lr=0.1, weight_decay=0.0)
