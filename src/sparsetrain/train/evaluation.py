"""Evaluate a saved checkpoint (last.pt or best.pt) on its data set's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparsetrain.config import validate
from sparsetrain.data import get_dataset_info
from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.sparsity.masks import add_mask_buffers
from sparsetrain.train.checkpoint import load_checkpoint
from sparsetrain.train.engine import evaluate
from sparsetrain.train.precision import resolve_device
from sparsetrain.train.run import check_data_path, data_path, load_test_split, make_loader


def load_model(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> torch.nn.Module:
    """Rebuild the registered architecture stored in a checkpoint and load its weights."""
    cfg = validate(ckpt["config"])
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


def evaluate_checkpoint(
    path: str | Path,
    *,
    data_path_override: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 512,
) -> dict[str, Any]:
    """Top-1 and loss of a checkpoint on the test split of the data it was trained on."""
    ckpt = load_checkpoint(path)
    cfg = validate(ckpt["config"])
    cfg.data.eval_batch_size = batch_size
    dev = resolve_device(device)
    dpath = data_path_override or data_path(cfg)
    check_data_path(dpath)
    test = load_test_split(cfg, dpath)
    if list(test.classes) != list(ckpt["classes"]):
        raise UserError(f"classes of {dpath} do not match the checkpoint's classes")
    model = load_model(ckpt, path).to(dev)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(cfg, test, get_dataset_info(cfg.data.dataset), train=False, device=dev)
    res = evaluate(model, loader, dev, precision)
    return {**res, "model": cfg.model.name, "dataset": cfg.data.dataset, "checkpoint": str(path),
            "params": sum(p.numel() for p in model.parameters()), "precision": precision}
