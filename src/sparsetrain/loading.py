"""Rebuild the network a checkpoint holds: a registered architecture with its mask buffers, or
a channel-pruned one from its saved structure.

The one entry point for every reader of model checkpoints (eval, export, teachers, bench,
EagleEye). It sits above the two modules it joins, so ``checkpoint.py`` stays file I/O and
``structured/io.py`` stays the pruned-model format, and neither imports the other's callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from sparsetrain.checkpoint import checkpoint_config, load_state
from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.sparsity.masks import add_mask_buffers
from sparsetrain.structured.io import model_from_structure

__all__ = ["load_model"]


def load_model(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the registered architecture a checkpoint was trained with (mask buffers
    included) and load its weights; a mismatch or a malformed entry is a :class:`UserError`."""
    if "structure" in ckpt:  # a channel-pruned model: rebuilt from its saved structure
        try:
            return model_from_structure(ckpt, path)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"checkpoint {path} has a malformed 'structure' entry ({e!r})")\
                from None
    cfg = checkpoint_config(ckpt, path)
    model = create_model(cfg.model.name, num_classes=len(ckpt["classes"]), **cfg.model.kwargs)
    if isinstance(ckpt["model"], dict):
        add_mask_buffers(model, ckpt["model"])
    load_state(model, ckpt["model"], path)
    return model
