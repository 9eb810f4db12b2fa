"""Checkpoint files shared by every package: atomic writes, safe loading, RNG state, rebuilding
a model from a checkpoint.

Files are written to a temporary name in the same directory and renamed over the target, so a
run killed while saving leaves the previous checkpoint intact. Loading always uses
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.errors import UserError

CHECKPOINT_FORMAT = 1  # layout version of the dicts in last.pt / best.pt


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then rename onto it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(p: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def write_json(obj: Any, path: str | Path) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; a missing or corrupt file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/garbage files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or unreadable: {first}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"checkpoint {path} is not a sparsetrain checkpoint (no 'model' entry)")
    return obj


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA and Python's ``random``) in weights-only form."""
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as are visible now
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def load_model(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the registered architecture a checkpoint was trained with (mask buffers
    included) and load its weights; a mismatch is a :class:`UserError`."""
    from sparsetrain.config import upgrade, validate
    from sparsetrain.models import create_model
    from sparsetrain.sparsity.masks import add_mask_buffers

    if "structure" in ckpt:  # a channel-pruned model: rebuilt from its saved structure
        from sparsetrain.structured.io import model_from_structure

        return model_from_structure(ckpt, path)
    cfg = validate(upgrade(ckpt["config"]))
    model = create_model(cfg.model.name, num_classes=len(ckpt["classes"]), **cfg.model.kwargs)
    add_mask_buffers(model, ckpt["model"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(
            f"checkpoint {path} does not match model {cfg.model.name}: {first}"
        ) from None
    return model
