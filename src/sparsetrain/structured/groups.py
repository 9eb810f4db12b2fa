"""Channel groups and physical channel removal, on Torch-Pruning's dependency graph.

EagleEye (Li et al., "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning",
ECCV 2020) prunes *channel groups*: the output channels of a conv, its BN, and the input
channels of every consumer must go together, and a residual addition ties all the convs that
feed it into one group (DESIGN.md §3.6 step 1). We never hand-write that surgery: Torch-Pruning's
``DependencyGraph`` traces the model and enumerates the groups (``get_all_groups``), and its
pruning functions remove the channels.

* A :class:`ChannelGroup` is named after its root layer (the first conv/linear of the group in
  the traced graph, e.g. ``layer3.0.shortcut.0`` for ResNet stage 3); the name is the same for
  every model built from the same registered architecture, so strategies and saved structures
  are keyed by it.
* The classifier's output features are never pruned (it is an ignored layer), but its input
  features belong to the last group.
* Importance of a channel (DESIGN.md §3.6 step 3) is computed on the unpruned weights, for all
  groups before any channel is removed, so the result does not depend on the order groups are
  pruned in: ``l1``/``l2`` = the sum, over every conv/linear of the group whose *output*
  channels the group removes, of the L1/L2 norm of that channel's filter (EagleEye's filter-norm
  criterion; a residual group sums the norms of all convs tied by the addition). Input-channel
  slices and BN parameters do not contribute. ``random`` = i.i.d. uniform scores from the given
  generator. Also, as Torch-Pruning offers them (our own implementations, same sums over the
  group's output-channel layers):
  ``bn_scale`` = |γ| of the group's BatchNorms (Network Slimming, Liu et al. 2017);
  ``taylor`` = Σ |w · ∂L/∂w| over each filter (Molchanov et al. 2019), from the gradients in the
  weights' ``.grad`` (see :func:`accumulate_gradients`);
  ``fpgm`` = Σ_j ‖F_i − F_j‖₂ over the other filters of the same layer (He et al. 2019: filters
  near the geometric median are redundant);
  ``lamp`` = LAMP scores (Lee et al. 2021) of the squared L2 norms, s_i / Σ_{s_j ≥ s_i} s_j: a
  monotone transform within a layer, so with EagleEye's per-group ratios it keeps exactly the
  ``l2`` channels; it differs only where channels of several layers compete for one budget.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.models.pointwise import guard_strided_pointwise

__all__ = [
    "IMPORTANCES",
    "ChannelGroup",
    "accumulate_gradients",
    "apply_kept",
    "channel_importance",
    "classifier_layers",
    "kept_count",
    "kept_indices",
    "prunable_groups",
    "prune_model",
]

IMPORTANCES = ("l1", "l2", "random", "bn_scale", "taylor", "fpgm", "lamp")
PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """One set of channels that are removed together.

    ``out_layers``: conv/linear layers whose output channels (filters) this group removes;
    ``in_layers``: conv/linear layers whose input channels it removes (a depthwise conv is an
    ``out_layer`` only: its input channels follow its output channels). ``group`` is the
    Torch-Pruning group (full indices) of the model the group was built on.
    """

    name: str
    channels: int
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]
    group: Any = field(repr=False)
    graph: Any = field(repr=False)


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the model's outputs: the last ``nn.Linear`` in module order
    (every registered model ends with one), else the last ``nn.Conv2d``."""
    for kind in (nn.Linear, nn.Conv2d):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        if layers:
            return [layers[-1]]
    raise UserError("the model has no Conv2d or Linear layer to prune")


def _example_input(model: nn.Module) -> torch.Tensor:
    size = getattr(model, "input_size", (3, 32, 32))
    p = next(model.parameters())
    return torch.zeros(1, *size, dtype=p.dtype, device=p.device)


def prunable_groups(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in module-definition order of the roots.

    Built with ``tp.DependencyGraph().build_dependency`` and ``get_all_groups`` (roots: Conv2d
    and Linear; the classifier ignored). ``example_input`` defaults to one zero image of
    ``model.input_size``.
    """
    x = _example_input(model) if example_input is None else example_input
    with torch.enable_grad():  # the graph is traced through autograd
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    groups = []
    for g in dg.get_all_groups(ignored_layers=classifier_layers(model),
                               root_module_types=list(PRUNABLE_TYPES)):
        outs, ins = [], []
        for item in g:
            module = item.dep.target.module
            if not isinstance(module, PRUNABLE_TYPES):
                continue
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                outs.append(names[module])
            elif dg.is_in_channel_pruning_fn(item.dep.handler):
                ins.append(names[module])
        root = g[0].dep.target.module
        groups.append(ChannelGroup(
            name=names[root], channels=len(g[0].idxs),
            out_layers=tuple(sorted(outs, key=order.get)),
            in_layers=tuple(sorted(ins, key=order.get)), group=g, graph=dg))
    groups.sort(key=lambda cg: order[cg.name])
    return groups


def channel_importance(
    cg: ChannelGroup, importance: str = "l1", generator: torch.Generator | None = None
) -> torch.Tensor:
    """One score per channel of the group (float64 ``[channels]``, higher = keep)."""
    if importance not in IMPORTANCES:
        raise UserError(f"unknown importance {importance!r}; choose from {IMPORTANCES}")
    if importance == "random":
        return torch.rand(cg.channels, generator=generator, dtype=torch.float64)
    score = torch.zeros(cg.channels, dtype=torch.float64)
    dg = cg.graph
    for item in cg.group:
        module = item.dep.target.module
        if not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        if importance == "bn_scale":
            if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.weight is None:
                continue
            local = module.weight.detach().double().abs().cpu()
        elif isinstance(module, PRUNABLE_TYPES):
            local = _filter_scores(module.weight, importance)
        else:
            continue
        score.index_add_(0, torch.as_tensor(item.root_idxs), local[torch.as_tensor(item.idxs)])
    return score


def _filter_scores(weight: torch.Tensor, importance: str) -> torch.Tensor:
    """Per-filter scores of one conv/linear weight ``[out, ...]`` (float64, on the CPU)."""
    w = weight.detach().double().flatten(1).cpu()  # [out, in * kh * kw]
    if importance in ("l1", "l2"):
        return w.norm(p=1 if importance == "l1" else 2, dim=1)
    if importance == "taylor":
        if weight.grad is None:
            raise UserError("importance 'taylor' needs gradients in the weights' .grad "
                            "(sparsetrain.structured.accumulate_gradients)")
        return (w * weight.grad.detach().double().flatten(1).cpu()).abs().sum(1)
    if importance == "fpgm":
        return torch.cdist(w, w).sum(1)
    s = w.pow(2).sum(1)  # lamp on squared L2 norms
    order = torch.sort(s, stable=True).indices  # ascending
    tail = s[order].flip(0).cumsum(0).flip(0)  # Σ of the scores >= each, in sorted order
    out = torch.empty_like(s)
    out[order] = s[order] / tail.clamp_min(1e-300)
    return out


def accumulate_gradients(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
                         ) -> None:
    """``.grad`` of every parameter = the summed gradient of the batch-mean cross-entropy over
    ``batches``, in eval mode (running BN statistics), for the ``taylor`` importance."""
    model.zero_grad(set_to_none=True)
    training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.enable_grad():
            for x, y in batches:
                nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
    finally:
        model.train(training)


def kept_count(channels: int, ratio: float, round_to: int | None = None) -> int:
    """Channels kept when pruning ``floor(ratio * channels)`` of them, at least one; with
    ``round_to`` the kept count is rounded to the nearest multiple (at least ``round_to``,
    at most ``channels``). Same arithmetic as :func:`sparsetrain.structured.macs.kept_counts`."""
    kept = max(1, channels - math.floor(float(ratio) * channels))  # float64, like the tensors
    if round_to and channels > round_to:
        kept = min(channels, max(round_to, math.floor(kept / round_to + 0.5) * round_to))
    return kept


def kept_indices(
    groups: Sequence[ChannelGroup],
    ratios: Mapping[str, float],
    importance: str = "l1",
    round_to: int | Mapping[str, int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, list[int]]:
    """Sorted indices of the channels each group keeps: its ``kept_count`` most important ones
    (ties keep the lower index). Groups missing from ``ratios`` keep every channel;
    ``round_to`` is one step, or a step per group name (missing: no rounding)."""
    known = {g.name for g in groups}
    unknown = sorted(set(ratios) - known)
    if unknown:
        raise UserError(f"unknown channel groups {unknown}; valid groups: {sorted(known)}")
    out = {}
    for g in groups:
        r = float(ratios.get(g.name, 0.0))
        if not 0.0 <= r < 1.0:
            raise UserError(f"pruning ratio of group {g.name!r} must be in [0, 1), got {r!r}")
        step = round_to.get(g.name) if isinstance(round_to, Mapping) else round_to
        k = kept_count(g.channels, r, step)
        score = channel_importance(g, importance, generator)
        # stable descending sort: equal scores keep the lower channel index
        order = torch.sort(-score, stable=True).indices
        out[g.name] = sorted(order[:k].tolist())
    return out


def apply_kept(model: nn.Module, kept: Mapping[str, Sequence[int]]) -> nn.Module:
    """Physically remove, in place, every channel of each named group not listed in ``kept``.

    Groups are looked up by name on ``model`` itself (which must have the dense structure the
    indices refer to); the resulting module is an ordinary ``nn.Module``.
    """
    groups = {g.name: g for g in prunable_groups(model)}
    unknown = sorted(set(kept) - set(groups))
    if unknown:
        raise UserError(f"unknown channel groups {unknown}; valid groups: {sorted(groups)}")
    for name, idx in kept.items():
        g = groups[name]
        keep = set(int(i) for i in idx)
        if not keep or min(keep) < 0 or max(keep) >= g.channels:
            raise UserError(f"kept channels of group {name!r} must be non-empty indices in "
                            f"[0, {g.channels})")
        removed = [i for i in range(g.channels) if i not in keep]
        if removed:
            root = g.group[0].dep
            g.graph.get_pruning_group(root.target.module, root.handler, removed).prune()
    return model


def prune_model(
    model: nn.Module,
    ratios: Mapping[str, float],
    importance: str = "l1",
    round_to: int | Mapping[str, int] | None = None,
    generator: torch.Generator | None = None,
    groups: Sequence[ChannelGroup] | None = None,
) -> nn.Module:
    """A new, physically pruned deep copy of ``model`` (the input is never modified).

    Each group loses its ``floor(ratio * C)`` least important channels (:func:`kept_indices`).
    The copy records ``pruned_structure`` (kept indices per group, relative to the dense
    model) for :func:`sparsetrain.structured.io.save_pruned`. ``groups`` may be passed to reuse
    :func:`prunable_groups` of ``model`` (importance is read from their weights).
    """
    groups = prunable_groups(model) if groups is None else groups
    kept = kept_indices(groups, ratios, importance, round_to, generator)
    pruned = apply_kept(copy.deepcopy(model), kept)
    for p in pruned.parameters():  # gradients read by the taylor importance stay with the input
        p.grad = None
    base = getattr(model, "pruned_structure", None)
    if base is not None:  # pruning a pruned model: express indices in dense coordinates
        kept = {n: [base[n][i] for i in idx] if n in base else idx for n, idx in kept.items()}
        kept = {**base, **kept}
    pruned.pruned_structure = {n: list(idx) for n, idx in kept.items()}
    guard_strided_pointwise(pruned)  # a oneDNN bug (models/pointwise.py)
    return pruned
