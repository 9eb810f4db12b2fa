"""Evaluate a saved checkpoint (last.pt or best.pt) on its data set's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparsetrain.config import validate
from sparsetrain.data import DeviceLoader, get_dataset_info, load_split
from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.train.checkpoint import load_checkpoint
from sparsetrain.train.engine import evaluate
from sparsetrain.train.precision import resolve_device


def load_model(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> torch.nn.Module:
    """Rebuild the registered architecture stored in a checkpoint and load its weights."""
    cfg = validate(ckpt["config"])
    model = create_model(cfg.model.name, num_classes=len(ckpt["classes"]), **cfg.model.kwargs)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(
            f"checkpoint {path} does not match model {cfg.model.name}: {first}"
        ) from None
    return model


def evaluate_checkpoint(
    path: str | Path,
    *,
    data_path: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 512,
) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    cfg = validate(ckpt["config"])
    dev = resolve_device(device)
    info = get_dataset_info(cfg.data.dataset)
    dpath = data_path or cfg.data.path or info.default_path
    if dpath is None or (not dpath.startswith("synthetic") and not Path(dpath).exists()):
        raise UserError(f"data path not found: {dpath} (pass --data-path)")
    test = load_split(cfg.data.dataset, dpath, "test", cache_dir=cfg.data.cache_dir)
    if cfg.data.test_subset is not None and cfg.data.test_subset < len(test):
        test = test.subset(torch.arange(cfg.data.test_subset))
    if list(test.classes) != list(ckpt["classes"]):
        raise UserError(f"classes of {dpath} do not match the checkpoint's classes")
    model = load_model(ckpt, path).to(dev)
    loader = DeviceLoader(test, batch_size, info.mean, info.std, train=False, device=dev,
                          channels_last=cfg.train.channels_last)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    res = evaluate(model, loader, dev, precision)
    return {**res, "model": cfg.model.name, "dataset": cfg.data.dataset, "checkpoint": str(path),
            "params": sum(p.numel() for p in model.parameters()), "precision": precision}
