"""MaskSet: one float mask per prunable weight, stored on the model as a persistent buffer.

A mask for ``layer1.0.conv1.weight`` lives at ``layer1.0.conv1.weight_mask``, so masks are in
``model.state_dict()``, survive ``deepcopy``, checkpoints, ``load_state_dict`` and DDP's buffer
broadcast (DESIGN.md §2, invariant 6). Masks are float (multiplying by a float mask is ~3x
cheaper than indexing with a bool one) and every per-step operation is one ``_foreach`` op.

Invariants kept here (DESIGN.md §2): after ``set_masks`` the weights and every same-shaped
optimizer state tensor are zero where the mask is zero (invariant 2); per step, ``mask_grads_``
multiplies gradients by the masks before ``optimizer.step()``, so weight decay, momentum,
Nesterov and Adam keep masked weights at exactly zero (invariant 1).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from sparsetrain.errors import UserError

MASK_SUFFIX = "_mask"


_CONV = nn.Conv1d | nn.Conv2d | nn.Conv3d


def prunable_parameters(
    model: nn.Module,
    *,
    dense_first: bool = False,
    dense_classifier: bool = False,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """Names of the weights to mask, in network order.

    Default: every Conv1d/2d/3d and Linear ``weight`` (first conv and classifier included).
    The first conv is the first convolution registered, the classifier the last Linear.
    ``include`` replaces the default set by the parameters whose names match any of the fnmatch
    patterns (e.g. ``["*.in_proj_weight", "*.out_proj.weight"]`` for the projections of
    ``nn.MultiheadAttention``); ``exclude`` removes matches.
    """
    layers = [n for n, m in model.named_modules() if isinstance(m, _CONV | nn.Linear)]
    names = [f"{n}.weight" for n in layers]
    if include:
        all_names = [n for n, _ in model.named_parameters()]
        names = [n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in include)]
        if not names:
            raise UserError(f"sparsity include patterns {list(include)} match no parameter")
    convs = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, _CONV)]
    fcs = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    drop = set()
    if dense_first and convs:
        drop.add(convs[0])
    if dense_classifier and fcs:
        drop.add(fcs[-1])
    if exclude:
        drop |= {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in exclude)}
    names = [n for n in names if n not in drop]
    if not names:
        raise UserError("no prunable parameters left after dense_first/dense_classifier/exclude")
    return names


def _split(name: str) -> tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


class MaskSet:
    """Masks for the parameters ``names`` of ``model`` (registered as buffers of ones unless the
    model already carries them, e.g. after ``deepcopy`` or before ``load_state_dict``)."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.names = list(names)
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise UserError(f"cannot mask unknown parameters {missing[:3]}")
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in self.names}
        self.masks: dict[str, torch.Tensor] = {}
        for n in self.names:
            module_name, attr = _split(n)
            module = model.get_submodule(module_name)
            buf = getattr(module, attr + MASK_SUFFIX, None)
            if buf is None:
                buf = torch.ones_like(self.params[n], memory_format=torch.preserve_format)
                module.register_buffer(attr + MASK_SUFFIX, buf, persistent=True)
            self.masks[n] = buf
        self._p = [self.params[n] for n in self.names]
        self._m = [self.masks[n] for n in self.names]

    @classmethod
    def from_model(cls, model: nn.Module) -> MaskSet | None:
        """The MaskSet of the mask buffers a model carries, or None if it has none."""
        names = [n[: -len(MASK_SUFFIX)] for n, _ in model.named_buffers()
                 if n.endswith(MASK_SUFFIX)]
        return cls(model, names) if names else None

    # -- per step -----------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self) -> None:
        """w <- w * m for every masked weight (one foreach multiply)."""
        if self._p:
            torch._foreach_mul_(self._p, self._m)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """g <- g * m (one foreach multiply); parameters without a gradient are skipped."""
        pairs = [(p.grad, m) for p, m in zip(self._p, self._m, strict=True) if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs, strict=True)
            torch._foreach_mul_(list(grads), list(masks))

    # -- mask changes -------------------------------------------------------------------
    @torch.no_grad()
    def set_masks(
        self, new: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Copy new masks in, zero the pruned weights and their optimizer state."""
        for n, m in new.items():
            if n not in self.masks:
                raise KeyError(f"{n} is not a masked parameter")
            if m.shape != self.masks[n].shape:
                raise ValueError(f"mask for {n} has shape {tuple(m.shape)}, "
                                 f"expected {tuple(self.masks[n].shape)}")
            self.masks[n].copy_(m)
        self.apply_()
        if optimizer is not None:
            self.zero_optimizer_state_(optimizer)

    @torch.no_grad()
    def zero_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Multiply every optimizer-state tensor shaped like a masked weight by its mask
        (SGD momentum, Adam's moments, any same-shaped state)."""
        states, masks = [], []
        for p, m in zip(self._p, self._m, strict=True):
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    states.append(v)
                    masks.append(m.to(v.dtype))
        if states:
            torch._foreach_mul_(states, masks)

    def squash(self) -> None:
        """Remove the mask buffers; the weights keep their zeros (for export)."""
        self.apply_()
        for n in self.names:
            module_name, attr = _split(n)
            delattr(self.model.get_submodule(module_name), attr + MASK_SUFFIX)
        self.masks, self._m, self.names, self.params, self._p = {}, [], [], {}, []

    # -- reports ------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Active (mask = 1) weights per layer."""
        return {n: int(m.count_nonzero()) for n, m in self.masks.items()}

    def layer_densities(self) -> dict[str, float]:
        return {n: c / self.masks[n].numel() for n, c in self.counts().items()}

    def density(self) -> float:
        """Global density over all masked weights."""
        total = sum(m.numel() for m in self._m)
        return sum(self.counts().values()) / total if total else 1.0

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}


def add_mask_buffers(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> MaskSet | None:
    """Register the mask buffers a saved ``state_dict`` carries, so it loads into a fresh model."""
    names = [k[: -len(MASK_SUFFIX)] for k in state_dict if k.endswith(MASK_SUFFIX)]
    return MaskSet(model, names) if names else None
