"""N:M fine-grained structured sparsity (2:4 for NVIDIA's sparse tensor cores) for every
unstructured method (sparsity.structure: "2:4").

A weight ``[out, in, *k]`` is cut into groups of M consecutive **input** channels at every
``(out, *k)`` position: for a linear layer the rows of ``[out, in]``, the layout
``torch.sparse.to_sparse_semi_structured`` accelerates; for a convolution the input-channel
dimension, as NVIDIA's ASP prunes convolutions. "N:M" = at most N active weights per group.

How it combines with budgets, schedules and drop/grow:

- layers whose input dimension is not a multiple of M (a stem on RGB input) cannot carry the
  pattern: they stay dense and outside the budget, as ASP skips them;
- a layer budget (uniform, ERK, ...) spreads the density over the N:M layers with every layer
  capped at N/M: it is computed in units of N/M, ``d_l = N/M · budget(d · M/N)``. At density
  exactly N/M every layer is exactly N:M, whatever the budget; below it ERK's shape rule acts;
- with a cap c, selection ranks only the c highest scores of each group, then takes the usual
  (global or per-layer) top-k; this is the exact best mask under "at most c per group";
- gradual pruning from dense (GMP, GraNet, lottery rounds) caps groups at
  ``c_t = clamp(ceil(d_t · M), N, M)`` for the scheduled density d_t: 4:4 → 3:4 → 2:4 as the
  density falls, so every mask on the way meets its cap and the final one is N:M;
- drop/grow: dropping never breaks the pattern; a group takes at most ``c − active`` grown
  weights (the best-scored of its inactive ones).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsetrain.errors import UserError
from sparsetrain.sparsity.allocate import allocate

__all__ = ["NM", "cap_scores", "group_counts", "grow_scores", "parse_structure"]

NEG_INF = float("-inf")


@dataclass(frozen=True)
class NM:
    """At most ``n`` active weights in every group of ``m`` consecutive input channels."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def ratio(self) -> float:
        return self.n / self.m

    def eligible(self, shape: Sequence[int]) -> bool:
        """Whether a weight of ``shape`` can carry the pattern (input dim a multiple of M)."""
        return len(shape) >= 2 and shape[1] % self.m == 0

    def cap_at(self, density: float) -> int:
        """The group cap of a mask at ``density``: the smallest c in [N, M] with c/M ≥ d."""
        return min(self.m, max(self.n, math.ceil(density * self.m - 1e-9)))

    def densities(self, kind: str, shapes: Mapping[str, Sequence[int]], density: float,
                  cap: int | None = None, **options: float) -> dict[str, float]:
        """Budget ``kind`` over N:M layers with every layer at most ``cap``/M (default N/M)."""
        ratio = (self.n if cap is None else cap) / self.m
        if density > ratio + 1e-12:
            raise UserError(f"density {density:g} is above what {cap or self.n}:{self.m} "
                            f"allows ({ratio:g}); lower sparsity.density or raise N")
        scaled = allocate(kind, shapes, min(1.0, density / ratio), **options)
        return {name: d * ratio for name, d in scaled.items()}


def parse_structure(text: str | None) -> NM | None:
    """``"unstructured"`` (or None) -> None; ``"N:M"`` with 1 ≤ N < M ≤ 32 -> :class:`NM`
    (M < 60 keeps YAML's base-60 reading of an unquoted ``2:4`` reversible, see config.py)."""
    if text is None or text == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", str(text).strip())
    if match is None:
        raise UserError(f"sparsity.structure must be 'unstructured' or 'N:M' (e.g. '2:4'), "
                        f"got {text!r}")
    n, m = int(match[1]), int(match[2])
    if not 1 <= n < m <= 32:
        raise UserError(f"sparsity.structure {text!r}: need 1 <= N < M <= 32")
    return NM(n, m)


def _groups(t: Tensor, m: int) -> Tensor:
    """``[G, m]``: groups of ``m`` consecutive input channels (a copy for convolutions)."""
    if t.dim() > 2:
        t = t.movedim(1, -1)  # [out, *k, in]
    return t.reshape(-1, m)


def _ungroup(g: Tensor, shape: torch.Size) -> Tensor:
    if len(shape) > 2:
        return g.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1).contiguous()
    return g.reshape(shape)


def _rank_in_group(g: Tensor) -> Tensor:
    """Rank of every entry within its group by descending value (ties: lower index first)."""
    order = torch.sort(g, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(g.shape[1], device=g.device).expand_as(order))
    return ranks


def cap_scores(score: Tensor, cap: int, m: int) -> Tensor:
    """``score`` (fp32) with all but each group's ``cap`` highest entries at -inf."""
    s = score.float().nan_to_num(nan=NEG_INF)
    if cap >= m:
        return s
    g = _groups(s, m)
    return _ungroup(torch.where(_rank_in_group(g) < cap, g, NEG_INF), score.shape)


def grow_scores(score: Tensor, mask: Tensor, cap: int, m: int) -> Tensor:
    """Grow candidates under the cap: the inactive entries of ``mask``, at most
    ``cap − active`` per group (the best-scored ones); every other entry at -inf."""
    g = _groups(score.float().nan_to_num(nan=NEG_INF), m)
    active = _groups(mask, m).bool()
    room = (cap - active.sum(1)).clamp(min=0)
    candidates = torch.where(active, NEG_INF, g)
    keep = (_rank_in_group(candidates) < room[:, None]) & ~active
    return _ungroup(torch.where(keep, g, NEG_INF), score.shape)


def group_counts(mask: Tensor, m: int) -> Tensor:
    """Active weights per group, ``[G]``."""
    return _groups(mask, m).sum(1)
