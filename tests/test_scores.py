"""Tests for exact top-k masks (sparsity/topk.py) and saliency scores (sparsity/scores.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.sparsity.scores import (
    SCORES,
    class_balanced_batch,
    get_score,
    gradient,
    grasp,
    list_scores,
    magnitude,
    ratio_densities,
    snip,
    synflow,
)
from sparsetrain.sparsity.topk import (
    bernoulli_masks,
    densities_of,
    global_masks,
    layerwise_masks,
    topk_mask,
)

SHAPES = {"a": (16, 3, 3, 3), "b": (10, 64), "c": (7,)}  # N = 432, 640, 7; total 1079


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


def _tiny_cnn() -> nn.Module:
    """Conv-BN-ReLU x2 + Linear on 3x8x8 inputs; 3 classes."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    net.input_size = (3, 8, 8)
    return net


TINY_NAMES = ["0.weight", "3.weight", "8.weight"]


def _weight_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


# --------------------------------------------------------------------------- topk


def test_topk_mask_exact_selection() -> None:
    s = torch.tensor([[0.3, 0.9, 0.1], [0.5, 0.9, -1.0]])
    assert topk_mask(s, 3).tolist() == [[0, 1, 0], [1, 1, 0]]
    assert topk_mask(s, 0).sum() == 0 and topk_mask(s, 6).sum() == 6
    assert topk_mask(s, 2).dtype == torch.float32
    with pytest.raises(ValueError):
        topk_mask(s, 7)


@pytest.mark.parametrize("n", [20, 10_000])
def test_ties_keep_the_lowest_flat_indices(n: int) -> None:
    s = torch.full((n // 10, 10), 0.5)
    for k in (0, 1, 7, n // 3, n):
        assert topk_mask(s, k).flatten().tolist() == [1.0] * k + [0.0] * (n - k)
    s = torch.tensor([2.0, 1.0, 1.0, 3.0, 1.0])
    assert topk_mask(s, 3).tolist() == [1, 1, 0, 1, 0]


def test_nan_ranks_below_minus_inf() -> None:
    s = torch.tensor([math.nan, 1.0, -math.inf, 0.0])
    assert topk_mask(s, 3).tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize(
    ("density", "expected"),
    [
        (0.0, (0, 0, 0)),
        (0.05, (22, 32, 0)),   # 21.6, 32.0, 0.35
        (0.1, (43, 64, 1)),    # 43.2, 64.0, 0.7
        (0.5, (216, 320, 4)),  # 3.5 rounds half to even -> 4
        (0.77, (333, 493, 5)),  # 332.64, 492.8, 5.39
        (1.0, (432, 640, 7)),
    ],
)
def test_layerwise_masks_exact_counts(density: float, expected: tuple[int, ...]) -> None:
    scores = _random_scores()
    masks = layerwise_masks(scores, dict.fromkeys(SHAPES, density))
    assert tuple(int(m.sum()) for m in masks.values()) == expected
    for name, m in masks.items():
        s = scores[name]
        assert m.shape == s.shape
        if 0 < m.sum() < m.numel():  # every kept score beats every pruned one
            assert s[m == 1].min() > s[m == 0].max()


def test_layerwise_masks_reject_bad_densities() -> None:
    scores = _random_scores()
    for bad in (1.5, -0.1, math.nan, True):
        with pytest.raises(UserError):
            layerwise_masks(scores, {"a": bad, "b": 0.5, "c": 0.5})
    with pytest.raises(UserError, match="'c'"):
        layerwise_masks(scores, {"a": 0.5, "b": 0.5})


def test_global_masks_hand_example() -> None:
    scores = {"a": torch.tensor([[0.5, 0.1], [0.9, 0.5]]), "b": torch.tensor([0.5, 0.2, 0.95])}
    # Order: b2 (.95), a2 (.9), then the 0.5 ties a0, a3, b0 by (layer, flat index), then ...
    m = global_masks(scores, 0.3)  # round(2.1) = 2
    assert m["a"].tolist() == [[0, 0], [1, 0]] and m["b"].tolist() == [0, 0, 1]
    m = global_masks(scores, 0.5)  # round(3.5) = 4
    assert m["a"].tolist() == [[1, 0], [1, 1]] and m["b"].tolist() == [0, 0, 1]
    m = global_masks(scores, 5 / 7)
    assert m["a"].tolist() == [[1, 0], [1, 1]] and m["b"].tolist() == [1, 0, 1]
    ones = global_masks({"a": torch.ones(3), "b": torch.ones(4)}, 4 / 7)
    assert ones["a"].tolist() == [1, 1, 1] and ones["b"].tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize(("density", "kept"), [(0.01, 11), (0.1, 108), (0.333, 359), (0.9, 971)])
def test_global_masks_exact_total(density: float, kept: int) -> None:
    scores = _random_scores(1)
    masks = global_masks(scores, density)
    assert sum(int(m.sum()) for m in masks.values()) == kept
    flat_s = torch.cat([s.flatten() for s in scores.values()])
    flat_m = torch.cat([m.flatten() for m in masks.values()])
    assert flat_s[flat_m == 1].min() > flat_s[flat_m == 0].max()
    for bad in (0.0, 1.01, -1.0):
        with pytest.raises(UserError):
            global_masks(scores, bad)


def test_bernoulli_masks_fixed_seed() -> None:
    specs = {"a": (100, 100), "b": torch.zeros(50, 20)}
    masks = bernoulli_masks({"a": 0.3, "b": 0.05}, specs, _gen(0))
    assert masks["a"].dtype == torch.float32 and masks["b"].shape == (50, 20)
    assert int(masks["a"].sum()) == 2951 and int(masks["b"].sum()) == 54  # seed 0
    assert abs(masks["a"].mean().item() - 0.3) < 0.01
    g = _gen(0)  # the draws are rand < d, layer after layer
    assert torch.equal(masks["a"], (torch.rand(100, 100, generator=g) < 0.3).float())
    assert torch.equal(masks["b"], (torch.rand(50, 20, generator=g) < 0.05).float())


def test_densities_of() -> None:
    masks = {"a": torch.tensor([1.0, 0.0, 0.0, 1.0]), "b": torch.zeros(2, 5), "c": torch.ones(3)}
    assert densities_of(masks) == {"a": 0.5, "b": 0.0, "c": 1.0}


# --------------------------------------------------------------------------- SNIP, gradient


def _hand_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [-1.0, 0.5, -1.0]]))
        net[2].weight.copy_(torch.tensor([[2.0, -1.0], [1.0, 3.0]]))
    return net


HAND_X = torch.tensor([[1.0, 2.0, 3.0]])
HAND_Y = torch.tensor([1])


def test_snip_equals_hand_computed_sensitivity() -> None:
    # Forward: h = W1 x = (1 - 2 + 1.5, -1 + 1 - 3) = (0.5, -3); a = relu(h) = (0.5, 0);
    #          z = W2 a = (2 * 0.5, 1 * 0.5) = (1.0, 0.5).
    # Backward (label 1): dL/dz = softmax(z) - e_1 = (s, -s) with s = sigmoid(1.0 - 0.5);
    #   dL/dW2 = dL/dz a^T = [[0.5 s, 0], [-0.5 s, 0]];
    #   dL/da = W2^T dL/dz = (2s - s, -s - 3s) = (s, -4s); dL/dh = (s, 0) (ReLU gate);
    #   dL/dW1 = dL/dh x^T = [[s, 2s, 3s], [0, 0, 0]].
    # SNIP |g * w|: W1 -> [[s, 2s, 1.5s], [0, 0, 0]]; W2 -> [[s, 0], [0.5s, 0]].
    s = 1.0 / (1.0 + math.exp(-0.5))
    expected_w1 = torch.tensor([[s, 2 * s, 1.5 * s], [0.0, 0.0, 0.0]])
    expected_w2 = torch.tensor([[s, 0.0], [0.5 * s, 0.0]])
    net = _hand_net()
    got = snip(net, ["0.weight", "2.weight"], [(HAND_X, HAND_Y)], generator=_gen())
    torch.testing.assert_close(got["0.weight"], expected_w1, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got["2.weight"], expected_w2, rtol=1e-6, atol=1e-7)
    # The loss is summed over batches: the same batch twice doubles every score.
    twice = snip(net, ["2.weight"], [(HAND_X, HAND_Y)] * 2, generator=_gen())
    torch.testing.assert_close(twice["2.weight"], 2 * expected_w2, rtol=1e-6, atol=1e-7)


def test_gradient_equals_manual_backward_and_magnitude_equals_abs() -> None:
    net = _tiny_cnn()
    g = _gen(3)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0])),
               (torch.randn(2, 3, 8, 8, generator=g), torch.tensor([2, 1]))]
    ref = copy.deepcopy(net).train()
    sum(F.cross_entropy(ref(x), y) for x, y in batches).backward()
    params = dict(ref.named_parameters())
    got = gradient(net, TINY_NAMES, batches, generator=_gen())
    for n in TINY_NAMES:
        torch.testing.assert_close(got[n], params[n].grad.abs(), rtol=1e-5, atol=1e-7)
    mags = magnitude(net, TINY_NAMES, None, generator=_gen())
    for n, p in net.named_parameters():
        if n in TINY_NAMES:
            assert torch.equal(mags[n], p.detach().abs())


# --------------------------------------------------------------------------- GraSP


def test_class_balanced_batch_takes_first_per_class_and_stops() -> None:
    def stream():
        yield torch.arange(6.0).unsqueeze(1), torch.tensor([0, 0, 1, 0, 2, 1])
        yield torch.arange(6.0, 10.0).unsqueeze(1), torch.tensor([2, 2, 1, 0])
        raise AssertionError("read past the point where every class was full")

    x, y = class_balanced_batch(stream(), num_classes=3, per_class=2)
    # class by class, as the official GraSP_fetch_data: 3 is a third 0; 7-9 come after full
    assert x.flatten().tolist() == [0, 1, 2, 5, 4, 6]
    assert y.tolist() == [0, 0, 1, 1, 2, 2]


def test_grasp_equals_w_times_explicit_hessian_gradient() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    names = ["0.weight", "2.weight"]  # biases stay fixed: H is over the masked weights only
    g = _gen(5)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    fixed = {n: p.detach() for n, p in net.named_parameters() if n not in names}
    shapes = [net.get_parameter(n).shape for n in names]
    theta = torch.cat([net.get_parameter(n).detach().flatten() for n in names])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split([s.numel() for s in shapes])
        weights = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        logits = torch.func.functional_call(net, {**fixed, **weights}, (x,))
        return F.cross_entropy(logits / 200.0, y)

    hess = torch.autograd.functional.hessian(loss_of, theta)  # [24, 24]
    grad = torch.autograd.functional.jacobian(loss_of, theta)
    expected = (theta * (hess @ grad)).float()
    tol = dict(rtol=1e-5, atol=1e-6 * expected.abs().max().item())
    one = dict(halves=False, reinit_classifier=False)  # the formula alone, on one batch
    got = grasp(net, names, [(x, y)], generator=_gen(), **one)  # 3 classes from the last Linear
    torch.testing.assert_close(torch.cat([got[n].flatten() for n in names]), expected, **tol)
    # Split over two batches, the class-balanced sampler gathers the same six samples.
    split = [(x[:4], y[:4]), (x[4:], y[4:])]
    got2 = grasp(net, names, split, generator=_gen(), num_classes=3, per_class=2, **one)
    torch.testing.assert_close(torch.cat([got2[n].flatten() for n in names]), expected, **tol)


def test_grasp_official_two_half_batches_and_xavier_classifier() -> None:
    """Two-class toy with BatchNorm: the official GraSP orders the class-balanced batch by class,
    splits it in halves (each its own forward, so its own BN batch statistics), sums g and Hg
    over the halves, and scores a copy whose Linear weights are re-drawn Xavier-normal."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Tanh(),
                        nn.Linear(4, 2)).double()
    names = ["0.weight", "3.weight"]
    g = _gen(7)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0])
    state = copy.deepcopy(net.state_dict())
    # hand computation: class order -> halves = class 0's and class 1's first 3 samples
    order = [i for c in (0, 1) for i in [j for j in range(8) if y[j] == c][:3]]
    halves = [(x[order[:3]], y[order[:3]]), (x[order[3:]], y[order[3:]])]
    redraw = _gen(9)
    theta = {}
    for n in names:  # every nn.Linear is re-drawn (here both layers), in module order
        w = torch.empty(net.get_parameter(n).shape)
        nn.init.xavier_normal_(w, generator=redraw)
        theta[n] = w.double()
    fixed = {n: p.detach() for n, p in net.named_parameters() if n not in names}
    shapes = [theta[n].shape for n in names]
    flat0 = torch.cat([theta[n].flatten() for n in names])

    def half_loss(xh, yh):
        def loss_of(flat: torch.Tensor) -> torch.Tensor:
            parts = flat.split([s.numel() for s in shapes])
            weights = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
            params = {**fixed, **weights, **{k: v.clone() for k, v in net.named_buffers()}}
            logits = torch.func.functional_call(net, params, (xh,))  # train mode: batch stats
            return F.cross_entropy(logits / 200.0, yh)
        return loss_of

    grad = sum(torch.autograd.functional.jacobian(half_loss(*h), flat0) for h in halves)
    hg = sum(torch.autograd.functional.hessian(half_loss(*h), flat0) @ grad for h in halves)
    expected = (flat0 * hg).float()
    got = grasp(net, names, [(x, y)], generator=_gen(9), per_class=3)
    got = torch.cat([got[n].flatten() for n in names])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
    # one batch (BN statistics over all six samples) gives a different score
    whole = grasp(net, names, [(x, y)], generator=_gen(9), per_class=3, halves=False)
    assert not torch.allclose(torch.cat([whole[n].flatten() for n in names]), got, rtol=1e-3)
    # the model is untouched (weights and BN running statistics)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


# --------------------------------------------------------------------------- SynFlow


def _linearized_scores(net: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """|w * dR/dw| of the abs-valued float64 eval-mode copy, by a plain backward."""
    lin = copy.deepcopy(net).double().eval()
    for p in lin.parameters():
        p.data.abs_()
    lin(torch.ones(1, *net.input_size, dtype=torch.float64)).sum().backward()
    params = dict(lin.named_parameters())
    return {n: (params[n].detach() * params[n].grad).abs() for n in names}


def test_synflow_one_round_equals_linearized_gradient() -> None:
    net = _tiny_cnn()
    with torch.no_grad():  # non-trivial running stats: BN must act as the eval-mode affine map
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    expected = _linearized_scores(net, TINY_NAMES)
    dense = synflow(net, TINY_NAMES, None, generator=_gen(), density=1.0, rounds=1)
    for n in TINY_NAMES:
        torch.testing.assert_close(dense[n], expected[n].float(), rtol=1e-6, atol=0.0)
    sparse = synflow(net, TINY_NAMES, None, generator=_gen(), density=0.3, rounds=1)
    want = global_masks(expected, 0.3)
    for n in TINY_NAMES:
        kept = want[n] == 1
        assert torch.equal(torch.isfinite(sparse[n]), kept)
        torch.testing.assert_close(sparse[n][kept], expected[n][kept].float(), rtol=1e-6, atol=0)
        assert torch.all(sparse[n][~kept] == -math.inf)


def test_synflow_two_rounds_rescore_the_masked_network() -> None:
    net = _tiny_cnn()
    first = global_masks(_linearized_scores(net, TINY_NAMES), 0.2 ** 0.5)  # d_1 = D^(1/2)
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        for n in TINY_NAMES:
            pruned.get_parameter(n).mul_(first[n])
    second = _linearized_scores(pruned, TINY_NAMES)
    final = global_masks(second, 0.2)
    got = synflow(net, TINY_NAMES, None, generator=_gen(), density=0.2, rounds=2)
    for n in TINY_NAMES:
        assert torch.equal(torch.isfinite(got[n]), final[n] == 1)
        assert torch.all(final[n] <= first[n])  # masks are nested


def test_synflow_resnet20_is_data_free_and_exact() -> None:
    model = create_model("resnet20", num_classes=10)
    names = _weight_names(model)
    assert sum(model.get_parameter(n).numel() for n in names) == 270_896
    s1 = synflow(model, names, None, generator=_gen(), density=0.1, rounds=5)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([3, 7]))]
    s2 = synflow(model, names, batches, generator=_gen(9), density=0.1, rounds=5)
    assert all(torch.equal(s1[n], s2[n]) for n in names)
    masks = global_masks(s1, 0.1)
    assert sum(int(m.sum()) for m in masks.values()) == 27_090  # round(0.1 * 270,896)
    assert all(torch.equal(masks[n] == 1, torch.isfinite(s1[n])) for n in names)


# --------------------------------------------------------------------------- random


def test_random_scores_reproducible_and_exact_layer_counts() -> None:
    net = _tiny_cnn()  # N = 108, 288, 24
    a = get_score("random")(net, TINY_NAMES, None, generator=_gen(7))
    b = get_score("random")(net, TINY_NAMES, None, generator=_gen(7))
    c = get_score("random")(net, TINY_NAMES, None, generator=_gen(8))
    assert all(torch.equal(a[n], b[n]) for n in TINY_NAMES)
    assert not torch.equal(a["3.weight"], c["3.weight"])
    g = _gen(7)  # i.i.d. U[0, 1) in layer order
    for n in TINY_NAMES:
        assert torch.equal(a[n], torch.rand(net.get_parameter(n).shape, generator=g))
    masks = layerwise_masks(a, {"0.weight": 0.5, "3.weight": 0.1, "8.weight": 0.25})
    assert [int(m.sum()) for m in masks.values()] == [54, 29, 6]  # 54, 28.8, 6


# --------------------------------------------------------------------------- invariants


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in
                  model.named_parameters()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "rng": torch.get_rng_state(),
    }


@pytest.mark.parametrize("score", sorted(SCORES))
def test_every_score_leaves_the_model_untouched(score: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4)
    names = _weight_names(model)
    model.train()
    with torch.no_grad():  # move the BN running stats away from their init values
        model(torch.randn(4, 3, 32, 32))
    model.layer2.eval()  # mixed modes must come back as they were
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn_like(p) if i % 2 else None
    model.fc.bias.requires_grad_(False)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))]
    before = _snapshot(model)
    extra = {"rounds": 2} if score == "synflow" else {}
    out = get_score(score)(model, names, batches, generator=_gen(), density=0.2, **extra)
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for n, g in before["grads"].items():
        assert (g is None and after["grads"][n] is None) or torch.equal(after["grads"][n], g)
    assert after["flags"] == before["flags"] and after["modes"] == before["modes"]
    assert torch.equal(after["rng"], before["rng"])
    assert list(out) == names
    for n in names:
        p = model.get_parameter(n)
        assert out[n].shape == p.shape and out[n].dtype == torch.float32
        assert not out[n].requires_grad


def test_registry_and_bad_input() -> None:
    assert list_scores() == ["gradient", "grasp", "magnitude", "random", "snip", "synflow"]
    with pytest.raises(UserError, match="gradient, grasp, magnitude, random, snip, synflow"):
        get_score("snap")
    net = _tiny_cnn()
    with pytest.raises(UserError, match="nope"):
        magnitude(net, ["nope.weight"], None, generator=_gen())
    with pytest.raises(UserError, match="batches"):
        snip(net, TINY_NAMES, None, generator=_gen())
    with pytest.raises(UserError):
        synflow(net, TINY_NAMES, None, generator=_gen(), density=0.0)
    with pytest.raises(UserError):
        ratio_densities("magnitude", net, TINY_NAMES, None, density=0.5, generator=_gen())


# --------------------------------------------------------------------------- ratio densities


@pytest.mark.parametrize("kind", ["snip", "grasp"])
def test_ratio_densities_total_reinit_and_rng(kind: str) -> None:
    net = _tiny_cnn()  # N = 108, 288, 24; total 420
    g = _gen(2)
    batches = [(torch.randn(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 2, 1, 0]))]
    rng = torch.get_rng_state()
    dens = ratio_densities(kind, net, TINY_NAMES, batches, density=0.2, generator=_gen(11))
    assert torch.equal(torch.get_rng_state(), rng)
    sizes = {n: net.get_parameter(n).numel() for n in TINY_NAMES}
    assert list(dens) == TINY_NAMES
    assert sum(round(d * sizes[n]) for n, d in dens.items()) == 84  # round(0.2 * 420)
    # Official Random_Pruning: SNIP-ratio scores a copy with Xavier-normal conv/linear weights
    # (the model's own weights do not matter), GraSP-ratio scores the model as it is.
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        for n in TINY_NAMES:
            scaled.get_parameter(n).mul_(-3.0)
    again = ratio_densities(kind, scaled, TINY_NAMES, batches, density=0.2, generator=_gen(11))
    assert (again == dens) == (kind == "snip")
    if kind == "snip":
        redrawn = copy.deepcopy(net)
        draws = _gen(11)
        with torch.no_grad():
            for m in redrawn.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_normal_(m.weight, generator=draws)
        scores = snip(redrawn, TINY_NAMES, batches, generator=_gen())
        assert dens == densities_of(global_masks(scores, 0.2))
    else:
        scores = grasp(net, TINY_NAMES, batches, generator=_gen(), per_class=25,
                       reinit_classifier=False)
        assert dens == densities_of(global_masks(scores, 0.2))
