"""MaskSet: buffers in the state dict, deepcopy, checkpoint round trip, squash, opt state."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.sparsity.masks import MaskSet, add_mask_buffers, prunable_parameters


def _half_masks(ms: MaskSet, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(p.shape, generator=g) < 0.5).float() for n, p in ms.params.items()}


def test_prunable_parameters_defaults_and_options() -> None:
    model = create_model("resnet20")
    names = prunable_parameters(model)
    assert len(names) == 22  # 19 3x3 convs + 2 shortcut 1x1 convs + fc
    assert names[0] == "conv1.weight" and names[-1] == "fc.weight"
    assert sum(dict(model.named_parameters())[n].numel() for n in names) == 270_896
    assert "conv1.weight" not in prunable_parameters(model, dense_first=True)
    assert "fc.weight" not in prunable_parameters(model, dense_classifier=True)
    assert prunable_parameters(model, include=["layer3.*.conv2.weight"]) == [
        "layer3.0.conv2.weight", "layer3.1.conv2.weight", "layer3.2.conv2.weight"]
    assert len(prunable_parameters(model, exclude=["*shortcut*"])) == 20
    with pytest.raises(UserError, match="match no parameter"):
        prunable_parameters(model, include=["nothing*"])


def test_masks_are_buffers_that_travel_with_the_model() -> None:
    model = create_model("resnet20")
    ms = MaskSet(model, prunable_parameters(model))
    masks = _half_masks(ms)
    ms.set_masks(masks)
    sd = model.state_dict()
    assert "layer1.0.conv1.weight_mask" in sd and "fc.weight_mask" in sd
    for n, m in masks.items():
        assert torch.equal(sd[n + "_mask"], m)
        assert torch.all(sd[n][m == 0] == 0)

    clone = copy.deepcopy(model)  # masks survive deepcopy
    clone_ms = MaskSet.from_model(clone)
    assert clone_ms is not None and clone_ms.names == ms.names
    assert all(torch.equal(clone_ms.masks[n], masks[n]) for n in masks)

    buf = io.BytesIO()  # checkpoint round trip into a fresh model
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = create_model("resnet20")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(state)
    loaded = add_mask_buffers(fresh, state)
    fresh.load_state_dict(state)
    assert loaded is not None and loaded.density() == pytest.approx(ms.density())
    assert all(torch.equal(loaded.masks[n], masks[n]) for n in masks)


def test_squash_removes_buffers_and_keeps_zeros() -> None:
    model = create_model("resnet20")
    ms = MaskSet(model, prunable_parameters(model))
    masks = _half_masks(ms, seed=1)
    ms.set_masks(masks)
    zeros_before = sum(int((p == 0).sum()) for p in ms.params.values())
    ms.squash()
    sd = model.state_dict()
    assert not any(k.endswith("_mask") for k in sd)
    assert sum(int((sd[n] == 0).sum()) for n in masks) == zeros_before
    create_model("resnet20").load_state_dict(sd)  # a plain model again


def test_set_masks_zeroes_every_same_shaped_optimizer_state() -> None:
    model = create_model("resnet20")
    ms = MaskSet(model, prunable_parameters(model))
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                torch.optim.AdamW(model.parameters(), lr=1e-3)):
        model(torch.randn(4, 3, 32, 32)).sum().backward()
        opt.step()
        masks = _half_masks(ms, seed=2)
        ms.set_masks(masks, opt)
        for n, p in ms.params.items():
            state = [v for v in opt.state[p].values() if v.shape == p.shape]
            assert state, n
            for v in state:
                assert torch.all(v[masks[n] == 0] == 0)
                assert torch.any(v[masks[n] == 1] != 0)


def test_density_reports() -> None:
    model = create_model("resnet20")
    ms = MaskSet(model, ["conv1.weight", "fc.weight"])
    mask = torch.zeros(16, 3, 3, 3)
    mask.view(-1)[:108] = 1
    ms.set_masks({"conv1.weight": mask})
    assert ms.counts() == {"conv1.weight": 108, "fc.weight": 640}
    assert ms.layer_densities()["conv1.weight"] == pytest.approx(0.25)
    assert ms.density() == pytest.approx((108 + 640) / (432 + 640))
