"""Layer-wise density budgets (DESIGN.md §3.1): hand-computed densities and exact totals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.errors import UserError
from sparsetrain.sparsity.allocate import (
    allocate,
    allocate_with_epsilon,
    counts,
    global_density,
    list_budgets,
    solve_scaled,
)

KINDS = ["er", "erk", "erk_plus", "uniform", "uniform_plus"]


def total_error(densities: dict[str, float], shapes: dict, density: float) -> float:
    """|Σ d_l N_l − D Σ N_l| / Σ N_l."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    kept = sum(densities[n] * sizes[n] for n in shapes)
    return abs(kept - density * sum(sizes.values())) / sum(sizes.values())


def resnet20_shapes() -> dict[str, list[int]]:
    """CIFAR ResNet-20 (width 16), 1x1 conv shortcuts on the two down-sampling blocks."""
    shapes: dict[str, list[int]] = {"conv1": [16, 3, 3, 3]}
    for stage, (c_out, c_in) in enumerate([(16, 16), (32, 16), (64, 32)], start=1):
        for block in range(3):
            first_in = c_in if block == 0 else c_out
            shapes[f"layer{stage}.{block}.conv1"] = [c_out, first_in, 3, 3]
            shapes[f"layer{stage}.{block}.conv2"] = [c_out, c_out, 3, 3]
            if block == 0 and c_in != c_out:
                shapes[f"layer{stage}.{block}.shortcut.0"] = [c_out, c_in, 1, 1]
    shapes["fc"] = [10, 64]
    return shapes


def test_registry_lists_every_kind() -> None:
    assert list_budgets() == KINDS


def test_resnet20_erk_reference_values() -> None:
    shapes = resnet20_shapes()
    assert sum(math.prod(s) for s in shapes.values()) == 270_896
    assert next(iter(shapes)) == "conv1" and list(shapes)[-1] == "fc"
    densities, eps = allocate_with_epsilon("erk", shapes, 0.1)
    assert list(densities) == list(shapes)
    # Σ raw_l N_l = Σ sum(shape) = 1527 over the uncapped layers; the stage-2 shortcut (512
    # weights) and fc (640) cap, so ε = (27,089.6 − 512 − 640) / 1527 = 16.986...
    assert eps == pytest.approx(25_937.6 / 1527, rel=1e-12)
    assert eps == pytest.approx(16.99, abs=5e-3)
    assert densities["conv1"] == pytest.approx(0.983, abs=1e-3)
    for block in range(3):
        assert densities[f"layer1.{block}.conv1"] == pytest.approx(0.280, abs=1e-3)
        assert densities[f"layer1.{block}.conv2"] == pytest.approx(0.280, abs=1e-3)
    for name in ["layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2", "layer3.2.conv2"]:
        assert densities[name] == pytest.approx(0.062, abs=1e-3)
    assert densities["layer2.0.shortcut.0"] == 1.0
    assert densities["fc"] == 1.0
    assert densities["layer3.0.shortcut.0"] == pytest.approx(eps * 98 / 2048)
    assert sum(d == 1.0 for d in densities.values()) == 2
    assert total_error(densities, shapes, 0.1) < 1e-12


def test_uniform_is_exactly_d() -> None:
    shapes = resnet20_shapes()
    assert set(allocate("uniform", shapes, 0.3).values()) == {0.3}


UPLUS_SHAPES = {"conv1": [16, 3, 3, 3], "conv2": [32, 16, 3, 3], "conv3": [64, 32, 3, 3],
                "fc": [10, 64]}  # N = 432, 4608, 18432, 640; Σ N = 24,112


def test_uniform_plus_below_twenty_percent() -> None:
    d = allocate("uniform_plus", UPLUS_SHAPES, 0.1)
    # budget 2411.2 − 432 (dense conv1) − 0.2·640 (fc) = 1851.2 shared by 4608 + 18432 weights
    assert d == {"conv1": 1.0, "conv2": pytest.approx(1851.2 / 23040),
                 "conv3": pytest.approx(1851.2 / 23040), "fc": 0.2}
    assert d["conv2"] == d["conv3"]
    assert total_error(d, UPLUS_SHAPES, 0.1) < 1e-12


def test_uniform_plus_above_twenty_percent_classifier_shares() -> None:
    d = allocate("uniform_plus", UPLUS_SHAPES, 0.5)
    # 12,056 − 432 = 11,624 shared by 4608 + 18432 + 640 = 23,680 weights
    shared = pytest.approx(11_624 / 23_680)
    assert d == {"conv1": 1.0, "conv2": shared, "conv3": shared, "fc": shared}


def test_uniform_plus_infeasible_names_numbers() -> None:
    shapes = {"stem": [64, 3, 7, 7], "fc": [10, 64]}  # 9408 + 0.2·640 = 9536 > 1004.8
    with pytest.raises(UserError, match=r"uniform_plus.*stem=1, fc=0.2.*9,536.0"):
        allocate("uniform_plus", shapes, 0.1)


def test_er_two_layer_toy_by_hand() -> None:
    shapes = {"conv": [4, 2, 3, 3], "fc": [10, 4]}
    # raw: conv (2+4)/(2·4) = 0.75 with N = 72; fc (4+10)/(4·10) = 0.35 with N = 40; Σ N = 112.
    # D = 0.5: ε = 56 / (0.75·72 + 0.35·40) = 56/68 = 14/17;
    # conv 0.75·14/17 = 21/34, fc 0.35·14/17 = 49/170 (21/34·72 + 49/170·40 = 56).
    d, eps = allocate_with_epsilon("er", shapes, 0.5)
    assert eps == pytest.approx(14 / 17, rel=1e-12)
    assert d == {"conv": pytest.approx(21 / 34, rel=1e-12),
                 "fc": pytest.approx(49 / 170, rel=1e-12)}
    # the kernel is ignored by er but not by erk
    assert allocate("erk", shapes, 0.5)["conv"] != pytest.approx(d["conv"])


def test_erk_caps_over_two_rounds() -> None:
    # raw·N = Σ shape: a 2·2=4 raw 1; b 8+8=16, raw 1/4, N 64; c 200, raw 1/50, N 10,000.
    # Σ N = 10,068 and the budget D Σ N = 876.
    # Round 1: ε = 876/220 = 3.98 → a caps (3.98 > 1), b does not (3.98/4 < 1).
    # Round 2: ε = (876 − 4)/216 = 4.037 → b caps (4.037/4 > 1).
    # Round 3: ε = (876 − 68)/200 = 4.04 → c = 4.04/50 = 0.0808 < 1, done.
    shapes = {"a": [2, 2], "b": [8, 8], "c": [100, 100]}
    d, eps = allocate_with_epsilon("erk", shapes, 876 / 10_068)
    assert eps == pytest.approx(4.04, rel=1e-12)
    assert d == {"a": 1.0, "b": 1.0, "c": pytest.approx(0.0808, rel=1e-12)}


def test_solve_scaled_fixed_and_epsilon() -> None:
    d, eps = solve_scaled({"a": 1.0, "b": 2.0}, {"a": 10, "b": 10, "c": 20}, 10.0, {"c": 0.25})
    # 10 − 0.25·20 = 5 = ε(1·10 + 2·10) → ε = 1/6
    assert eps == pytest.approx(1 / 6)
    assert d == {"a": pytest.approx(1 / 6), "b": pytest.approx(1 / 3), "c": 0.25}


def test_erk_plus_classifier_dense_and_at_given_density() -> None:
    shapes = resnet20_shapes()
    small = {**shapes, "fc": [100, 64]}  # fc would not cap under plain erk at D = 0.05
    assert allocate("erk", small, 0.05)["fc"] < 1.0
    d = allocate("erk_plus", small, 0.05)
    assert d["fc"] == 1.0 and total_error(d, small, 0.05) < 1e-12
    assert d == allocate("erk", small, 0.05, dense={"fc"})
    half = allocate("erk_plus", small, 0.05, classifier_density=0.5)
    assert half["fc"] == 0.5 and total_error(half, small, 0.05) < 1e-12


def test_dense_option_resolves_the_rest() -> None:
    shapes = {"conv1": [16, 3, 3, 3], "conv2": [32, 16, 3, 3], "fc": [10, 32]}  # 432, 4608, 320
    d = allocate("uniform", shapes, 0.2, dense={"conv1", "fc"})
    # 0.2 · 5360 = 1072; 1072 − 432 − 320 = 320 of 4608
    assert d == {"conv1": 1.0, "conv2": pytest.approx(320 / 4608), "fc": 1.0}
    for kind in KINDS:
        got = allocate(kind, shapes, 0.2, dense=["conv1"])
        assert got["conv1"] == 1.0 and total_error(got, shapes, 0.2) < 1e-12
    with pytest.raises(UserError, match="out of reach"):
        allocate("erk", shapes, 0.05, dense="conv2")  # 4608 > 0.05 · 5360


def test_first_and_classifier_override() -> None:
    shapes = {"fc": [10, 32], "conv2": [32, 16, 3, 3], "conv1": [16, 3, 3, 3]}
    d = allocate("uniform_plus", shapes, 0.1, first="conv1", classifier="fc")
    assert d["conv1"] == 1.0 and d["fc"] == 0.2
    assert d["conv2"] == pytest.approx((536 - 432 - 64) / 4608)
    assert allocate("erk_plus", shapes, 0.1, classifier="conv1")["conv1"] == 1.0


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, math.nan, "0.1", True])
def test_density_out_of_range(density: object) -> None:
    with pytest.raises(UserError, match="density"):
        allocate("erk", {"a": [4, 4]}, density)  # type: ignore[arg-type]


def test_user_errors_name_the_problem() -> None:
    with pytest.raises(UserError, match=r"'erx'.*erk_plus.*uniform_plus"):
        allocate("erx", {"a": [4, 4]}, 0.5)
    with pytest.raises(UserError, match="classifer_density"):
        allocate("erk_plus", {"a": [4, 4]}, 0.5, classifer_density=0.5)
    with pytest.raises(UserError, match="classifier_density"):
        allocate("erk_plus", {"a": [4, 4]}, 0.5, classifier_density=2.0)
    with pytest.raises(UserError, match="'nope'"):
        allocate("erk", {"a": [4, 4]}, 0.5, dense={"nope"})
    with pytest.raises(UserError, match="'b'"):
        allocate("erk", {"a": [4, 4], "b": [4]}, 0.5)
    with pytest.raises(UserError, match="no layers"):
        allocate("erk", {}, 0.5)


def test_counts_and_global_density() -> None:
    densities = {"a": 0.5, "b": 0.25}
    shapes = {"a": [4, 4], "b": [10, 4]}
    assert counts(densities, shapes) == {"a": 8, "b": 10}
    assert global_density(densities, shapes) == pytest.approx(18 / 56)
    d = allocate("erk", resnet20_shapes(), 0.1)
    assert global_density(d, resnet20_shapes()) == pytest.approx(0.1, rel=1e-12)
    k = counts(d, resnet20_shapes())
    assert abs(sum(k.values()) - 27_089.6) <= len(k) / 2


# ----------------------------------------------------------------------------- properties

conv = st.tuples(st.integers(1, 256), st.integers(1, 256), st.sampled_from([1, 3, 5, 7])).map(
    lambda t: [t[0], t[1], t[2], t[2]]
)
linear = st.lists(st.integers(1, 256), min_size=2, max_size=2)
networks = st.lists(st.one_of(conv, linear), min_size=1, max_size=12).map(
    lambda shapes: {f"l{i}": s for i, s in enumerate(shapes)}
)
targets = st.floats(0.01, 1.0, exclude_min=True)


def fixed_for(kind: str, names: list[str], density: float) -> dict[str, float]:
    """Layers each kind pins, restated here independently of the implementation."""
    if kind == "uniform_plus":
        fixed = {names[0]: 1.0}
        if density < 0.2 and len(names) > 1:
            fixed[names[-1]] = 0.2
        return fixed
    return {names[-1]: 1.0} if kind == "erk_plus" else {}


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(shapes=networks, density=targets)
def test_every_kind_hits_the_target(kind: str, shapes: dict, density: float) -> None:
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    fixed = fixed_for(kind, list(shapes), density)
    kept_fixed = sum(d * sizes[n] for n, d in fixed.items())
    most = kept_fixed + sum(v for n, v in sizes.items() if n not in fixed)
    # distance of the target outside the reachable interval [kept_fixed, most]
    outside = max(kept_fixed - density * total, density * total - most) / total
    if outside > 1e-6:
        with pytest.raises(UserError, match="out of reach"):
            allocate(kind, shapes, density)
        return
    try:
        d, eps = allocate_with_epsilon(kind, shapes, density)
    except UserError:
        assert outside > -1e-6, "raised on a reachable target"
        return
    assert list(d) == list(shapes)
    assert all(0.0 <= v <= 1.0 for v in d.values())
    assert total_error(d, shapes, density) < 1e-6
    for n, v in fixed.items():
        assert d[n] == v
    if kind in ("er", "erk", "erk_plus"):
        for n, s in shapes.items():
            if n in fixed:
                continue
            raw = (s[0] + s[1]) / (s[0] * s[1]) if kind == "er" else sum(s) / math.prod(s)
            if eps * raw >= 1.0:
                assert d[n] == 1.0  # capped layers are exactly dense
            else:
                assert d[n] == pytest.approx(eps * raw, rel=1e-12)
