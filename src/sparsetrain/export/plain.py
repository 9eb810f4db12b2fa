"""A plain network for deployment: masks folded into the weights, BatchNorm folded into convs.

:func:`plain_model` turns a model loaded from a sparsetrain checkpoint into stock torch modules
with zeros in its weights: ``w <- w * m`` for every mask, the ``<param>_mask`` buffers removed
(:meth:`sparsetrain.sparsity.masks.MaskSet.squash`, DESIGN.md §2 invariant 6), parametrizations
baked in, and the :class:`~sparsetrain.models.pointwise.SubsampledPointwiseConv2d` workaround
turned back into an ``nn.Conv2d`` (same numbers; the oneDNN bug it avoids is in the *backward*
weight kernel, which inference never runs, and an exporter sees one standard strided conv).

:func:`fold_batchnorm` folds every BatchNorm that directly follows a convolution (the conv's
output feeds only the BN) into that convolution, with the BN's eval statistics (Ioffe & Szegedy
2015, eq. of the inference transform ``y = gamma * (x - mean) / sqrt(var + eps) + beta``)::

    s = gamma / sqrt(var + eps);   W' = W * s[o];   b' = (b - mean) * s + beta

The scale is per output channel, so a zero weight stays exactly zero.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from sparsetrain.errors import UserError
from sparsetrain.models.pointwise import SubsampledPointwiseConv2d
from sparsetrain.sparsity.masks import MaskSet

__all__ = ["fold_batchnorm", "plain_model"]

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))
_BN = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d


@torch.no_grad()
def plain_model(model: nn.Module) -> nn.Module:
    """``model`` in place, in eval mode, as stock modules with the masks multiplied in."""
    model.eval()
    masks = MaskSet.from_model(model)
    if masks is not None:
        masks.squash()
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
        if type(m) is SubsampledPointwiseConv2d:
            m.__class__ = nn.Conv2d
    return model


class _Tracer(fx.Tracer):
    """fx's tracer, with the oneDNN guard's convolution kept as one (foldable) module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) is SubsampledPointwiseConv2d or super().is_leaf_module(
            m, module_qualified_name)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    kind = nn.Conv2d if type(conv) is SubsampledPointwiseConv2d else type(conv)
    return (any(kind is c and type(bn) is b for c, b in _PAIRS)
            and bn.running_mean is not None and bn.running_var is not None
            and conv.out_channels == bn.num_features)


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn``'s eval transform into ``conv`` (float64 arithmetic, cast back)."""
    w = conv.weight
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)  # [out]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    w.copy_((w.double() * scale.reshape(-1, *[1] * (w.dim() - 1))).to(w.dtype))
    conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(w.dtype))


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A ``torch.fx`` graph module equal to ``model`` (eval mode) with every conv -> BN pair
    folded into the conv; returns it and the number of BNs folded. The graph module shares
    ``model``'s submodules (the folded convs are changed in place), so use only the result.
    A conv whose output has other users, or a module called more than once, is left alone."""
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as e:  # fx raises many types for data-dependent control flow
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--fold-bn: cannot trace {type(model).__name__} with torch.fx "
                        f"({first}); export without --fold-bn") from None
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BN):
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and calls[src.target] == 1 and calls[node.target] == 1
                and _foldable(modules[src.target], modules[node.target])):
            continue
        _fold_into(modules[src.target], modules[node.target])
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), folded
