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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, I/O error: the previous file is untouched
        _unlink_quiet(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e} (the previous "
                        f"{path.name}, if any, is unchanged)") from None
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


def load_state(model: nn.Module, state: Any, path: str | Path = "checkpoint") -> None:
    """``model.load_state_dict(state)``; a mismatch is one line naming the first differing
    keys (missing, unexpected, of another shape) instead of PyTorch's many-line dump."""
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: its 'model' entry is not a state dict of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        parts = [f"{what} {', '.join(ks[:3])}" + (" ..." if len(ks) > 3 else "")
                 for what, ks in (("missing", missing), ("unexpected", extra),
                                  ("other shape:", shape)) if ks]
        raise UserError(f"{path} does not fit the model ({'; '.join(parts) or 'mismatch'})")\
            from None


_PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, Lightning


def foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in a file written elsewhere: a plain ``state_dict``, or a checkpoint dict
    holding one under ``state_dict``/``model``/``model_state_dict``/``net`` (torchvision,
    timm, Lightning, sparsetrain). Loaded with ``weights_only=True``; wrapper prefixes
    (``module.``, ``_orig_mod.``, Lightning's ``model.``) and sparsetrain's mask buffers are
    removed. A file that holds no tensors by name is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.init_from: weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model.init_from: {path} is corrupt or unreadable: {first}") from None
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise UserError(f"model.init_from: {path} holds no state dict (tensors by name)")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if not k.endswith("_mask")}


def init_from(model: nn.Module, path: str | Path) -> None:
    """Load foreign weights into a freshly built model (before any masks exist); a mismatch
    names the first missing/unexpected/other-shape keys in one line."""
    load_state(model, foreign_state_dict(path), f"model.init_from {path}")


def checkpoint_config(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> Any:
    """The validated run config a model checkpoint was trained with; a dict that only looks
    like a checkpoint (no config, no class list, a config of an unknown model) is a
    :class:`UserError` naming what is wrong."""
    from sparsetrain.config import upgrade, validate

    config, classes = ckpt.get("config"), ckpt.get("classes")
    if not isinstance(config, dict) or not isinstance(classes, list) or not classes:
        what = "config" if not isinstance(config, dict) else "classes"
        raise UserError(f"checkpoint {path} is not a sparsetrain model checkpoint (no valid "
                        f"'{what}' entry)")
    try:
        return validate(upgrade(config))
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
