"""Masks that change during training (DESIGN.md §3.3–3.4).

- ``gmp``: gradual magnitude pruning (Zhu & Gupta 2017), cubic schedule, global or layer-wise.
- ``granet``: GMP plus zero-cost neuroregeneration (Liu et al., NeurIPS 2021): after every
  pruning step (and every ΔT after t_f), per layer drop ceil(r_t·active) smallest |w| and regrow
  as many where the dense gradient is largest; ``initial_density=0.5`` gives GraNet-ST.
- ``set`` (Mocanu et al. 2018) / ``rigl`` (Evci et al. 2020): fixed density from an ERK mask;
  every ΔT steps until T_end drop floor(α_t·active) smallest |w| per layer and regrow as many,
  at random (SET) or where the dense gradient is largest (RigL). The official RigL code also
  skips the SGD step on mask-update steps; sparsetrain takes it (one step in ΔT = 100 differs).

Every drop/grow keeps each layer's active count; grown connections start at 0 with zero
optimizer state (they were masked); a connection dropped and regrown in one drop/grow keeps its
value. At a GraNet pruning step the GMP mask is applied *before* regrowth, as the official code
does (``pruning()`` ends in ``apply_mask()``), so a weight GMP prunes and regrowth revives in the
same update restarts at zero with zero momentum (``revive="keep"`` keeps its old value and
state instead, as earlier sparsetrain versions did; an ablation, not a recommended setting).
Randomness comes only from the method's generator.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.sparsity.methods.base import Batches, SparsityMethod, register_method
from sparsetrain.sparsity.schedules import CosineDecay, CubicSchedule, Time, to_steps
from sparsetrain.sparsity.structure import NM, grow_scores
from sparsetrain.sparsity.topk import global_masks, layerwise_masks, topk_mask

NEG_INF = float("-inf")


def drop_grow(mask: torch.Tensor, weight: torch.Tensor, grow_score: torch.Tensor,
              k: int, nm: NM | None = None, cap: int | None = None) -> torch.Tensor:
    """Drop the ``k`` active weights of smallest |w|, then activate the ``k`` positions with
    the highest ``grow_score`` among those inactive after the drop (ties: lower index); with
    an N:M structure, a group grows at most ``cap`` minus its active count."""
    if k <= 0:
        return mask.clone()
    active = mask.bool()
    dropped = topk_mask(torch.where(active, -weight.detach().abs().float(), NEG_INF), k)
    after = mask * (1 - dropped)
    if nm is not None and cap is not None:
        grow_score = grow_scores(grow_score, after, cap, nm.m)
    grown = topk_mask(torch.where(after.bool(), NEG_INF, grow_score.float()), k)
    return after + grown


class _Scheduled(SparsityMethod):
    """Shared plumbing: times in steps/epochs/fractions, resolved once the run length is known."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 delta_t: int | None = None, **kw: Any) -> None:
        super().__init__(model, optimizer, **kw)
        self.delta_t = 100 if delta_t is None else delta_t
        if self.delta_t < 1:
            raise UserError(f"delta_t must be >= 1, got {self.delta_t}")
        self._grads: dict[str, torch.Tensor] = {}
        if self.total_steps is not None and self.steps_per_epoch is not None:
            self.resolve(steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        elif optimizer is not None:  # a method for a real loop: fail now, not at step 1
            self._require_lengths()
        else:  # validating a recipe (no optimizer yet)
            with warnings.catch_warnings():  # validate the times with placeholder lengths
                warnings.simplefilter("ignore")
                self.resolve(steps_per_epoch=10, total_steps=1000)

    def resolve(self, *, steps_per_epoch: int, total_steps: int) -> None:
        """Turn recipe times into steps (subclasses build their schedules here)."""

    def prepare(self, batches: Batches | None = None) -> SparsityMethod:
        self._require_lengths()
        return super().prepare(batches)

    def on_train_start(self, trainer: Any) -> None:
        self._require_lengths()  # a resumed run skips prepare()
        super().on_train_start(trainer)

    def _require_lengths(self) -> None:
        if self.total_steps is None or self.steps_per_epoch is None:
            raise UserError(f"method {self.method_name!r} needs total_steps and steps_per_epoch "
                            "(its schedule is in steps: e.g. total_steps=epochs * len(loader), "
                            "steps_per_epoch=len(loader))")

    def random_erk(self, density: float) -> dict[str, torch.Tensor]:
        """Uniformly random masks with ERK layer densities (the sparse starting point)."""
        scores = {n: torch.rand(p.shape, generator=self.generator).to(p.device)
                  for n, p in self.masks.params.items()}
        cap = self.group_cap(0)
        return layerwise_masks(self.constrain(scores, cap), self.layer_budget("erk", density, cap))

    needs_gradients = False

    def read_gradients(self, step: int) -> None:
        """Keep |dense gradient| of this step's batch for regrowth (before masking)."""
        if not self.needs_gradients:
            return
        self._grads = {n: (p.grad.detach().abs().float() if p.grad is not None
                           else torch.zeros_like(p, dtype=torch.float32))
                       for n, p in self.masks.params.items()}

    def regrow(self, masks: Mapping[str, torch.Tensor], fraction: float, *,
               by_gradient: bool, rounding=math.ceil) -> dict[str, torch.Tensor]:
        """Per layer drop/grow ``rounding(fraction · active_l)`` connections."""
        out, cap = {}, self.group_cap(self.step_count)
        for n, m in masks.items():
            k = int(rounding(fraction * float(m.sum())))
            w = self.masks.params[n]
            score = (self._grads[n] if by_gradient
                     else torch.rand(m.shape, generator=self.generator).to(m.device))
            out[n] = drop_grow(m, w, score, k, self.nm, cap)
        self._grads = {}
        return out


@register_method
class GMP(_Scheduled):
    """Gradual magnitude pruning: cubic schedule from s_i = 1 − initial_density to
    s_f = 1 − density between t_start and t_end, by global |w| threshold (or per layer with an
    ERK / uniform budget)."""

    method_name = "gmp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 initial_density: float | None = None, t_start: Time | None = None,
                 t_end: Time | None = None, pruning: str | None = None,
                 budget: str = "erk", **kw: Any) -> None:
        self.initial_density = 1.0 if initial_density is None else initial_density
        self.t_start = 0 if t_start is None else t_start
        self.t_end = "50%" if t_end is None else t_end
        self.pruning = pruning or "global"
        self.budget = budget
        if self.pruning not in ("global", "layerwise"):
            raise UserError(f"pruning must be 'global' or 'layerwise', got {self.pruning!r}")
        super().__init__(model, optimizer, **kw)
        if not self.density <= self.initial_density <= 1:
            raise UserError(f"initial_density ({self.initial_density}) must lie in "
                            f"[density ({self.density}), 1]")

    def resolve(self, *, steps_per_epoch: int, total_steps: int) -> None:
        t0 = to_steps(self.t_start, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        tf = to_steps(self.t_end, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        self.cubic = CubicSchedule.fit(1 - self.initial_density, 1 - self.density, t0, tf,
                                       self.delta_t)

    def initial_masks(self, batches: Batches | None) -> Mapping[str, torch.Tensor] | None:
        if self.initial_density < 1:
            return self.random_erk(self.initial_density)
        return None

    def update_due(self, step: int) -> bool:
        return self.cubic.is_update(step)

    def group_cap(self, step: int) -> int | None:
        """N:M cap of the density of the last pruning step ≤ ``step``: M:M while dense, N:M
        once the schedule reaches N/M."""
        if self.nm is None:
            return None
        c = self.cubic
        last = c.t_0 + max(0, step - c.t_0) // c.delta_t * c.delta_t
        return self.nm.cap_at(1 - c.sparsity(min(last, c.t_f)))

    def prune(self, step: int) -> dict[str, torch.Tensor]:
        """Magnitude pruning of the active weights to the scheduled density."""
        target = 1 - self.cubic.sparsity(step)
        scores = {n: torch.where(self.masks.masks[n].bool(), p.detach().abs().float(), NEG_INF)
                  for n, p in self.masks.params.items()}
        cap = self.group_cap(step)
        scores = self.constrain(scores, cap)
        if self.pruning == "global":
            return global_masks(scores, target)
        return layerwise_masks(scores, self.layer_budget(self.budget, target, cap))

    def update_masks(self, step: int) -> Mapping[str, torch.Tensor] | None:
        return self.prune(step)


@register_method
class GraNet(GMP):
    """GMP + zero-cost neuroregeneration with r_t cosine-decayed over the whole run."""

    method_name = "granet"
    needs_gradients = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 update_fraction: float | None = None, update_fraction_min: float | None = None,
                 regrow_after_prune_end: bool | None = None, revive: str | None = None,
                 **kw: Any) -> None:
        self.r_0 = 0.5 if update_fraction is None else update_fraction
        self.r_min = 0.005 if update_fraction_min is None else update_fraction_min
        self.regrow_after = True if regrow_after_prune_end is None else regrow_after_prune_end
        self.revive = revive or "zero"
        if self.revive not in ("zero", "keep"):
            raise UserError(f"revive must be 'zero' (official GraNet) or 'keep', got {revive!r}")
        super().__init__(model, optimizer, **kw)

    def resolve(self, *, steps_per_epoch: int, total_steps: int) -> None:
        super().resolve(steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        self.decay = CosineDecay(self.r_0, self.r_min, total_steps)

    def update_due(self, step: int) -> bool:
        c = self.cubic
        after = self.regrow_after and step > c.t_f and (step - c.t_0) % c.delta_t == 0
        return c.is_update(step) or after

    def update_masks(self, step: int) -> Mapping[str, torch.Tensor] | None:
        if not self.cubic.is_update(step):
            return self.regrow(dict(self.masks.masks), self.decay(step), by_gradient=True)
        masks = self.prune(step)
        if self.revive == "zero":  # official: apply the GMP mask, then regrow
            self.zero_pruned(masks)
        return self.regrow(masks, self.decay(step), by_gradient=True)

    @torch.no_grad()
    def zero_pruned(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Zero the weights (and their same-shaped optimizer state) that ``masks`` prunes,
        leaving the installed masks alone so the update's drop/grow counts stay exact."""
        for n, m in masks.items():
            p = self.masks.params[n]
            keep = m.to(p.dtype)
            p.mul_(keep)
            if self.optimizer is not None:
                for v in self.optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.mul_(keep.to(v.dtype))


@register_method
class SET(_Scheduled):
    """Sparse Evolutionary Training: fixed density, drop smallest |w|, regrow at random."""

    method_name = "set"
    grow_by_gradient = False

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 update_fraction: float | None = None, t_end: Time | None = None,
                 **kw: Any) -> None:
        self.alpha_0 = 0.3 if update_fraction is None else update_fraction
        self.t_end = "75%" if t_end is None else t_end
        super().__init__(model, optimizer, **kw)

    def resolve(self, *, steps_per_epoch: int, total_steps: int) -> None:
        self.stop = to_steps(self.t_end, steps_per_epoch=steps_per_epoch,
                             total_steps=total_steps)
        self.decay = CosineDecay(self.alpha_0, 0.0, max(1, self.stop))

    def initial_masks(self, batches: Batches | None) -> Mapping[str, torch.Tensor]:
        return self.random_erk(self.density)

    def update_due(self, step: int) -> bool:
        return step < self.stop and step % self.delta_t == 0

    def update_masks(self, step: int) -> Mapping[str, torch.Tensor] | None:
        # floor(α_t · active) as the official RigL code (int cast of the product); RigL's
        # recipes also keep the stem dense and outside the budget (sparsity.dense_first)
        return self.regrow(dict(self.masks.masks), self.decay(step),
                           by_gradient=self.grow_by_gradient, rounding=math.floor)


@register_method
class RigL(SET):
    """Rigging the Lottery: like SET, but regrow where the dense gradient is largest."""

    method_name = "rigl"
    grow_by_gradient = needs_gradients = True
