"""FLOPs per layer, counted by ``torch.utils.flop_counter`` on one forward pass.

FLOPs follow the counter's convention (a multiply-add is 2 FLOPs; MACs = FLOPs / 2). The
effective FLOPs of a sparse model scale each masked layer's dense FLOPs by its density
(DESIGN.md §3.8): what a sparse kernel would execute, not what stock kernels do.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def layer_flops(model: nn.Module, input_size: tuple[int, ...] | None = None) -> dict[str, int]:
    """Forward FLOPs of one image per leaf module (by module name), plus ``"total"``."""
    size = input_size or getattr(model, "input_size", (3, 32, 32))
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *size, dtype=p.dtype, device=p.device))
    model.train(was_training)
    counts = counter.get_flop_counts()  # keys: "Global", "<Class>", "<Class>.layer1.0.conv1"
    prefix = type(model).__name__ + "."
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    out = {k[len(prefix):]: int(sum(c.values())) for k, c in counts.items()
           if k.startswith(prefix) and k[len(prefix):] in leaves}
    out["total"] = int(sum(counts.get("Global", {}).values()))
    return out


def sparse_flops(
    model: nn.Module, densities: Mapping[str, float], input_size: tuple[int, ...] | None = None
) -> dict[str, int]:
    """``{"dense": ..., "sparse": ...}``: dense FLOPs, and FLOPs with every masked weight's
    layer (``densities`` keyed by parameter name, e.g. ``conv1.weight``) scaled by density."""
    per_layer = layer_flops(model, input_size)
    saved = 0.0
    for name, d in densities.items():
        module = name.rpartition(".")[0]
        saved += per_layer.get(module, 0) * (1.0 - d)
    return {"dense": per_layer["total"], "sparse": round(per_layer["total"] - saved)}
