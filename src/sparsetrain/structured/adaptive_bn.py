"""Adaptive batch normalization (EagleEye, Li et al. ECCV 2020, Sec. 3.2).

A pruned sub-net inherits BN statistics measured on the dense net, which no longer match its
activations; scoring it with them ("vanilla evaluation") ranks candidates poorly. Adaptive BN
re-estimates every BN layer's running mean/variance on a few training batches before scoring:
statistics are reset, momentum is set to ``None`` (cumulative average, so the result does not
depend on the stale dense statistics nor on the batch order's recency), and the batches are
forwarded in train mode without gradients (DESIGN.md §3.6 step 4).

Only the BN layers are switched to train mode; every other module (dropout in particular) stays
in eval mode, so the batches' activations are exactly those of inference and nothing but the BN
running statistics changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sparsetrain.errors import UserError

__all__ = ["adaptive_bn", "batch_norms"]

_BN = nn.modules.batchnorm._BatchNorm


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def _inputs(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, tuple | list) else batch


@torch.no_grad()
def adaptive_bn(model: nn.Module, batches: Iterable[Any], n_batches: int = 50) -> int:
    """Re-estimate the BN running statistics of ``model`` in place from the first
    ``n_batches`` of ``batches`` (each an input tensor or an ``(inputs, labels)`` pair);
    returns the number of batches used. Modes and momenta are restored afterwards.
    Raises :class:`UserError` when ``batches`` is empty (the statistics would stay reset)."""
    bns = batch_norms(model)
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    used = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for batch in batches:
            if used >= n_batches:
                break
            model(_inputs(batch))
            used += 1
    finally:
        for bn, mom in zip(bns, momenta, strict=True):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    if used == 0:
        raise UserError("adaptive BN got no batches to re-estimate the statistics from")
    return used
