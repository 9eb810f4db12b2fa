"""The sparsity-method API every method shares (torch.ao.pruning-like lifecycle).

    method = create_method("static", model, optimizer, density=0.1, budget="erk")
    method.prepare(batches)   # initial masks (data-dependent scores read ``batches``)
    method.attach()           # optimizer step hooks, or call method.step() yourself
    ... train ...
    method.squash()           # plain model with zeros, for export

A method overrides a few hooks: ``initial_masks`` (masks at step 0), ``update_due`` and
``update_masks`` (mask changes during training; they see dense gradients), ``extra_state``.
Per optimizer step the cost is one foreach multiply of the gradients by the masks
(DESIGN.md §2, invariants 1-3). The method's ``torch.Generator`` makes every random decision,
so masks are reproducible from the seed and identical on every rank.

The method is also an engine :class:`Callback`: the engine calls ``before_optimizer_step``
(read dense gradients, mask them) and ``after_optimizer_step`` (count the step, update masks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sparsetrain.callbacks import Callback
from sparsetrain.errors import UserError
from sparsetrain.sparsity.allocate import allocate
from sparsetrain.sparsity.masks import MaskSet, prunable_parameters
from sparsetrain.sparsity.structure import NM, cap_scores, parse_structure

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

METHODS: dict[str, type[SparsityMethod]] = {}


def register_method(cls: type[SparsityMethod]) -> type[SparsityMethod]:
    """Class decorator: make ``cls`` available to ``create_method(cls.method_name, ...)``."""
    if cls.method_name in METHODS:
        raise ValueError(f"sparsity method {cls.method_name!r} registered twice")
    METHODS[cls.method_name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def create_method(
    name: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **cfg: Any
) -> SparsityMethod:
    """Build a registered method; unknown names and options are :class:`UserError`."""
    if name not in METHODS:
        raise UserError(f"unknown sparsity method {name!r}; choose from {list_methods()}")
    return METHODS[name](model, optimizer, **cfg)


class SparsityMethod(Callback):
    """Base class: masks on ``model``, a generator, a step counter and the hooks."""

    method_name: ClassVar[str] = "base"
    # the target density must fit N:M (False: a fixed mask above N/M takes the cap that fits)
    nm_final: ClassVar[bool] = True
    name = "sparsity"  # key of this callback's state in checkpoints

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float = 1.0,
        dense_first: bool = False,
        dense_classifier: bool = False,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        seed: int = 0,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        structure: str | None = None,
    ) -> None:
        if not 0 < density <= 1:
            raise UserError(f"density must be in (0, 1], got {density}")
        self.model, self.optimizer = model, optimizer
        self.density = density
        self.nm: NM | None = parse_structure(structure)
        names = self.select_parameters(model, dense_first=dense_first,
                                       dense_classifier=dense_classifier, include=include,
                                       exclude=exclude)
        if self.nm is not None:  # layers that cannot carry N:M stay dense (sparsity/structure)
            names = [n for n in names if self.nm.eligible(model.get_parameter(n).shape)]
            if not names:
                raise UserError(f"no layer can carry the {self.nm} structure (input "
                                f"dimension a multiple of {self.nm.m})")
            if self.nm_final and density > self.nm.ratio + 1e-12:
                raise UserError(f"structure {self.nm} keeps at most {self.nm.ratio:g} of the "
                                f"weights; sparsity.density is {density:g}")
        self.masks = MaskSet(model, names)
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.prepared = False
        self._handles: list[RemovableHandle] = []
        self._grads_masked = False
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.log: list[dict[str, Any]] = []  # one entry per mask change
        self._logged = 0  # log entries already written to an epoch's metrics
        # ITOP (Liu et al. 2021): the union of all masks so far, as a bool tensor per layer
        self.union: dict[str, torch.Tensor] = {}

    # -- hooks for subclasses -----------------------------------------------------------
    def select_parameters(self, model: nn.Module, **options: Any) -> list[str]:
        """Names of the weights this method masks (default: Conv1d/2d/3d and Linear weights)."""
        return prunable_parameters(model, **options)

    def initial_masks(self, batches: Batches | None) -> Mapping[str, torch.Tensor] | None:
        """Masks at step 0 (None: keep the all-ones masks)."""
        return None

    def update_due(self, step: int) -> bool:
        """Whether ``update_masks`` runs after optimizer step ``step`` (1-based)."""
        return False

    def read_gradients(self, step: int) -> None:
        """Called before the gradients are masked on a step where an update is due."""

    def update_masks(self, step: int) -> Mapping[str, torch.Tensor] | None:
        """New masks after optimizer step ``step`` (None: unchanged)."""
        return None

    def extra_state(self) -> dict[str, Any]:
        return {}

    # -- selection under the structure (identity for unstructured masks) -----------------
    def group_cap(self, step: int) -> int | None:
        """The N:M group cap of the masks at ``step`` (None: unstructured); methods whose
        density falls during training (GMP) raise it while the density is above N/M."""
        return None if self.nm is None else self.nm.n

    def constrain(self, scores: Mapping[str, torch.Tensor],
                  cap: int | None) -> Mapping[str, torch.Tensor]:
        """Scores with all but each N:M group's ``cap`` best at -inf (unchanged without)."""
        if self.nm is None or cap is None:
            return scores
        return {n: cap_scores(s, cap, self.nm.m) for n, s in scores.items()}

    def layer_budget(self, kind: str, density: float, cap: int | None = None,
                     **options: Any) -> dict[str, float]:
        """Per-layer densities of budget ``kind``; under N:M every layer is capped at cap/M."""
        if self.nm is None:
            return allocate(kind, self.masks.shapes(), density, **options)
        return self.nm.densities(kind, self.masks.shapes(), density, cap, **options)

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""

    # -- lifecycle ----------------------------------------------------------------------
    def prepare(self, batches: Batches | None = None) -> SparsityMethod:
        """Compute and apply the initial masks (zeroing weights and optimizer state)."""
        masks = self.initial_masks(batches)
        if masks is not None:
            self.masks.set_masks(masks, self.optimizer)
        self.union = {n: m.bool() for n, m in self.masks.masks.items()}
        self.prepared = True
        self._record("init", dropped=0, grown=0)
        return self

    def pre_step(self) -> None:
        """Before ``optimizer.step()``: let a due update read dense gradients, then mask them
        (one foreach multiply; this keeps masked weights and optimizer state at zero)."""
        if self.update_due(self.step_count + 1):
            self.read_gradients(self.step_count + 1)
        self.masks.mask_grads_()
        self._grads_masked = True

    def post_step(self) -> None:
        """After ``optimizer.step()``: count the step and update masks when due.

        Without a ``pre_step`` for this step (explicit ``step()`` use), the gradients in
        ``.grad`` are still dense, so a due update reads them here, and the weights and
        optimizer state are re-masked (slower than masking gradients, equally exact)."""
        step = self.step_count + 1
        if not self._grads_masked:
            if self.update_due(step):
                self.read_gradients(step)
            self.masks.apply_()
            if self.optimizer is not None:
                self.masks.zero_optimizer_state_(self.optimizer)
        self._grads_masked = False
        self.step_count = step
        if self.update_due(step):
            new = self.update_masks(step)
            if new is not None:
                self.apply_update(new)

    @torch.no_grad()
    def apply_update(self, new: Mapping[str, torch.Tensor]) -> None:
        """Install new masks (pruned weights and their optimizer state zeroed; grown weights
        were masked, so they start at 0 with zero state) and log the topology change."""
        dropped = grown = 0
        for n, m in new.items():
            old = self.masks.masks[n]
            grown += int((m > old).sum())
            dropped += int((m < old).sum())
        self.masks.set_masks(new, self.optimizer)
        for n, m in self.masks.masks.items():
            self.union[n] |= m.bool()
        self._record("update", dropped=dropped, grown=grown)

    def step(self) -> None:
        """Call after ``optimizer.step()`` in your own loop (optionally ``pre_step()`` before
        it, which is cheaper); or use ``attach()`` to hook both into the optimizer."""
        self.post_step()

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> SparsityMethod:
        """Hook into ``optimizer.step`` (register_step_pre_hook / register_step_post_hook)."""
        opt = optimizer or self.optimizer
        if opt is None:
            raise UserError("attach() needs an optimizer")
        self.optimizer = opt
        self._handles = [opt.register_step_pre_hook(lambda *_: self.pre_step()),
                         opt.register_step_post_hook(lambda *_: self.post_step())]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def squash(self) -> nn.Module:
        self.detach()
        self.masks.squash()
        return self.model

    # -- reporting ----------------------------------------------------------------------
    def itop_rate(self) -> float:
        """Fraction of the masked weights that were ever active (Liu et al. 2021, ITOP)."""
        total = sum(u.numel() for u in self.union.values())
        return sum(int(u.sum()) for u in self.union.values()) / total if total else 1.0

    def _record(self, event: str, *, dropped: int, grown: int) -> None:
        active = sum(self.masks.counts().values())
        self.log.append({
            "event": event, "step": self.step_count, "density": self.masks.density(),
            "dropped": dropped, "grown": grown, "churn": grown / active if active else 0.0,
            "itop": self.itop_rate(), "layers": self.masks.layer_densities(),
        })

    def report(self) -> dict[str, Any]:
        return {"global": self.masks.density(), "layers": self.masks.layer_densities(),
                "itop": self.itop_rate(), "updates": sum(e["event"] == "update" for e in self.log)}

    # -- engine callback ----------------------------------------------------------------
    def on_train_start(self, trainer: Any) -> None:
        if not self.prepared:
            raise RuntimeError("call prepare() before training (the engine's run does)")
        self.optimizer = trainer.optimizer

    def before_optimizer_step(self, trainer: Any) -> None:
        self.pre_step()

    def after_optimizer_step(self, trainer: Any) -> None:
        self.post_step()

    def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        metrics["density"] = self.masks.density()
        metrics["itop"] = self.itop_rate()
        if len(self.log) > self._logged:
            metrics["mask_updates"] = self.log[self._logged:]
            self._logged = len(self.log)

    def progress(self) -> dict[str, str]:
        # masks change only where _record logs them: no per-layer device sync per refresh
        density = self.log[-1]["density"] if self.log else self.masks.density()
        return {"density": f"{density:.3f}"}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method_name, "step": self.step_count, "prepared": self.prepared,
                "generator": self.generator.get_state(), "log": list(self.log),
                "logged": self._logged, "union": dict(self.union), "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["method"] != self.method_name:
            raise UserError(f"checkpoint was made by sparsity method {state['method']!r}, "
                            f"not {self.method_name!r}")
        self.step_count = state["step"]
        self.prepared = state["prepared"]
        self.generator.set_state(state["generator"])
        self.log = list(state["log"])
        # checkpoints written before the ITOP union and the log cursor were saved: every log
        # entry was already written, and the union restarts from the current masks (exact for
        # static masks; a lower bound for the dynamic methods)
        self._logged = state.get("logged", len(self.log))
        union = state.get("union") or {n: m.bool() for n, m in self.masks.masks.items()}
        self.union = {n: u.to(self.masks.masks[n].device) for n, u in union.items()}
        self.load_extra_state(state["extra"])

