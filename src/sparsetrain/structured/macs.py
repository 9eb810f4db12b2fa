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

__all__ = ["MacsModel", "kept_counts", "macs_params"]


def macs_params(model: nn.Module) -> tuple[int, int]:
    """``(MACs of one image, number of parameters)``; MACs = ``layer_flops`` total / 2."""
    return layer_flops(model)["total"] // 2, sum(p.numel() for p in model.parameters())


def kept_counts(
    ratios: torch.Tensor, channels: torch.Tensor, round_to: int | None = None
) -> torch.Tensor:
    """Vectorized :func:`sparsetrain.structured.groups.kept_count`: ``ratios`` float64
    ``[B, G]``, ``channels`` int64 ``[G]`` -> kept channels int64 ``[B, G]``."""
    c = channels.to(torch.float64)
    kept = (c - torch.floor(ratios.to(torch.float64) * c)).clamp_min(1.0)
    if round_to:
        rounded = torch.floor(kept / round_to + 0.5) * round_to
        rounded = torch.minimum(rounded.clamp_min(float(round_to)), c.expand_as(rounded))
        kept = torch.where(c > round_to, rounded, kept)
    return kept.to(torch.int64)


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
    round_to: int | None = None

    @classmethod
    def build(
        cls, model: nn.Module, groups: Sequence[ChannelGroup], round_to: int | None = None
    ) -> MacsModel:
        """The model of ``model``'s MACs under pruning of ``groups`` (one ``layer_flops`` pass)."""
        flops = layer_flops(model)
        col = {g.name: i for i, g in enumerate(groups)}
        out_of = {layer: col[g.name] for g in groups for layer in g.out_layers}
        in_of = {layer: col[g.name] for g in groups for layer in g.in_layers}
        ones = len(groups)
        coef, a, b = [], [], []
        modelled = 0
        for name, m in model.named_modules():
            if not isinstance(m, nn.Conv2d | nn.Linear) or flops.get(name, 0) == 0:
                continue
            macs = flops[name] // 2
            modelled += macs
            n_in, n_out = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (
                m.in_features, m.out_features)
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
            if depthwise and not (m.groups == n_in == n_out):
                raise UserError(f"layer {name}: grouped convs other than depthwise are not "
                                "supported by the analytic MACs model")
            # a layer outside every group keeps all its channels: fold the count into coef
            j_out = out_of.get(name, ones)
            j_in = ones if depthwise else in_of.get(name, ones)
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
            round_to=round_to,
        )

    def macs_of_kept(self, kept: torch.Tensor) -> torch.Tensor:
        """MACs (int64 ``[B]``) of kept-channel counts ``kept`` int64 ``[B, G]``."""
        k = torch.cat([kept, torch.ones(len(kept), 1, dtype=torch.int64)], dim=1)
        return self.rest + (k[:, self.a] * k[:, self.b] * self.coef).sum(1)

    def macs_of_ratios(self, ratios: torch.Tensor) -> torch.Tensor:
        """MACs (int64 ``[B]``) of per-group ratios ``ratios`` ``[B, G]`` (column order
        ``names``)."""
        return self.macs_of_kept(kept_counts(ratios, self.channels, self.round_to))

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
