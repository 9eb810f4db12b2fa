"""Optimizers: SGD (momentum, Nesterov) and AdamW, with optional weight-decay exclusion."""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.errors import UserError

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool) -> list[dict]:
    """One group with weight decay; with ``exclude_norm_bias`` a second group (wd 0) holds
    biases and normalization parameters (Goyal et al. 2017's "no bias decay")."""
    if not exclude_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            skip = isinstance(module, _NORM_TYPES) or name == "bias" or p.ndim <= 1
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
    exclude_norm_bias: bool = False,
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, exclude_norm_bias)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum,
                               nesterov=nesterov and momentum > 0, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
    raise UserError(f"unknown optimizer {name!r}; choose from ('sgd', 'adamw')")
