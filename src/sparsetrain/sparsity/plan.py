"""Plan a layer-wise budget without training: densities, kept weights and FLOPs per layer."""

from __future__ import annotations

from typing import Any

from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.models.flops import layer_flops
from sparsetrain.sparsity.allocate import allocate, counts, list_budgets
from sparsetrain.sparsity.masks import prunable_parameters
from sparsetrain.sparsity.methods.static import check_budget_options, list_all_budgets


def plan_budget(
    model_name: str,
    budget: str,
    density: float,
    *,
    num_classes: int | None = None,
    dense_first: bool = False,
    dense_classifier: bool = False,
    **budget_options: Any,
) -> dict[str, Any]:
    """Per-layer rows (name, shape, params, density, kept, FLOPs dense/sparse) and totals."""
    if budget in list_all_budgets() and budget not in list_budgets():
        raise UserError(f"budget {budget!r} depends on scores of a model and data; plan a "
                        "layer-wise budget (uniform, uniform_plus, er, erk, erk_plus)")
    check_budget_options(budget, dense_first, dense_classifier)
    model = create_model(model_name, num_classes=num_classes)
    names = prunable_parameters(model, dense_first=dense_first,
                                dense_classifier=dense_classifier)
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in names}
    dens = allocate(budget, shapes, density, **budget_options)
    kept = counts(dens, shapes)
    flops = layer_flops(model)
    rows = []
    for n in names:
        f = flops.get(n.rpartition(".")[0], 0)
        rows.append({"name": n, "shape": list(shapes[n]), "params": params[n].numel(),
                     "density": dens[n], "kept": kept[n], "flops": f,
                     "flops_sparse": round(f * dens[n])})
    masked = sum(r["params"] for r in rows)
    saved = sum(r["flops"] - r["flops_sparse"] for r in rows)
    return {
        "model": model_name, "budget": budget, "density": density, "layers": rows,
        "masked_params": masked, "kept_params": sum(kept.values()),
        "achieved_density": sum(kept.values()) / masked,
        "total_params": sum(p.numel() for p in model.parameters()),
        "flops_dense": flops["total"], "flops_sparse": flops["total"] - saved,
    }


def format_plan(plan: dict[str, Any]) -> str:
    lines = [f"{plan['model']}: budget {plan['budget']} at density {plan['density']}",
             f"{'layer':<28} {'shape':<18} {'params':>9} {'density':>8} {'kept':>9} "
             f"{'MFLOPs':>8} {'sparse':>8}"]
    for r in plan["layers"]:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['name']:<28} {shape:<18} {r['params']:>9,} {r['density']:>8.4f} "
                     f"{r['kept']:>9,} {r['flops'] / 1e6:>8.2f} {r['flops_sparse'] / 1e6:>8.2f}")
    lines.append(
        f"masked weights {plan['masked_params']:,}, kept {plan['kept_params']:,} "
        f"(density {plan['achieved_density']:.4f}); all parameters {plan['total_params']:,}; "
        f"FLOPs {plan['flops_dense'] / 1e6:.2f}M dense -> {plan['flops_sparse'] / 1e6:.2f}M "
        f"effective ({plan['flops_sparse'] / plan['flops_dense']:.3f}x)")
    return "\n".join(lines)
