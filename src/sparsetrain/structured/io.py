"""Saving and loading physically pruned models without pickling modules.

A pruned model is not a registered architecture, and ``torch.save(module)`` would need
``weights_only=False`` to load. We store instead its *structure* (plain data)::

    {"arch": "resnet56", "num_classes": 10, "model_kwargs": {},
     "kept": {group name: [kept channel indices of the dense model]},
     "channels": {layer name: [in, out]}}

and rebuild by creating the registered dense model, re-applying the same physical pruning by
indices (:func:`sparsetrain.structured.groups.apply_kept`), then ``load_state_dict``.
``channels`` is only a check that the rebuilt layers have the saved shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from sparsetrain.errors import UserError
from sparsetrain.structured.groups import PRUNABLE_TYPES, apply_kept

__all__ = [
    "STRUCTURE_FORMAT",
    "build_pruned",
    "layer_channels",
    "load_pruned",
    "pruned_checkpoint",
    "save_pruned",
    "structure_of",
]

STRUCTURE_FORMAT = 1


def layer_channels(model: nn.Module) -> dict[str, list[int]]:
    """``{layer: [in, out]}`` for every conv/linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            out[name] = [m.in_features, m.out_features]
    return out


def _num_classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)][-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def structure_of(model: nn.Module, model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The weights-only-loadable structure of a model returned by ``prune_model`` (a dense
    registered model gives an empty ``kept``)."""
    arch = getattr(model, "arch_name", None)
    if not isinstance(arch, str):
        raise UserError("the model has no arch_name: build it with sparsetrain.models.create_model")
    kept = getattr(model, "pruned_structure", None) or {}
    return {"format": STRUCTURE_FORMAT, "arch": arch, "num_classes": _num_classes(model),
            "model_kwargs": dict(model_kwargs or {}),
            "kept": {str(k): [int(i) for i in v] for k, v in kept.items()},
            "channels": layer_channels(model)}


def build_pruned(structure: Mapping[str, Any]) -> nn.Module:
    """An untrained model with the saved pruned structure (dense registered model + pruning by
    the saved indices); its layer shapes are checked against ``structure["channels"]``."""
    from sparsetrain.models import create_model
    from sparsetrain.models.pointwise import guard_strided_pointwise

    if structure.get("format") != STRUCTURE_FORMAT:
        raise UserError(f"unsupported pruned-structure format {structure.get('format')!r}")
    model = create_model(structure["arch"], num_classes=int(structure["num_classes"]),
                         **dict(structure.get("model_kwargs") or {}))
    kept = {k: list(v) for k, v in structure["kept"].items()}
    apply_kept(model, kept)
    guard_strided_pointwise(model)  # pruned shortcuts can hit a oneDNN bug (models/pointwise)
    model.pruned_structure = kept
    saved: Mapping[str, Sequence[int]] = structure.get("channels") or {}
    got = layer_channels(model)
    bad = [n for n in saved if got.get(n) != list(saved[n])]
    if bad:
        raise UserError(f"rebuilt pruned {structure['arch']} does not match the saved channel "
                        f"counts at {bad[:3]}")
    return model


def save_pruned(
    model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write ``{"structure", "model" (state_dict), **extra}`` to ``path``."""
    obj = {**dict(extra or {}), "structure": structure_of(model, model_kwargs),
           "model": model.state_dict()}
    save_checkpoint(obj, path)


def model_from_structure(obj: Mapping[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the pruned model of a loaded file (``structure`` + ``model`` entries)."""
    if "structure" not in obj:
        raise UserError(f"{path} holds no pruned structure")
    model = build_pruned(obj["structure"])
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint {path} does not match its pruned structure: {first}") from None
    return model


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a file written by :func:`save_pruned` or :func:`pruned_checkpoint` with
    ``torch.load(weights_only=True)``."""
    return model_from_structure(load_checkpoint(path, map_location), path)


def pruned_checkpoint(
    model: nn.Module, cfg_dict: Mapping[str, Any], classes: Sequence[str], **extra: Any
) -> dict[str, Any]:
    """A checkpoint dict in the layout of sparsetrain's training checkpoints (``format``,
    ``config``, ``model``, ``classes``) plus ``structure``; write it with
    ``sparsetrain.checkpoint.save_checkpoint``."""

    kwargs = dict(cfg_dict.get("model", {}).get("kwargs") or {})
    return {"format": CHECKPOINT_FORMAT, "config": dict(cfg_dict), "model": model.state_dict(),
            "classes": list(classes), "structure": structure_of(model, kwargs), **extra}
