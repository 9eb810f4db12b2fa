"""Optional TensorBoard logging (``train.log: [tensorboard]``), through the callback hooks.

Writes ``<run>/tensorboard/``: every ``every`` steps the training loss and LR (read at the same
cadence as the progress bar, so no extra device syncs); at each epoch's end every numeric value
of the epoch's metrics (train loss/accuracy, test/val accuracy and loss, images/s, density,
ITOP); and for sparsity methods each mask update's global density, churn, ITOP rate and
per-layer densities (``density/<layer>``) at the step it happened. Needs the ``tensorboard``
package (``pip install sparsetrain[tensorboard]``); resuming appends to the same folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparsetrain.callbacks import Callback
from sparsetrain.errors import UserError


def require_tensorboard() -> None:
    """A one-line error when ``train.log`` asks for TensorBoard and it is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("train.log: tensorboard needs the tensorboard package "
                        "(pip install tensorboard)") from None


def _summary_writer(log_dir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardLogger(Callback):
    """Scalars to TensorBoard; ``writer_factory(log_dir)`` returns an object with
    ``add_scalar(tag, value, step)``, ``flush()`` and ``close()`` (tests pass a fake)."""

    name = "tensorboard"

    def __init__(self, log_dir: str | Path, every: int = 10,
                 writer_factory: Callable[[Path], Any] | None = None) -> None:
        self.log_dir, self.every, self.factory = Path(log_dir), every, writer_factory
        self._writer: Any = None
        self._loss: torch.Tensor | None = None

    @property
    def writer(self) -> Any:
        if self._writer is None:  # created on first use: nothing is written for a failed start
            self._writer = (self.factory or _summary_writer)(self.log_dir)
        return self._writer

    def loss(self, trainer: Any, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor,
             loss: torch.Tensor) -> torch.Tensor:
        self._loss = loss.detach()  # no sync; keeps no graph alive between steps
        return loss

    def after_optimizer_step(self, trainer: Any) -> None:
        if trainer.step % self.every == 0 and self._loss is not None:
            self.writer.add_scalar("train/loss_step", float(self._loss.detach()), trainer.step)
            self.writer.add_scalar("train/lr", trainer.optimizer.param_groups[0]["lr"],
                                   trainer.step)

    def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        step = metrics["step"]
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(f"epoch/{key}", value, step)
        for update in metrics.get("mask_updates", []):
            at = update["step"]
            for key in ("density", "churn", "itop"):
                self.writer.add_scalar(f"mask/{key}", update[key], at)
            for layer, d in update.get("layers", {}).items():
                self.writer.add_scalar(f"density/{layer}", d, at)
        self.writer.flush()

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
