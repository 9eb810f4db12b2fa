"""The epoch loop every method shares.

One optimizer step per batch: forward under autocast, loss (plus callback terms), backward,
``before_optimizer_step`` callbacks (gradients still dense), optional clipping, LR set from the
step-driven schedule, ``optimizer.step()``, ``after_optimizer_step`` callbacks. Train loss and
accuracy are accumulated on the device and read once per epoch, so the hot loop never syncs
except for the progress bar every ``_BAR_EVERY`` steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sparsetrain.callbacks import Callback
from sparsetrain.distributed import DistContext
from sparsetrain.precision import autocast
from sparsetrain.train.schedules import LRSchedule

_BAR_EVERY = 10


class Trainer:
    """Train ``model`` for ``epochs`` over ``train_loader`` (a DeviceLoader-like object with
    ``plan(epoch)``, ``batch(plan, i)`` and ``len()``), evaluating on ``eval_loaders``."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        train_loader: Any,
        eval_loaders: dict[str, Any],
        *,
        epochs: int,
        device: torch.device,
        precision: str = "fp32",
        label_smoothing: float = 0.0,
        callbacks: list[Callback] | None = None,
        eval_every: int = 1,
        grad_clip: float | None = None,
        max_steps: int | None = None,
        checkpoint_every: int = 0,
        save_fn: Callable[[Trainer], None] | None = None,
        log_fn: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = True,
        forward_model: nn.Module | None = None,
        dist: DistContext | None = None,
        echo: bool = False,
    ) -> None:
        self.model = model
        self.forward_model = forward_model or model  # e.g. torch.compile'd or DDP-wrapped
        # data parallel: epoch totals and evaluations are summed over ranks
        self.dist = dist or DistContext()
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_loader = train_loader
        self.eval_loaders = eval_loaders
        self.epochs = epochs
        self.device = device
        self.precision = precision
        self.label_smoothing = label_smoothing
        self.callbacks = list(callbacks or [])
        self.eval_every = eval_every
        self.grad_clip = grad_clip
        self.max_steps = max_steps
        self.checkpoint_every = checkpoint_every
        self.save_fn = save_fn
        self.log_fn = log_fn
        self.progress = progress
        self.echo = echo  # one console line per epoch (stays when the bar is cleared/disabled)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        # progress state: epoch being trained and the next batch index within it
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self.images_seen = 0
        self._ep: dict[str, float] = {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0}

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "train_time": self.train_time,
            "images_seen": self.images_seen,
            "history": self.history,
            "epoch_totals": dict(self._ep),
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.train_time = state["train_time"]
        self.images_seen = state["images_seen"]
        self.history = list(state["history"])
        self._ep = dict(state["epoch_totals"])
        self.optimizer.load_state_dict(state["optimizer"])
        for cb in self.callbacks:
            if cb.name in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][cb.name])

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs or (
            self.max_steps is not None and self.step >= self.max_steps
        )

    # -- loop ---------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        for cb in self.callbacks:
            cb.on_train_start(self)
        while not self.finished:
            self._train_epoch()
        return self.history

    def _set_lr(self) -> float:
        factor = self.schedule(self.step)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * factor
        return self.base_lrs[0] * factor

    def _train_epoch(self) -> None:
        model, loader = self.forward_model, self.train_loader
        model.train()
        plan = loader.plan(self.epoch)
        n_batches = len(loader)
        if self.batch_in_epoch == 0:
            self._ep = {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0}
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        bar = tqdm(
            total=n_batches, initial=self.batch_in_epoch, disable=not self.progress,
            desc=f"epoch {self.epoch + 1}/{self.epochs}", leave=False, dynamic_ncols=True,
            unit="step",
        )
        # the LR last used: a resume that lands at an epoch's end (a step checkpoint after its
        # last batch) runs no batch here, and its metrics line must not show the base LR
        t0, seen = time.perf_counter(), 0
        lr = self.base_lrs[0] * self.schedule(max(self.step - 1, 0))
        for i in range(self.batch_in_epoch, n_batches):
            x, y = loader.batch(plan, i)
            with autocast(self.device, self.precision):
                out = model(x)
                loss = F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
                for cb in self.callbacks:
                    loss = cb.loss(self, x, y, out, loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for cb in self.callbacks:
                cb.before_optimizer_step(self)
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
            lr = self._set_lr()
            self.optimizer.step()
            self.step += 1
            self.batch_in_epoch = i + 1
            for cb in self.callbacks:
                cb.after_optimizer_step(self)
            loss_sum += loss.detach().float() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            if self.progress and (i + 1) % _BAR_EVERY == 0:
                dt = self._ep["time"] + time.perf_counter() - t0
                rate = (self._ep["n"] + seen) / max(1e-9, dt)
                bar.set_postfix(self._bar_fields(loss, lr, rate), refresh=False)
                bar.update(i + 1 - bar.n)
            stop = self.max_steps is not None and self.step >= self.max_steps
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and not stop:
                self._account(t0, seen, loss_sum, correct)
                self._save()
                t0, seen = time.perf_counter(), 0
                loss_sum.zero_()
                correct.zero_()
            if stop:
                break
        bar.close()
        self._account(t0, seen, loss_sum, correct)
        ep = self._ep
        metrics: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "lr": lr,
            "train_loss": ep["loss"] / max(1, ep["n"]),
            "train_acc": ep["correct"] / max(1, ep["n"]),
            "images_per_s": ep["n"] / ep["time"] if ep["time"] > 0 else 0.0,
            "epoch_time_s": ep["time"],
        }
        if self.batch_in_epoch >= n_batches:
            self.epoch += 1
            self.batch_in_epoch = 0
        if self.finished or self.epoch % self.eval_every == 0:
            for split, eval_loader in self.eval_loaders.items():
                res = self.evaluate(eval_loader)
                metrics[f"{split}_acc"], metrics[f"{split}_loss"] = res["acc"], res["loss"]
        metrics["time_s"] = self.train_time
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)
        self.history.append(metrics)
        if self.log_fn is not None:
            self.log_fn(metrics)
        if self.echo:
            tqdm.write(epoch_line(metrics, self.epochs))
        self._save()

    def _account(
        self, t0: float, seen: int, loss_sum: torch.Tensor, correct: torch.Tensor
    ) -> None:
        """Fold the device-side accumulators and elapsed time into the epoch totals (summed
        over ranks under data parallelism; the time is this rank's)."""
        loss, right, seen = self.dist.totals(loss_sum, correct, seen, device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        self.train_time += dt
        self.images_seen += int(seen)
        self._ep["time"] += dt
        self._ep["n"] += int(seen)
        self._ep["loss"] += loss
        self._ep["correct"] += int(right)

    def _save(self) -> None:
        if self.save_fn is not None:
            self.save_fn(self)

    def _bar_fields(self, loss: torch.Tensor, lr: float, rate: float) -> dict[str, str]:
        fields = {"loss": f"{loss.item():.3f}", "lr": f"{lr:.4f}", "img/s": f"{rate:.0f}"}
        for cb in self.callbacks:
            fields.update(cb.progress())
        return fields

    def evaluate(self, loader: Any) -> dict[str, float]:
        # under DDP the plain module evaluates (no collectives per batch); ranks hold shards
        model = self.model if self.dist.enabled else self.forward_model
        return evaluate(model, loader, self.device, self.precision, self.dist)


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    """``epoch 3/15  loss 1.2345  train 55.12%  test 60.20%  density 0.100  1234 img/s  45.2s``:
    what a batch-job log needs to follow a run."""
    parts = [f"epoch {m['epoch']}/{epochs}", f"loss {m['train_loss']:.4f}",
             f"train {100 * m['train_acc']:.2f}%"]
    parts += [f"{k[:-4]} {100 * m[k]:.2f}%" for k in m if k.endswith("_acc") and k != "train_acc"]
    if "density" in m:
        parts.append(f"density {m['density']:.3f}")
    parts += [f"{m['images_per_s']:.0f} img/s", f"{m['epoch_time_s']:.1f}s"]
    return "  ".join(parts)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, device: torch.device, precision: str = "fp32",
    dist: DistContext | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over every sample of ``loader`` (eval mode);
    with ``dist``, over the union of the ranks' shards."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    plan = loader.plan(0)
    for i in range(len(loader)):
        x, y = loader.batch(plan, i)
        with autocast(device, precision):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    loss, right, count = (dist or DistContext()).totals(loss_sum, correct, n, device=device)
    n = int(count)
    return {"acc": right / max(1, n), "loss": loss / max(1, n), "n": n}
