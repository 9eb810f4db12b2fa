"""Pruning across whole runs: lottery tickets with rewinding (IMP) and one-shot pruning.

- ``run_lottery`` (Frankle & Carbin 2019; Frankle et al. 2020, "rewinding"): train dense while
  saving the full training state at step k; then, round after round, prune ``prune_fraction``
  (20%) of the remaining weights by global magnitude of the previous round's final weights,
  rewind the surviving weights, optimizer state, data order and RNG to step k, and train to the
  end of the schedule again. Round r lives in ``<run_dir>/round_<r>/`` and is resumable: a
  finished round is skipped, an interrupted one continues from its last.pt.
- ``run_oneshot``: prune a trained checkpoint (or foreign weights, ``model.init_from``) once by
  magnitude (global, or per layer with a budget such as ERK) and fine-tune it with the recipe's
  schedule (a fresh optimizer), the single-round case without rewinding.

Both hand the engine an ordinary checkpoint (weights with mask buffers, optimizer, trainer and
``static`` method state) and resume from it, so a round is a normal run directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from sparsetrain.callbacks import Callback
from sparsetrain.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_write_bytes,
    foreign_state_dict,
    load_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
)
from sparsetrain.config import RunConfig, to_yaml, validate
from sparsetrain.errors import UserError
from sparsetrain.rundir import RunDir, read_summary
from sparsetrain.sparsity.allocate import allocate, list_budgets
from sparsetrain.sparsity.masks import MASK_SUFFIX, prunable_parameters
from sparsetrain.sparsity.methods import create_method
from sparsetrain.sparsity.schedules import to_steps
from sparsetrain.sparsity.structure import cap_scores, parse_structure
from sparsetrain.sparsity.topk import global_masks, layerwise_masks
from sparsetrain.train.optim import build_optimizer
from sparsetrain.train.run import build_model, check_config, load_data, train


class SaveAtStep(Callback):
    """Save the run's full checkpoint (``src``, written by the run) and copy it to ``dst`` once
    the optimizer has taken ``step`` steps (``step`` 0: before the first step)."""

    name = "save_at_step"

    def __init__(self, step: int, src: Path, dst: Path) -> None:
        self.step, self.src, self.dst = step, Path(src), Path(dst)

    def _save(self, trainer: Any) -> None:
        if trainer.save_fn is None:  # under torchrun only rank 0 writes the run directory
            return
        trainer.save_fn(trainer)
        shutil.copyfile(self.src, self.dst)

    def on_train_start(self, trainer: Any) -> None:
        if self.step == 0 and trainer.step == 0:
            self._save(trainer)

    def after_optimizer_step(self, trainer: Any) -> None:
        if trainer.step == self.step:
            self._save(trainer)


_KEEP = ("dense_first", "dense_classifier", "include", "exclude", "seed", "structure")


def _static_cfg(cfg: RunConfig, name: str | None, method: str, density: float) -> RunConfig:
    """``cfg`` with a plain sparsity section (the layer selection kept) and optionally a name
    inside ``cfg.run_dir``."""
    raw = cfg.model_dump(mode="json")
    if name is not None:
        raw["out_dir"], raw["name"] = str(cfg.run_dir), name
    keep = {k: raw["sparsity"][k] for k in _KEEP if method != "dense" or k != "structure"}
    raw["sparsity"] = {**keep, "method": method, "density": density}
    return validate(raw)


def _masked_names(cfg: RunConfig, num_classes: int) -> list[str]:
    sp = cfg.sparsity
    nm = parse_structure(sp.structure)
    with torch.device("meta"):
        model = build_model(cfg, num_classes)
    names = prunable_parameters(model, dense_first=sp.dense_first,
                                dense_classifier=sp.dense_classifier, include=sp.include,
                                exclude=sp.exclude)
    return [n for n in names if nm is None or nm.eligible(model.get_parameter(n).shape)]


def magnitude_masks(state: dict[str, torch.Tensor], names: list[str], density: float,
                    budget: str = "global", structure: str | None = None,
                    ) -> dict[str, torch.Tensor]:
    """Magnitude masks at ``density``: one global threshold, or per layer with the densities of
    ``budget`` (e.g. ``erk``); weights already pruned (mask 0) stay pruned. With an N:M
    ``structure`` every group keeps at most ``cap_at(density)`` weights (N at ≤ N/M)."""
    nm = parse_structure(structure)
    cap = None if nm is None else nm.cap_at(density)
    scores = {}
    for n in names:
        w = state[n].abs().float()
        mask = state.get(n + "_mask")
        scores[n] = w if mask is None else torch.where(mask.bool(), w, float("-inf"))
        if nm is not None:
            scores[n] = cap_scores(scores[n], cap, nm.m)
    if budget == "global":
        return global_masks(scores, density)
    shapes = {n: tuple(state[n].shape) for n in names}
    densities = (allocate(budget, shapes, density) if nm is None
                 else nm.densities(budget, shapes, density, cap))
    return layerwise_masks(scores, densities)


def seed_run(cfg: RunConfig, model_state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
             *, classes: list[str], trainer_state: dict[str, Any] | None = None,
             rng: dict[str, Any] | None = None, source: str | Path = "checkpoint") -> Path:
    """Write ``cfg.run_dir/last.pt`` so that ``train(cfg, resume=True)`` trains ``model_state``
    under ``masks`` (fixed, ``static``), continuing ``trainer_state`` when given (rewinding) or
    from step 0 with a fresh optimizer."""
    model = build_model(cfg, len(classes))
    method = create_method("static", model, None, density=cfg.sparsity.density, seed=cfg.seed,
                           include=list(masks))
    weights = {k: v for k, v in model_state.items() if not k.endswith(MASK_SUFFIX)}
    load_state(model, {**weights, **{n + MASK_SUFFIX: m for n, m in masks.items()}}, source)
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                                momentum=t.momentum, nesterov=t.nesterov, betas=t.betas,
                                exclude_norm_bias=t.wd_exclude_norm_bias)
    state = dict(trainer_state) if trainer_state is not None else {
        "step": 0, "epoch": 0, "batch_in_epoch": 0, "train_time": 0.0, "images_seen": 0,
        "history": [], "epoch_totals": {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0},
        "optimizer": optimizer.state_dict(), "callbacks": {}}
    optimizer.load_state_dict(state["optimizer"])
    method.masks.set_masks(masks, optimizer)  # zero pruned weights and their optimizer state
    method.prepared = True
    method.step_count = state["step"]
    method.union = {n: m.bool() for n, m in method.masks.masks.items()}
    method._record("init", dropped=0, grown=0)
    state["optimizer"] = optimizer.state_dict()
    state["callbacks"] = {"sparsity": method.state_dict()}
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": cfg.model_dump(mode="json"),
                     "model": model.state_dict(), "classes": classes, "trainer": state,
                     "best": {}, "rng": rng if rng is not None else rng_state()},
                    run_dir / "last.pt")
    atomic_write_bytes(run_dir / "config.yaml", lambda f: f.write(to_yaml(cfg).encode()))
    return run_dir


def _finished(run_dir: Path) -> dict[str, Any] | None:
    return read_summary(run_dir / "summary.json")


def run_lottery(cfg: RunConfig, *, rounds: int, prune_fraction: float = 0.2,
                rewind: int | str = 0, resume: bool = False) -> list[dict[str, Any]]:
    """Iterative magnitude pruning with rewinding; returns one summary per round.

    ``resume``: continue the lottery run ``cfg.run_dir`` at its last unfinished round."""
    if rounds < 1 or not 0 < prune_fraction < 1:
        raise UserError(f"need rounds >= 1 and 0 < prune_fraction < 1, got {rounds}, "
                        f"{prune_fraction}")
    check_config(_static_cfg(cfg, None, "static", 1 - prune_fraction))  # what rounds train
    with RunDir.claim(cfg.out_dir, cfg.name, command="lottery", resume=resume) as run:
        try:
            return _lottery(cfg, run, rounds, prune_fraction, rewind)
        except BaseException:
            run.abandon()
            raise


def _lottery(cfg: RunConfig, run: RunDir, rounds: int, prune_fraction: float,
             rewind: int | str) -> list[dict[str, Any]]:
    data = load_data(cfg)
    spe = len(data.train) // cfg.data.batch_size
    k = to_steps(rewind, steps_per_epoch=spe, total_steps=cfg.train.epochs * spe)
    if k >= cfg.train.epochs * spe:
        raise UserError(f"rewind step {k} is not inside the run ({cfg.train.epochs * spe} steps)")
    base = cfg.run_dir
    rewind_path = base / "rewind.pt"
    r0 = _static_cfg(cfg, "round_0", "dense", 1.0)
    with run.child("round_0") as sub:
        summaries = [_finished(r0.run_dir) or train(
            r0, resume=(r0.run_dir / "last.pt").is_file(), run=sub,
            callbacks=[SaveAtStep(k, r0.run_dir / "last.pt", rewind_path)])]
    names = _masked_names(cfg, data.num_classes)
    density = 1.0
    for r in range(1, rounds + 1):
        density *= 1 - prune_fraction
        rc = _static_cfg(cfg, f"round_{r}", "static", density)
        with run.child(f"round_{r}") as sub:
            done = _finished(rc.run_dir)
            if done is None:
                if not (rc.run_dir / "last.pt").is_file():
                    if not rewind_path.is_file():
                        raise UserError(f"{rewind_path} is missing (round 0 stopped while "
                                        f"saving it); delete {r0.run_dir} and run again")
                    prev = load_checkpoint(base / f"round_{r - 1}" / "last.pt")
                    masks = magnitude_masks(prev["model"], names, density,
                                            structure=cfg.sparsity.structure)
                    rw = load_checkpoint(rewind_path)
                    seed_run(rc, rw["model"], masks, classes=rw["classes"],
                             trainer_state=rw["trainer"], rng=rw["rng"], source=rewind_path)
                done = train(rc, resume=True, run=sub)
        summaries.append(done)
    return summaries


def run_oneshot(cfg: RunConfig, checkpoint: str | Path | None = None, *, resume: bool = False,
                budget: str = "global") -> dict[str, Any]:
    """Prune a trained checkpoint (or, without one, the recipe's ``model.init_from`` weights,
    e.g. a plain state dict trained elsewhere) once by magnitude to ``cfg.sparsity.density``
    (``budget``: one global threshold or a layer-wise budget such as ``erk``) and fine-tune it
    with ``cfg``'s schedule (a fresh optimizer); ``resume`` continues (or returns the summary
    of) the one-shot run ``cfg.run_dir``."""
    if not 0 < cfg.sparsity.density < 1:
        raise UserError("oneshot prunes to sparsity.density, which must be below 1 (e.g. "
                        f"sparsity.density=0.1), got {cfg.sparsity.density}")
    if budget != "global" and budget not in list_budgets():
        raise UserError(f"unknown oneshot budget {budget!r}; choose from "
                        f"{['global', *list_budgets()]}")
    if (checkpoint is None) == (not cfg.model.init_from):
        raise UserError("oneshot prunes either --checkpoint (a sparsetrain checkpoint) or the "
                        "recipe's model.init_from weights: give exactly one")
    rc = _static_cfg(cfg, None, "static", cfg.sparsity.density)
    check_config(rc)
    src = None
    if not resume:
        src = _oneshot_source(rc, checkpoint)
    with RunDir.claim(rc.out_dir, rc.name, command="oneshot", resume=resume) as run:
        done = _finished(rc.run_dir)
        if done is not None:
            return done
        try:
            if not (rc.run_dir / "last.pt").is_file():
                src = src if src is not None else _oneshot_source(rc, checkpoint)
                names = _masked_names(rc, len(src["classes"]))
                masks = magnitude_masks(src["model"], names, rc.sparsity.density, budget,
                                        rc.sparsity.structure)
                seed_run(rc, src["model"], masks, classes=src["classes"],
                         source=checkpoint or rc.model.init_from)
            return train(rc, resume=True, run=run)
        except BaseException:
            run.abandon()
            raise


def _oneshot_source(cfg: RunConfig, checkpoint: str | Path | None) -> dict[str, Any]:
    """``{"model": weights, "classes": [...]}`` of what oneshot prunes, checked against the
    recipe's model (foreign weights take the class list of the recipe's data)."""
    if checkpoint is not None:
        src = load_checkpoint(checkpoint)
        _check_source(src, cfg, checkpoint)
        return src
    classes = list(load_data(cfg).train.classes)
    # check_config has loaded these weights into the recipe's model (shapes and names)
    return {"model": foreign_state_dict(cfg.model.init_from), "classes": classes}


def _check_source(src: dict[str, Any], cfg: RunConfig, path: str | Path) -> None:
    """The checkpoint to prune is of the recipe's model (one line naming both otherwise)."""
    if "structure" in src:
        raise UserError(f"{path} is a channel-pruned model; oneshot prunes registered models")
    model = src.get("config", {}).get("model", {}) if isinstance(src.get("config"), dict) else {}
    if not isinstance(src.get("classes"), list):
        raise UserError(f"{path} is not a sparsetrain training checkpoint (no class list)")
    theirs = (model.get("name"), model.get("kwargs") or {})
    if model and theirs != (cfg.model.name, cfg.model.kwargs):
        raise UserError(f"{path} holds model {_model_text(*theirs)} but the recipe trains "
                        f"{_model_text(cfg.model.name, cfg.model.kwargs)}")


def _model_text(name: object, kwargs: dict[str, Any]) -> str:
    return repr(name) + (f" {kwargs}" if kwargs else "")
