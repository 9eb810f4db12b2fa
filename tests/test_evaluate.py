"""Evaluation metrics: exact calibration/OOD numbers on fixed inputs, attacks on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sparsetrain.data import make_synthetic
from sparsetrain.errors import UserError
from sparsetrain.evaluate import (
    OOD_SETS,
    accuracy_topk,
    aupr,
    auroc,
    blurred,
    ece,
    evaluate_model,
    fgsm,
    gaussian_noise,
    make_ood_set,
    max_softmax_score,
    nll,
    pgd,
    pixel_normalizer,
    pixel_shuffled,
    reliability_bins,
    robust_accuracy,
    uniform_noise,
)
from sparsetrain.evaluate.calibration import _bin_index

torch.set_num_threads(1)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _probs(conf: list[float], pred: list[int], k: int = 4) -> torch.Tensor:
    """float64 rows with max ``conf`` at class ``pred``, the rest spread evenly."""
    p = torch.tensor([[(1 - c) / (k - 1)] * k for c in conf], dtype=torch.float64)
    p[torch.arange(len(conf)), torch.tensor(pred)] = torch.tensor(conf, dtype=torch.float64)
    return p


# ---- calibration -------------------------------------------------------------------------


def test_accuracy_topk_on_fixed_logits() -> None:
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0, -1],  # label 0: rank 1
                           [5.0, 4, 3, 2, 1, 0, -1],  # label 4: rank 5
                           [5.0, 4, 3, 2, 1, 0, -1],  # label 5: rank 6
                           [0.0, 1, 2, 3, 4, 5, 6]])  # label 5: rank 2
    labels = torch.tensor([0, 4, 5, 5])
    assert accuracy_topk(logits, labels) == {"top1": 0.25, "top5": 0.75}
    assert accuracy_topk(logits, labels, ks=(2, 10)) == {"top2": 0.5, "top10": 1.0}


def test_nll_matches_math_log() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0], [1.0, 2.0, 3.0]])
    labels = [0, 1, 2]
    expected = 0.0
    for row, y in zip(logits.tolist(), labels, strict=True):
        z = sum(math.exp(v) for v in row)
        expected -= math.log(math.exp(row[y]) / z)
    assert nll(logits, torch.tensor(labels)) == pytest.approx(expected / 3, abs=1e-12)


def test_perfect_calibration_has_zero_ece() -> None:
    # every confidence 0.75 and exactly 3 of 4 correct, in each of two repeats
    probs = _probs([0.75] * 8, [0, 1, 2, 3] * 2)
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0])
    assert ece(probs, labels) == 0.0
    logits = torch.tensor([[math.log(9.0), 0, 0, 0]] * 4, dtype=torch.float64)  # max p = 9/12
    assert ece(logits, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_ece_and_bin_edges() -> None:
    # (conf, correct): bins (i/15, (i+1)/15]; 0.6 = 9/15 is an upper edge, so it shares
    # bin 8 with nothing, and 0.62 sits alone in bin 9.
    conf = [0.9, 0.9, 0.6, 0.62, 0.3, 1.0]
    pred = [0, 0, 1, 1, 2, 3]
    labels = torch.tensor([0, 1, 1, 0, 2, 3])
    probs = _probs(conf, pred)
    expected = (2 * abs(0.5 - 0.9) + abs(1 - 0.6) + abs(0 - 0.62) + abs(1 - 0.3) + 0) / 6
    assert ece(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.42, abs=1e-12)
    bins = reliability_bins(probs, labels)
    assert bins["count"] == [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 2, 1]
    assert bins["accuracy"][13] == 0.5 and bins["confidence"][13] == pytest.approx(0.9)
    assert bins["accuracy"][0] is None and len(bins["edges"]) == 16
    json.dumps(bins)
    edges = torch.tensor([0.0, 1 / 15, 0.0667, 0.5, 1.0], dtype=torch.float64)
    assert _bin_index(edges, 15).tolist() == [0, 0, 1, 7, 14]


# ---- OOD ---------------------------------------------------------------------------------


def test_auroc_separable_identical_and_ties() -> None:
    assert auroc(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.1, 0.2])) == 1.0
    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.9, 0.8, 0.7])) == 0.0
    assert auroc(torch.full((5,), 0.3), torch.full((7,), 0.3)) == 0.5
    # pairs (in, out): 0.5 vs {0.5: 1/2, 0.3: 1, 0.7: 0}; 0.7 vs {1, 1, 1/2} -> 4 / 6
    assert auroc(torch.tensor([0.5, 0.7]), torch.tensor([0.5, 0.3, 0.7])) == pytest.approx(2 / 3)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (40,), generator=g), torch.randint(0, 5, (30,), generator=g)
    brute = ((a[:, None] > b[None]).double() + 0.5 * (a[:, None] == b[None]).double()).mean()
    assert auroc(a, b) == pytest.approx(brute.item(), abs=1e-12)


def test_aupr_hand_example() -> None:
    # descending: in .9, in .8, out .7, in .4, out .3 -> AP = 1/3 * (1 + 1 + 3/4) = 11/12
    assert aupr(torch.tensor([0.9, 0.8, 0.4]), torch.tensor([0.7, 0.3])) == pytest.approx(11 / 12)
    # a tie between an in and an out score enters as one threshold: P = 1/2 at R = 1
    assert aupr(torch.tensor([0.5]), torch.tensor([0.5])) == 0.5
    assert aupr(torch.tensor([0.9, 0.5]), torch.tensor([0.5, 0.1])) == pytest.approx(
        0.5 * 1 + 0.5 * (2 / 3))


def test_max_softmax_score() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    assert max_softmax_score(logits).tolist() == pytest.approx([0.75, 0.5])


def test_ood_generators_deterministic_shapes_and_dtypes() -> None:
    images = make_synthetic(6, image_size=16, seed=2).images
    for name in OOD_SETS:
        a, b = make_ood_set(name, images, seed=3), make_ood_set(name, images, seed=3)
        assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    for name in ("gaussian", "uniform", "shuffle"):
        assert not torch.equal(make_ood_set(name, images, 3), make_ood_set(name, images, 4))
    g = gaussian_noise(200, (8, 8, 3), seed=0).float() / 255
    assert abs(g.mean().item() - 0.5) < 0.01 and abs(g.std().item() - 0.25) < 0.02
    u = uniform_noise(50, (8, 8, 3), seed=0)
    assert u.shape == (50, 8, 8, 3) and u.min() == 0 and u.max() == 255
    # one permutation of positions for every image: sorted pixel values are unchanged
    s = pixel_shuffled(images, seed=1)
    assert torch.equal(s.flatten(1, 2).sort(1).values, images.flatten(1, 2).sort(1).values)
    twice = torch.cat([images[:1], images[:1]])
    assert torch.equal(pixel_shuffled(twice, 1)[0], pixel_shuffled(twice, 1)[1])
    with pytest.raises(UserError):
        make_ood_set("nope", images)


def test_blur_keeps_constants_and_smooths() -> None:
    const = torch.full((2, 12, 10, 3), 137, dtype=torch.uint8)
    assert torch.equal(blurred(const), const)
    spike = torch.zeros(1, 11, 11, 1, dtype=torch.uint8)
    spike[0, 5, 5, 0] = 255
    out = blurred(spike, sigma=2.0)[0, :, :, 0].float()
    assert out[5, 5] < 255 and out[5, 5] == out.max() and torch.equal(out, out.T)
    assert out.sum().item() == pytest.approx(255, abs=12)  # mass kept up to rounding


# ---- robustness --------------------------------------------------------------------------


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    train, test = make_synthetic(512, image_size=16, seed=0), make_synthetic(128, 10, 16, seed=1)
    model = _tiny_net()
    norm = pixel_normalizer(MEAN, STD)
    x = norm(train.images.permute(0, 3, 1, 2).float() / 255)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, test.images, test.labels


def test_fgsm_at_zero_eps_equals_clean_accuracy(trained) -> None:
    model, images, labels = trained
    model.eval()
    res = robust_accuracy(model, images, labels, MEAN, STD, eps_list=(0.0,), attacks=("fgsm",))
    assert res["fgsm"]["0/255"] == res["clean"] and res["n"] == len(labels)
    assert res["clean"] > 0.5  # the tiny model learned the task


def test_pgd_is_stronger_than_fgsm(trained) -> None:
    model, images, labels = trained
    model.eval()
    eps = (8 / 255, 16 / 255)  # the synthetic task is easy: small budgets barely bite
    res = robust_accuracy(model, images, labels, MEAN, STD, eps_list=eps, batch_size=50, seed=1)
    assert set(res) == {"clean", "n", "fgsm", "pgd"} and list(res["pgd"]) == ["8/255", "16/255"]
    for key in ("8/255", "16/255"):
        assert res["pgd"][key] <= res["fgsm"][key] <= res["clean"]
    assert res["pgd"]["16/255"] < res["fgsm"]["16/255"] < res["clean"]
    again = robust_accuracy(model, images, labels, MEAN, STD, eps_list=eps, batch_size=50, seed=1)
    assert again == res


def test_attacks_stay_in_budget_touch_no_grads_and_restore_mode(trained) -> None:
    model, images, labels = trained
    model.train()
    model[1].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    x01 = images[:32].permute(0, 3, 1, 2).float() / 255
    y = labels[:32]
    norm = pixel_normalizer(MEAN, STD)
    eps = 4 / 255
    running = model[1].running_mean.clone()
    x_f = fgsm(model, x01, y, eps, norm)
    x_p = pgd(model, x01, y, eps, norm, generator=torch.Generator().manual_seed(0))
    for x_adv in (x_f, x_p):
        assert x_adv.min() >= 0 and x_adv.max() <= 1 and not x_adv.requires_grad
        assert (x_adv - x01).abs().max().item() <= eps + 1e-6
    assert (x_f - x01).abs().max().item() == pytest.approx(eps, abs=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[1].running_mean, running)  # BN statistics untouched (eval mode)
    model.eval()


# ---- suite -------------------------------------------------------------------------------


def test_evaluate_model_end_to_end(trained) -> None:
    model, images, labels = trained
    model.train()
    res = evaluate_model(model, images, labels, MEAN, STD, device="cpu", attacks=["fgsm"],
                         eps=[0.0, 4 / 255], attack_images=40, batch_size=48, ood_images=64,
                         ood_folder_images=uniform_noise(30, (16, 16, 3), seed=9))
    json.dumps(res)
    assert model.training
    with torch.no_grad():
        logits = model.eval()(pixel_normalizer(MEAN, STD)(images.permute(0, 3, 1, 2).float() / 255))
    assert res["top1"] == pytest.approx(accuracy_topk(logits, labels)["top1"])
    assert res["nll"] == pytest.approx(nll(logits, labels), abs=1e-5)
    assert res["ece"] == pytest.approx(ece(logits, labels), abs=1e-5)
    assert res["n"] == 128 and sum(res["reliability"]["count"]) == 128
    assert set(res["ood"]) == {*OOD_SETS, "folder"} and res["ood"]["folder"]["n"] == 30
    assert res["ood"]["gaussian"]["n"] == 64
    assert all(0 <= v["auroc"] <= 1 and 0 < v["aupr"] <= 1 for v in res["ood"].values())
    rob = res["robustness"]
    assert rob["n"] == 40 and rob["fgsm"]["0/255"] == rob["clean"] and "pgd" not in rob
    none = evaluate_model(model, images, labels, MEAN, STD, device="cpu", ood=[], attacks=[])
    assert "ood" not in none and "robustness" not in none and none["top1"] == res["top1"]
    with pytest.raises(UserError):
        evaluate_model(model, images, labels, MEAN, STD, device="cpu", ood=["nope"])
