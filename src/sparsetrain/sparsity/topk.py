"""Exact top-k masks from saliency scores (higher score = keep).

Masks are float tensors (1.0 keep, 0.0 prune) of the score's shape. Selection is exact: a mask
at density ``d`` over ``N`` weights has exactly ``round(d * N)`` ones. Ties are broken
deterministically by position: among equal scores the lower flat index is kept (a stable
descending sort), and for :func:`global_masks` the earlier layer (mapping order) comes first.
NaN scores rank below everything, ``-inf`` included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from sparsetrain.errors import UserError

__all__ = [
    "bernoulli_masks",
    "densities_of",
    "global_masks",
    "layerwise_masks",
    "topk_mask",
]


def _check_density(value: float, what: str, *, allow_zero: bool) -> float:
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    low_ok = ok_type and (value >= 0.0 if allow_zero else value > 0.0)
    if not (ok_type and math.isfinite(value) and low_ok and value <= 1.0):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise UserError(f"{what} must be a number in {interval}, got {value!r}")
    return float(value)


def _count(density: float, n: int) -> int:
    """Number of kept weights: round(d * n), clamped to [0, n]."""
    return min(max(round(density * n), 0), n)


def _ranked_indices(flat: Tensor) -> Tensor:
    """Flat indices sorted by descending score; ties keep index order; NaN ranks last."""
    if flat.is_floating_point():
        # NaN would sort as the largest value; push it below -inf instead.
        nan = torch.isnan(flat)
        if bool(nan.any()):
            order = torch.sort(flat.masked_fill(nan, -math.inf), descending=True, stable=True)[1]
            return torch.cat([order[~nan[order]], order[nan[order]]])
    return torch.sort(flat, descending=True, stable=True)[1]


def topk_mask(score: Tensor, k: int) -> Tensor:
    """Float mask of ``score``'s shape with ones at the ``k`` highest scores (stable ties)."""
    n = score.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    flat = score.detach().reshape(-1)
    mask = torch.zeros(n, dtype=torch.float32, device=score.device)
    mask[_ranked_indices(flat)[:k]] = 1.0
    return mask.view(score.shape)


def layerwise_masks(
    scores: Mapping[str, Tensor], densities: Mapping[str, float]
) -> dict[str, Tensor]:
    """Per-layer exact top-k: layer ``l`` keeps ``round(d_l * N_l)`` weights (d_l in [0, 1])."""
    masks: dict[str, Tensor] = {}
    for name, score in scores.items():
        if name not in densities:
            raise UserError(f"no density given for layer {name!r}")
        d = _check_density(densities[name], f"density of {name!r}", allow_zero=True)
        masks[name] = topk_mask(score, _count(d, score.numel()))
    return masks


def global_masks(scores: Mapping[str, Tensor], density: float) -> dict[str, Tensor]:
    """One threshold over all layers: exactly ``round(D * sum N_l)`` ones in total.

    Ties are broken by (layer order in ``scores``, flat index), so the result is deterministic.
    """
    d = _check_density(density, "global density", allow_zero=False)
    if not scores:
        return {}
    names = list(scores)
    first = scores[names[0]]
    dtype = first.dtype
    for s in scores.values():
        dtype = torch.promote_types(dtype, s.dtype)
    # Promotion is exact for floats (fp16/bf16/fp32 -> wider), so the ranking is unchanged.
    flat = torch.cat([scores[n].detach().reshape(-1).to(first.device, dtype) for n in names])
    keep = torch.zeros(flat.numel(), dtype=torch.float32, device=first.device)
    keep[_ranked_indices(flat)[: _count(d, flat.numel())]] = 1.0
    masks: dict[str, Tensor] = {}
    for name, part in zip(names, keep.split([scores[n].numel() for n in names]), strict=True):
        masks[name] = part.view(scores[name].shape).to(scores[name].device)
    return masks


def bernoulli_masks(
    densities: Mapping[str, float],
    shapes_or_tensors: Mapping[str, Tensor | torch.Size | tuple[int, ...]],
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """I.i.d. masks ``rand < d_l`` drawn from ``generator`` in the order of ``shapes_or_tensors``.

    This is how Liu et al. (ICLR 2022, "The Unreasonable Effectiveness of Random Pruning") draw
    random masks; the kept count is only ``d_l * N_l`` in expectation. Draws happen on the
    generator's device; a mask lands on its tensor's device (the generator's for plain shapes).
    """
    masks: dict[str, Tensor] = {}
    for name, spec in shapes_or_tensors.items():
        if name not in densities:
            raise UserError(f"no density given for layer {name!r}")
        d = _check_density(densities[name], f"density of {name!r}", allow_zero=True)
        shape = spec.shape if isinstance(spec, Tensor) else torch.Size(spec)
        device = spec.device if isinstance(spec, Tensor) else generator.device
        draw = torch.rand(shape, generator=generator, device=generator.device)
        masks[name] = (draw < d).to(device=device, dtype=torch.float32)
    return masks


def densities_of(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Fraction of nonzero entries of each mask."""
    return {
        name: (int(torch.count_nonzero(m)) / m.numel() if m.numel() else 0.0)
        for name, m in masks.items()
    }
