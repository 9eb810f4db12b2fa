"""Fine-tuning a physically pruned model with the training engine (EagleEye step 5).

``sparsetrain.train.run.train`` builds its model from the registry, which cannot express a
pruned architecture; this is the same loop (``Trainer``, the recipe's optimizer, LR schedule,
loaders, distillation callbacks) on a given model, with checkpoints that carry the pruned
``structure`` (:func:`sparsetrain.structured.io.pruned_checkpoint`). A run directory holds
``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt`` and ``summary.json`` like any run;
calling again resumes from ``last.pt`` and a finished run returns its summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from sparsetrain.config import RunConfig, to_yaml
from sparsetrain.data import DatasetInfo, ImageArrays
from sparsetrain.errors import UserError
from sparsetrain.models.pointwise import guard_strided_pointwise
from sparsetrain.precision import resolve_device, resolve_precision
from sparsetrain.rundir import read_metrics, read_summary, truncate_metrics
from sparsetrain.structured.io import model_from_structure, pruned_checkpoint
from sparsetrain.structured.macs import macs_params
from sparsetrain.train.engine import Trainer
from sparsetrain.train.optim import build_optimizer
from sparsetrain.train.run import distillation, make_loader
from sparsetrain.train.schedules import build_schedule
from sparsetrain.utils import environment, git_commit

__all__ = ["finetune_pruned"]


def finetune_pruned(
    cfg: RunConfig,
    model: nn.Module,
    run_dir: str | Path,
    *,
    train_data: ImageArrays,
    evals: Mapping[str, ImageArrays],
    info: DatasetInfo,
    extra_summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` (a pruned model, or ignored when ``run_dir/last.pt`` exists and the
    run resumes) on ``train_data`` with ``cfg.train``; ``evals`` are evaluated every
    ``eval_every`` epochs (``"val"`` selects ``best.pt`` when present, never ``"test"``)."""
    run_dir = Path(run_dir)
    done = read_summary(run_dir / "summary.json")
    if done is not None:
        return done
    t_start = time.perf_counter()
    git_commit()  # the commit of the code that runs, before anyone commits during the run
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    ckpt = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None
    if ckpt is not None:
        if not all(k in ckpt for k in ("trainer", "best", "rng")):
            raise UserError(f"cannot resume from {run_dir / 'last.pt'}: it holds no training "
                            "state (a copy of best.pt?)")
        read_metrics(run_dir / "metrics.jsonl")  # a corrupt line stops before any work
        model = model_from_structure(ckpt, run_dir / "last.pt")
    guard_strided_pointwise(model)  # pruned shortcuts can hit a oneDNN bug (models/pointwise)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    classes = list(train_data.classes)
    cfg_dict = cfg.model_dump(mode="json")
    kw = dict(device=device)
    train_loader = make_loader(cfg, train_data, info, train=True, **kw)
    eval_loaders = {k: make_loader(cfg, v, info, train=False, **kw) for k, v in evals.items()}
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                                momentum=t.momentum, nesterov=t.nesterov, betas=t.betas,
                                exclude_norm_bias=t.wd_exclude_norm_bias)
    spe = len(train_loader)
    schedule = build_schedule(t.schedule, epochs=t.epochs, steps_per_epoch=spe,
                              warmup_epochs=t.warmup_epochs, milestones=t.milestones,
                              gamma=t.gamma, final_frac=t.final_lr_frac)
    best: dict[str, Any] = {}
    run_dir.mkdir(parents=True, exist_ok=True)

    def save(tr: Trainer) -> None:
        save_checkpoint(pruned_checkpoint(model, cfg_dict, classes, trainer=tr.state_dict(),
                                          best=dict(best), rng=rng_state()), run_dir / "last.pt")

    def log(metrics: dict[str, Any]) -> None:
        key = "val_acc" if "val" in evals else None
        prev = best.get("metrics", {}).get(key, -1.0)
        if key is None or (key in metrics and metrics[key] > prev):
            best["metrics"] = {**metrics, "selected_on": key or "last"}
            save_checkpoint(pruned_checkpoint(model, cfg_dict, classes, metrics=best["metrics"]),
                            run_dir / "best.pt")
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    trainer = Trainer(
        model, optimizer, schedule, train_loader, eval_loaders, epochs=t.epochs, device=device,
        precision=precision, label_smoothing=t.label_smoothing,
        callbacks=distillation(cfg, device, precision), eval_every=t.eval_every,
        grad_clip=t.grad_clip, max_steps=t.max_steps, checkpoint_every=t.checkpoint_every,
        save_fn=save, log_fn=log, progress=t.progress, echo=True)
    if ckpt is not None:
        trainer.load_state_dict(ckpt["trainer"])
        best.update(ckpt["best"])
        set_rng_state(ckpt["rng"])
        truncate_metrics(run_dir / "metrics.jsonl", trainer.step)
    atomic_write_bytes(run_dir / "config.yaml", lambda f: f.write(to_yaml(cfg).encode()))
    trainer.fit()
    last = trainer.history[-1] if trainer.history else {}
    macs, params = macs_params(model)
    summary = {
        "name": cfg.name, "model": cfg.model.name, "dataset": cfg.data.dataset,
        "method": "structured",
        "final": {k: v for k, v in last.items() if k.startswith(("test_", "val_"))},
        "best": best.get("metrics", {}), "epochs": trainer.epoch, "steps": trainer.step,
        "train_s": trainer.train_time, "macs": macs, "params": {"total": params},
        "device": str(device), "precision": precision, "seed": cfg.seed,
        "versions": environment(device), "git_commit": git_commit(),
        **dict(extra_summary or {}),
        "wall_s": time.perf_counter() - t_start,
    }
    write_json(summary, run_dir / "summary.json")
    return summary
