"""``dense`` (no masks) and ``static`` (a mask chosen at initialization, fixed in training).

``static`` covers pruning at initialization: random masks with uniform / uniform+ / ER / ERK
layer budgets ("The Unreasonable Effectiveness of Random Pruning", Liu et al. 2022), SNIP
(Lee et al. 2019), GraSP (Wang et al. 2020) and SynFlow (Tanaka et al. 2020) masks, and the
SNIP-ratio / GraSP-ratio budgets (layer densities from a global SNIP/GraSP top-k on a
re-initialized copy, then random masks with those densities).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.sparsity.allocate import list_budgets
from sparsetrain.sparsity.methods.base import Batches, SparsityMethod, register_method
from sparsetrain.sparsity.scores import get_score, ratio_densities
from sparsetrain.sparsity.topk import bernoulli_masks, global_masks, layerwise_masks

RATIO_BUDGETS = {"snip_ratio": "snip", "grasp_ratio": "grasp"}
DATA_SCORES = ("snip", "grasp", "gradient")


def list_all_budgets() -> list[str]:
    """Layer-wise budgets plus the score-driven ones (``global`` and the ratio budgets)."""
    return [*list_budgets(), "global", *RATIO_BUDGETS]


def check_budget_options(budget: str, dense_first: bool, dense_classifier: bool) -> None:
    """uniform_plus / erk_plus set the first conv / classifier themselves; with those layers
    removed from the masked set they would wrongly apply the rule to the next layer."""
    if budget == "uniform_plus" and dense_first:
        raise UserError("budget 'uniform_plus' already keeps the first conv dense; "
                        "drop dense_first")
    if budget == "erk_plus" and dense_classifier:
        raise UserError("budget 'erk_plus' already sets the classifier's density; "
                        "drop dense_classifier")


@register_method
class Dense(SparsityMethod):
    """No sparsity: no mask buffers, no per-step work (the baseline)."""

    method_name = "dense"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 **kw: Any) -> None:
        if kw.get("density", 1.0) != 1.0:
            raise UserError("method 'dense' has density 1; pick a sparse method")
        if kw.get("structure") not in (None, "unstructured"):
            raise UserError("method 'dense' has no masks; sparsity.structure needs a sparse "
                            "method")
        super().__init__(model, optimizer, **kw)

    def select_parameters(self, model: nn.Module, **options: Any) -> list[str]:
        return []


@register_method
class Static(SparsityMethod):
    """A mask from a layer budget and a score, computed once before training."""

    method_name = "static"
    nm_final = False  # lottery rounds above N/M: 3:4 at 70%, ... (sparsity/structure.py)

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        budget: str = "erk",
        score: str = "random",
        bernoulli: bool = False,
        budget_options: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, optimizer, **kw)
        budgets = list_all_budgets()
        if budget not in budgets:
            raise UserError(f"unknown budget {budget!r}; choose from {budgets}")
        get_score(score)  # validates the name
        if bernoulli and (budget == "global" or score != "random"):
            raise UserError("bernoulli masks need score 'random' and a layer-wise budget")
        check_budget_options(budget, kw.get("dense_first", False),
                             kw.get("dense_classifier", False))
        self.budget, self.score, self.bernoulli = budget, score, bernoulli
        self.budget_options = dict(budget_options or {})
        if self.nm is not None and (bernoulli or budget in RATIO_BUDGETS):
            raise UserError(f"structure {self.nm} needs exact top-k masks: bernoulli and the "
                            "ratio budgets are unstructured only")

    def group_cap(self, step: int) -> int | None:
        return None if self.nm is None else self.nm.cap_at(self.density)

    @property
    def needs_data(self) -> bool:
        return self.score in DATA_SCORES or self.budget in RATIO_BUDGETS

    def initial_masks(self, batches: Batches | None) -> Mapping[str, torch.Tensor]:
        if self.needs_data and batches is None:
            raise UserError(f"score {self.score!r} / budget {self.budget!r} needs data batches")
        names, shapes = self.masks.names, self.masks.shapes()
        batches = list(batches) if batches is not None else None
        if self.budget in RATIO_BUDGETS:
            densities = ratio_densities(RATIO_BUDGETS[self.budget], self.model, names, batches,
                                        density=self.density, generator=self.generator)
        elif self.budget != "global":
            densities = self.layer_budget(self.budget, self.density, self.group_cap(0),
                                          **self.budget_options)
        if self.bernoulli:
            return bernoulli_masks(densities, shapes, self.generator)
        scores = get_score(self.score)(self.model, names, batches, generator=self.generator,
                                       density=self.density)
        scores = self.constrain(scores, self.group_cap(0))
        if self.budget == "global":
            return global_masks(scores, self.density)
        return layerwise_masks(scores, densities)
