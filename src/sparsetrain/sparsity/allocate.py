"""Layer-wise density budgets: what fraction of each masked layer to keep (DESIGN.md §3.1).

Entry point::

    allocate(kind, shapes, density, *, dense=(), first=None, classifier=None, **options)
        -> {param_name: density}

``shapes`` maps every masked weight to its shape in network order (the first entry is the first
conv and the last the classifier unless ``first`` / ``classifier`` name others). The result keeps
that order and satisfies Σ d_l N_l = D Σ N_l up to float rounding; layers named in ``dense`` are
kept at 1.0 and the others re-solved so the total still holds. Every registered budget shares one
signature::

    budget(layers: Layers, density: float, **options) -> Plan

A :class:`Plan` pins some layers to fixed densities and gives every other layer a raw score; the
free layers get d_l = min(1, ε · raw_l) with one ε solved by :func:`solve_scaled`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import NamedTuple

from sparsetrain.errors import UserError

__all__ = [
    "Allocation", "Layers", "Plan", "allocate", "allocate_with_epsilon", "counts",
    "global_density", "list_budgets", "register_budget", "solve_scaled",
]

# Gale et al. (2019) keep the classifier at 20% whenever the global target is sparser than that.
UPLUS_CLASSIFIER_DENSITY = 0.2
# Slack, relative to Σ N_l, that absorbs float rounding when judging whether a target is reachable.
_REL_TOL = 1e-9


@dataclass(frozen=True)
class Layers:
    """The masked weights a budget sees: shapes in network order and the roles of two of them."""

    shapes: dict[str, tuple[int, ...]]
    first: str
    classifier: str
    dense: frozenset[str]

    @property
    def sizes(self) -> dict[str, int]:
        return {n: math.prod(s) for n, s in self.shapes.items()}


class Plan(NamedTuple):
    """Layers pinned to a density, and raw scores (scaled by one ε) for all the others."""

    raw: dict[str, float]
    fixed: dict[str, float]


class Allocation(NamedTuple):
    """Densities in network order and the ε that scaled the raw scores.

    ε is ``inf`` when every free layer ended dense and ``nan`` when no layer was free.
    """

    densities: dict[str, float]
    epsilon: float


Budget = Callable[..., Plan]
_BUDGETS: dict[str, Budget] = {}


def register_budget(name: str) -> Callable[[Budget], Budget]:
    """Decorator: make a budget available to ``allocate(name, ...)``."""

    def deco(fn: Budget) -> Budget:
        if name in _BUDGETS:
            raise ValueError(f"budget {name!r} registered twice")
        _BUDGETS[name] = fn
        return fn

    return deco


def list_budgets() -> list[str]:
    return sorted(_BUDGETS)


@register_budget("uniform")
def uniform(layers: Layers, density: float) -> Plan:
    """Every layer at D (Zhu & Gupta 2017, "To prune, or not to prune")."""
    if layers.dense:  # forced-dense layers take weights the others must give back
        return Plan(raw=dict.fromkeys(layers.shapes, 1.0), fixed={})
    return Plan(raw={}, fixed=dict.fromkeys(layers.shapes, density))


@register_budget("uniform_plus")
def uniform_plus(layers: Layers, density: float) -> Plan:
    """First conv dense, classifier ≥ 20%, rest uniform (Gale et al. 2019, State of Sparsity)."""
    fixed = {layers.first: 1.0}
    if density < UPLUS_CLASSIFIER_DENSITY and layers.classifier != layers.first:
        fixed[layers.classifier] = UPLUS_CLASSIFIER_DENSITY
    return Plan(raw=dict.fromkeys(layers.shapes, 1.0), fixed=fixed)


@register_budget("er")
def er(layers: Layers, density: float) -> Plan:
    """Erdős–Rényi, raw_l = (C_in + C_out) / (C_in C_out) (Mocanu et al. 2018, SET)."""
    return Plan(raw={n: (s[0] + s[1]) / (s[0] * s[1]) for n, s in layers.shapes.items()}, fixed={})


@register_budget("erk")
def erk(layers: Layers, density: float) -> Plan:
    """Erdős–Rényi-Kernel, raw_l = Σ shape / Π shape (Evci et al. 2020, RigL)."""
    return Plan(raw={n: sum(s) / math.prod(s) for n, s in layers.shapes.items()}, fixed={})


@register_budget("erk_plus")
def erk_plus(layers: Layers, density: float, *, classifier_density: float = 1.0) -> Plan:
    """ERK with the classifier at a given density (Liu et al. 2022, Unreasonable Effectiveness)."""
    _check_fraction("classifier_density", classifier_density)
    return erk(layers, density)._replace(fixed={layers.classifier: float(classifier_density)})


def solve_scaled(
    raw: Mapping[str, float], sizes: Mapping[str, int], budget: float,
    fixed: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], float]:
    """Densities with Σ d_l N_l = ``budget``: ``fixed`` as given, the rest min(1, ε · raw_l).

    A layer whose ε · raw_l would exceed 1 is made dense and ε solved again over the others.
    Capping raises ε (the capped layer's N_l / (raw_l N_l) = 1 / raw_l is below the current ε),
    so capped layers stay capped and the loop ends within len(sizes) rounds. Returns the
    densities in ``sizes`` order and ε (see :class:`Allocation`). Unreachable budgets raise
    :class:`UserError` with the numbers.
    """
    fixed = dict(fixed or {})
    free = [n for n in sizes if n not in fixed]
    if any(not raw[n] > 0 for n in free):
        raise ValueError("raw scores of free layers must be positive")
    total = sum(sizes.values())
    kept_fixed = sum(d * sizes[n] for n, d in fixed.items())
    room = sum(sizes[n] for n in free)
    tol = _REL_TOL * total
    if not kept_fixed - tol <= budget <= kept_fixed + room + tol:
        pinned = ", ".join(f"{n}={d:g}" for n, d in fixed.items()) or "none"
        raise UserError(
            f"density {budget / total:.6g} ({budget:,.1f} of {total:,} weights) is out of reach: "
            f"layers at fixed densities ({pinned}) keep {kept_fixed:,.1f} and the other layers "
            f"can hold at most {room:,} more"
        )
    capped: set[str] = set()
    while True:
        active = [n for n in free if n not in capped]
        if not active:
            eps = math.inf if free else math.nan
            break
        left = budget - kept_fixed - sum(sizes[n] for n in capped)
        eps = max(left, 0.0) / sum(raw[n] * sizes[n] for n in active)
        over = {n for n in active if eps * raw[n] > 1.0}
        if not over:
            break
        capped |= over
    out = {}
    for n in sizes:
        if n in fixed:
            out[n] = fixed[n]
        else:
            out[n] = 1.0 if n in capped else min(1.0, eps * raw[n])
    return out, eps


def allocate_with_epsilon(
    kind: str, shapes: Mapping[str, Sequence[int]], density: float, *,
    dense: Collection[str] = (), first: str | None = None, classifier: str | None = None,
    **options: float,
) -> Allocation:
    """:func:`allocate`, also returning the solved ε."""
    if kind not in _BUDGETS:
        raise UserError(f"unknown budget {kind!r}; choose from {list_budgets()}")
    fn = _BUDGETS[kind]
    _check_fraction("density", density)
    accepted = list(inspect.signature(fn).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"budget {kind!r} has no option(s) {unknown}; its own options: {accepted}")
    layers = _layers(shapes, dense, first, classifier)
    plan = fn(layers, float(density), **options)
    fixed = {**plan.fixed, **dict.fromkeys(layers.dense, 1.0)}
    sizes = layers.sizes
    budget = float(density) * sum(sizes.values())
    try:
        densities, eps = solve_scaled(plan.raw, sizes, budget, fixed)
    except UserError as err:
        raise UserError(f"budget {kind!r}: {err}") from None
    return Allocation(densities, eps)


def allocate(
    kind: str, shapes: Mapping[str, Sequence[int]], density: float, *,
    dense: Collection[str] = (), first: str | None = None, classifier: str | None = None,
    **options: float,
) -> dict[str, float]:
    """Per-layer densities of budget ``kind`` with global density ``density`` (DESIGN.md §3.1)."""
    return allocate_with_epsilon(
        kind, shapes, density, dense=dense, first=first, classifier=classifier, **options
    ).densities


def counts(densities: Mapping[str, float], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Weights kept per layer, k_l = round(d_l · N_l)."""
    sizes = _sizes(densities, shapes)
    return {n: round(d * s) for (n, d), s in zip(densities.items(), sizes, strict=True)}


def global_density(densities: Mapping[str, float], shapes: Mapping[str, Sequence[int]]) -> float:
    """Σ d_l N_l / Σ N_l over the layers in ``densities``."""
    sizes = _sizes(densities, shapes)
    return sum(d * s for d, s in zip(densities.values(), sizes, strict=True)) / sum(sizes)


def _sizes(densities: Mapping[str, float], shapes: Mapping[str, Sequence[int]]) -> list[int]:
    missing = [n for n in densities if n not in shapes]
    if missing:
        raise UserError(f"no shape given for layer(s) {missing}")
    return [math.prod(shapes[n]) for n in densities]


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1:
        raise UserError(f"{name} must be a number in (0, 1], got {value!r}")


def _layers(
    shapes: Mapping[str, Sequence[int]], dense: Collection[str], first: str | None,
    classifier: str | None,
) -> Layers:
    if not shapes:
        raise UserError("no layers to allocate a density budget over")
    clean = {}
    for name, shape in shapes.items():
        dims = tuple(shape)
        if len(dims) < 2 or any(int(d) != d or d < 1 for d in dims):
            raise UserError(f"layer {name!r}: a weight shape is >= 2 positive sizes, not {shape}")
        clean[name] = tuple(int(d) for d in dims)
    dense = {dense} if isinstance(dense, str) else set(dense)
    names = list(clean)
    first = names[0] if first is None else first
    classifier = names[-1] if classifier is None else classifier
    unknown = sorted(dense - set(names) | {first, classifier} - set(names))
    if unknown:
        raise UserError(f"unknown layer name(s) {unknown}; layers: {names}")
    return Layers(clean, first, classifier, frozenset(dense))
