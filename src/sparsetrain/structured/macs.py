"""MACs and parameters of a (pruned) model, and an exact analytic MACs model of a strategy.

One counting function everywhere: :func:`macs_params` is ``layer_flops(model)["total"] // 2``
(``torch.utils.flop_counter``; a multiply-add is 2 FLOPs) plus the parameter count.

EagleEye (Li et al., ECCV 2020) samples thousands of pruning strategies and keeps only those
inside a FLOPs band, so a candidate's MACs must be known without pruning it. After physical
removal, a conv/linear layer ``L`` with dense MACs ``M_L`` (from ``layer_flops``), ``I`` input
and ``O`` output channels executes exactly::

    M_L * (kept_in / I) * (kept_out / O)      (regular conv, linear)
    M_L * (kept_out / O)                      (depthwise conv: input channels follow outputs)

where ``kept_in``/``kept_out`` are the kept channels of the groups controlling its inputs and
outputs (or ``I``/``O`` when no group does: the stem's RGB input, the classifier's outputs).
``M_L / (I * O)`` (``M_L / O`` depthwise) is an integer (``k_h * k_w * H_out * W_out``), so
:class:`MacsModel` evaluates a whole batch of strategies with exact int64 arithmetic; the tests
check it against :func:`macs_params` of physically pruned models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.models.flops import layer_flops
from sparsetrain.structured.groups import ChannelGroup

__all__ = ["MacsModel", "RoundTo", "kept_counts", "layer_columns", "macs_params", "round_steps"]


def macs_params(model: nn.Module) -> tuple[int, int]:
    """``(MACs of one image, number of parameters)``; MACs = ``layer_flops`` total / 2."""
    return layer_flops(model)["total"] // 2, sum(p.numel() for p in model.parameters())


RoundTo = int | Mapping[str, int] | None  # one step for every group, or a step per group name


def round_steps(round_to: RoundTo, names: Sequence[str]) -> tuple[int, ...] | None:
    """``round_to`` as one step per group of ``names`` (1: no rounding), or None."""
    if not round_to:
        return None
    if isinstance(round_to, Mapping):
        unknown = sorted(set(round_to) - set(names))
        if unknown:
            raise UserError(f"round_to names unknown channel groups {unknown}")
        return tuple(max(1, int(round_to.get(n, 1))) for n in names)
    return (int(round_to),) * len(names)


def kept_counts(
    ratios: torch.Tensor, channels: torch.Tensor,
    round_to: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Vectorized :func:`sparsetrain.structured.groups.kept_count`: ``ratios`` float64
    ``[B, G]``, ``channels`` int64 ``[G]`` -> kept channels int64 ``[B, G]``; ``round_to`` is
    one step or one per group (:func:`round_steps`)."""
    c = channels.to(torch.float64)
    kept = (c - torch.floor(ratios.to(torch.float64) * c)).clamp_min(1.0)
    if round_to:
        r = torch.as_tensor(round_to, dtype=torch.float64).clamp_min(1.0).expand_as(c)
        rounded = torch.floor(kept / r + 0.5) * r
        rounded = torch.minimum(torch.maximum(rounded, r), c.expand_as(rounded))
        kept = torch.where(c > r, rounded, kept)
    return kept.to(torch.int64)


def _dims(m: nn.Module) -> tuple[int, int]:
    return ((m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d)
            else (m.in_features, m.out_features))


def layer_columns(
    model: nn.Module, groups: Sequence[ChannelGroup]
) -> list[tuple[str, nn.Module, int, int]]:
    """``(name, layer, j_in, j_out)`` for every Conv2d/Linear of ``model``: the index of the
    group controlling its input / output channels (``len(groups)`` when none does; a depthwise
    conv's input column is ``len(groups)`` too, its inputs follow its outputs)."""
    col = {g.name: i for i, g in enumerate(groups)}
    out_of = {layer: col[g.name] for g in groups for layer in g.out_layers}
    in_of = {layer: col[g.name] for g in groups for layer in g.in_layers}
    ones = len(groups)
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        n_in, n_out = _dims(m)
        depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
        if depthwise and not (m.groups == n_in == n_out):
            raise UserError(f"layer {name}: grouped convs other than depthwise are not "
                            "supported by the analytic cost models")
        out.append((name, m, ones if depthwise else in_of.get(name, ones),
                    out_of.get(name, ones)))
    return out


@dataclass(frozen=True)
class MacsModel:
    """MACs of a strategy as ``rest + sum_L coef_L * K[:, a_L] * K[:, b_L]``, where ``K`` is the
    kept-channel matrix ``[B, G]`` with one extra column of ones (index ``G``)."""

    names: tuple[str, ...]  # group names, the column order of strategies
    channels: torch.Tensor  # int64 [G]
    coef: torch.Tensor  # int64 [L]
    a: torch.Tensor  # int64 [L], column of K giving the layer's kept inputs (G = constant)
    b: torch.Tensor  # int64 [L], column giving its kept outputs
    rest: int  # MACs outside the modelled layers (constant)
    dense_macs: int
    round_to: tuple[int, ...] | None = None  # a step per group (:func:`round_steps`)

    @classmethod
    def build(
        cls, model: nn.Module, groups: Sequence[ChannelGroup], round_to: RoundTo = None
    ) -> MacsModel:
        """The model of ``model``'s MACs under pruning of ``groups`` (one ``layer_flops`` pass)."""
        flops = layer_flops(model)
        ones = len(groups)
        coef, a, b = [], [], []
        modelled = 0
        for name, m, j_in, j_out in layer_columns(model, groups):
            if flops.get(name, 0) == 0:
                continue
            macs = flops[name] // 2
            modelled += macs
            n_in, n_out = _dims(m)
            # a layer outside every group keeps all its channels: fold the count into coef
            div = (n_out if j_out != ones else 1) * (n_in if j_in != ones else 1)
            if macs % div:
                raise UserError(f"layer {name}: MACs {macs} not divisible by {div}")
            coef.append(macs // div)
            a.append(j_in)
            b.append(j_out)
        total = flops["total"] // 2
        return cls(
            names=tuple(g.name for g in groups),
            channels=torch.tensor([g.channels for g in groups], dtype=torch.int64),
            coef=torch.tensor(coef, dtype=torch.int64),
            a=torch.tensor(a, dtype=torch.int64),
            b=torch.tensor(b, dtype=torch.int64),
            rest=total - modelled,
            dense_macs=total,
            round_to=round_steps(round_to, [g.name for g in groups]),
        )

    def macs_of_kept(self, kept: torch.Tensor) -> torch.Tensor:
        """MACs (int64 ``[B]``) of kept-channel counts ``kept`` int64 ``[B, G]``."""
        k = torch.cat([kept, torch.ones(len(kept), 1, dtype=torch.int64)], dim=1)
        return self.rest + (k[:, self.a] * k[:, self.b] * self.coef).sum(1)

    def macs_of_ratios(self, ratios: torch.Tensor) -> torch.Tensor:
        """MACs (int64 ``[B]``) of per-group ratios ``ratios`` ``[B, G]`` (column order
        ``names``)."""
        return self.macs_of_kept(kept_counts(ratios, self.channels, self.round_to))

    def ratio_of_ratios(self, ratios: torch.Tensor) -> torch.Tensor:
        """MACs as a fraction of the dense model's (float64 ``[B]``): the cost a sampler's band
        constrains (:class:`sparsetrain.structured.latency.LatencyModel` has the same method)."""
        return self.macs_of_ratios(ratios).to(torch.float64) / self.dense_macs

    def as_tensor(self, ratios: Mapping[str, float]) -> torch.Tensor:
        """A strategy dict as a float64 ``[1, G]`` row (missing groups: ratio 0)."""
        unknown = sorted(set(ratios) - set(self.names))
        if unknown:
            raise UserError(f"unknown channel groups {unknown}")
        return torch.tensor([[float(ratios.get(n, 0.0)) for n in self.names]],
                            dtype=torch.float64)

    def macs(self, ratios: Mapping[str, float]) -> int:
        """MACs of one strategy ``{group: ratio}``."""
        return int(self.macs_of_ratios(self.as_tensor(ratios))[0])
